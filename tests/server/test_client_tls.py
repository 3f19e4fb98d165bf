"""The client port over TLS (``wss://``), real sockets and certificates: the fan-out's
deltas arrive encrypted, a broker certificate authenticates as that broker, and a wrong
CA or plaintext client is refused without harming the others."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from felix.broker import TlsRefused
from felix.broker.connection import ClientConnection, ConnectionClosed
from felix.metadata.tokens import format_token
from felix.proto.client_messages import (
    ClientHello,
    Deltas,
    Error,
    ErrorCode,
    GetSnapshot,
    SnapshotChunk,
    WriteRequest,
    WriteResult,
)
from felix.proto.errors import ProtocolError
from felix.security.certs import init_ca, issue
from felix.security.contexts import classify_handshake_error, client_context, server_context
from felix.server.graph import MetadataServices
from felix.server.raft_node import NodeSettings
from felix.server.ws_server import ServerTls
from felix.testing.cluster import TrioCluster

CLUSTER = "c1"
ADMIN = format_token("a0a0a0a0a0a0a0a0", bytes(range(32)))


@asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[tuple[int, Path, MetadataServices]]:
    pki = tmp_path / "pki"
    pki.mkdir()
    init_ca(pki, CLUSTER)
    node = issue(pki, "node", 1)
    context = server_context(node.cert, node.key, pki / "ca.crt", require_client_cert=False)
    token_file = tmp_path / "token"
    token_file.write_text(ADMIN)
    settings = NodeSettings(tick_s=0.01, snapshot_in_thread=False)
    async with trio.open_nursery() as nursery:
        cluster = TrioCluster(nursery, [1], settings=settings)
        _, services = await cluster.start_metadata(
            1,
            bootstrap_token_file=token_file,
            tls=ServerTls(lambda: context, classify_handshake_error),
            cluster_id=CLUSTER,
        )
        port = await nursery.start(services.run, "127.0.0.1", 0)
        await cluster.wait_for_leader()
        yield port, pki, services
        nursery.cancel_scope.cancel()


async def test_deltas_flow_over_tls_to_many_watchers(tmp_path: Path) -> None:
    async with serving(tmp_path) as (port, pki, _):
        context = client_context(pki / "ca.crt")
        watchers = [
            await ClientConnection.open("127.0.0.1", port, token=ADMIN, ssl_context=context)
            for _ in range(5)
        ]
        writer = await ClientConnection.open("127.0.0.1", port, token=ADMIN, ssl_context=context)
        try:
            for conn in watchers:
                await conn.send(ClientHello(None, None, ""))
                assert isinstance(await conn.receive(), SnapshotChunk)
            for i in range(20):
                await writer.send(WriteRequest(i, "set_tenant", {"name": f"t{i}"}, None))
                assert isinstance(await writer.receive(), WriteResult)
            with trio.fail_after(10):
                for conn in watchers:
                    seen: set[str] = set()
                    while len(seen) < 20:
                        message = await conn.receive()
                        if isinstance(message, Deltas):
                            seen |= {c.key for d in message.deltas for c in d.changes}
                    assert seen == {f"t{i}" for i in range(20)}
        finally:
            for conn in [*watchers, writer]:
                await conn.aclose()


async def test_a_broker_certificate_authenticates_as_that_broker(tmp_path: Path) -> None:
    async with serving(tmp_path) as (port, pki, _):
        files = issue(pki, "broker", 7)
        context = client_context(pki / "ca.crt", files.cert, files.key)
        conn = await ClientConnection.open("127.0.0.1", port, ssl_context=context)  # no token
        try:
            await conn.send(
                WriteRequest(1, "register_node", {"node_id": 7, "address": "h:1"}, None)
            )
            assert isinstance(await conn.receive(), WriteResult)
            await conn.send(
                WriteRequest(2, "register_node", {"node_id": 8, "address": "h:2"}, None)
            )
            reply = await conn.receive()
            assert isinstance(reply, Error) and reply.code is ErrorCode.UNAUTHORIZED
            assert "broker 7 (certificate)" in reply.detail
        finally:
            await conn.aclose()


async def test_a_node_certificate_is_no_client_credential(tmp_path: Path) -> None:
    async with serving(tmp_path) as (port, pki, _):
        node2 = issue(pki, "node", 2)
        context = client_context(pki / "ca.crt", node2.cert, node2.key)
        conn = await ClientConnection.open("127.0.0.1", port, ssl_context=context)
        try:
            await conn.send(GetSnapshot(1, False))
            reply = await conn.receive()
            assert (
                isinstance(reply, Error)
                and "a node certificate names no client role" in reply.detail
            )
        finally:
            await conn.aclose()


async def test_wrong_ca_and_plaintext_are_refused_and_the_port_keeps_serving(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as (port, pki, _):
        other = tmp_path / "other"
        other.mkdir()
        init_ca(other, CLUSTER)
        with pytest.raises(TlsRefused, match="unknown CA"):
            await ClientConnection.open(
                "127.0.0.1", port, token=ADMIN, ssl_context=client_context(other / "ca.crt")
            )
        with pytest.raises((ConnectionClosed, ProtocolError, OSError)):
            await ClientConnection.open("127.0.0.1", port, token=ADMIN, timeout_s=5)
        good = await ClientConnection.open(
            "127.0.0.1", port, token=ADMIN, ssl_context=client_context(pki / "ca.crt")
        )
        try:
            await good.send(GetSnapshot(1, False))
            assert isinstance(await good.receive(), SnapshotChunk)
        finally:
            await good.aclose()
