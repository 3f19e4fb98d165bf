"""Mutual TLS between real TCP transports: a correct peer's messages arrive (both ways,
direct sends and queued), and every wrong one is refused with the reason logged while
the node keeps serving."""

from __future__ import annotations

import datetime as dt
import logging
import random
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from felix.proto.frames import encode_frame
from felix.proto.raft_messages import PEER, PeerHello, RaftMessage, TimeoutNow
from felix.security.certs import IssuedFiles, init_ca, issue
from felix.security.contexts import classify_handshake_error, client_context, server_context
from felix.security.identity import IdentityError, identity_of
from felix.transport.tcp import PeerAddress, PeerTls, TcpTransport, TcpTransportConfig

CLUSTER = "prod"


def node_of(peercert: dict[str, Any]) -> int:
    found = identity_of(peercert)
    if found.cluster_id != CLUSTER or found.kind != "node":
        raise IdentityError(f"{found.uri()} is not a node of {CLUSTER}")
    assert isinstance(found.ident, int)
    return found.ident


def peer_tls(ca: Path, files: IssuedFiles) -> PeerTls:
    server = server_context(files.cert, files.key, ca, require_client_cert=True)
    client = client_context(ca, files.cert, files.key)
    return PeerTls(lambda: server, lambda: client, node_of, classify_handshake_error)


class Node:
    def __init__(self, node_id: int, tls: PeerTls | None, peers: dict[int, PeerAddress]) -> None:
        self.inbox_send, self.inbox = trio.open_memory_channel[tuple[int, RaftMessage]](100)

        async def deliver(sender: int, message: RaftMessage) -> None:
            await self.inbox_send.send((sender, message))

        config = TcpTransportConfig(node_id, CLUSTER, "127.0.0.1", 0, peers, tls=tls)
        self.transport = TcpTransport(config, deliver, random.Random(node_id))


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Any]:
    main, other = tmp_path / "ca", tmp_path / "other"
    main.mkdir()
    other.mkdir()
    init_ca(main, CLUSTER)
    init_ca(other, CLUSTER)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    return {
        "ca": main / "ca.crt",
        1: issue(main, "node", 1),
        2: issue(main, "node", 2),
        "foreign 2": issue(other, "node", 2),
        "dir": main,
        "other": other,
        "past": past,
        "future": future,
    }


async def start_pair(nursery: trio.Nursery, tls1: PeerTls, tls2: PeerTls) -> tuple[Node, Node]:
    """Node 1 listens first; node 2 dials it (and the other way round once both run)."""
    one = Node(1, tls1, {2: PeerAddress("127.0.0.1", 9)})
    port1 = await one.transport.bind()
    two = Node(2, tls2, {1: PeerAddress("127.0.0.1", port1)})
    port2 = await two.transport.bind()
    one.transport.set_peer_address(2, PeerAddress("127.0.0.1", port2))
    await nursery.start(one.transport.run)
    await nursery.start(two.transport.run)
    return one, two


async def test_mutual_tls_carries_messages_both_ways(pki: dict[str, Any]) -> None:
    ca = pki["ca"]
    async with trio.open_nursery() as nursery:
        one, two = await start_pair(nursery, peer_tls(ca, pki[1]), peer_tls(ca, pki[2]))
        with trio.fail_after(10):
            while one.transport.stats.connects == 0 or two.transport.stats.connects == 0:
                await trio.sleep(0.01)  # polling a condition, bounded: links coming up
            for i in range(1, 101):  # the first few direct, the rest queued behind them
                two.transport.send_nowait(1, TimeoutNow(i, 2))  # a queue of 1024: never full
                one.transport.send_nowait(2, TimeoutNow(i, 1))
            got1 = [await one.inbox.receive() for _ in range(100)]
            got2 = [await two.inbox.receive() for _ in range(100)]
        assert got1 == [(2, TimeoutNow(i, 2)) for i in range(1, 101)]  # in order, none lost
        assert got2 == [(1, TimeoutNow(i, 1)) for i in range(1, 101)]
        assert one.transport.stats.handshakes_refused == 0
        assert two.transport.stats.handshakes_refused == 0
        nursery.cancel_scope.cancel()


async def refused(
    pki: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    dial: Callable[[int], Any],
) -> str:
    """Node 1 serving mTLS; ``dial(port)`` connects somehow; returns the log text once
    node 1 has counted the refusal (its nursery, hence the node, is still running)."""
    caplog.set_level(logging.WARNING, "felix.transport")
    async with trio.open_nursery() as nursery:
        peers = {n: PeerAddress("127.0.0.1", 9) for n in (2, 3, 4, 5)}  # never reached
        one = Node(1, peer_tls(pki["ca"], pki[1]), peers)
        await nursery.start(one.transport.run)
        port = one.transport.listen_port
        await dial(port)
        with trio.fail_after(10):
            while one.transport.stats.handshakes_refused == 0:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    return caplog.text


async def _tls_dial(port: int, context: ssl.SSLContext, hello_node: int = 2) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    tls = trio.SSLStream(stream, context, server_side=False)
    try:
        await tls.do_handshake()
        await tls.send_all(encode_frame(PEER.encode(PeerHello(CLUSTER, hello_node, 1, 1))))
        await tls.receive_some(100)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(tls)


async def test_a_certificate_from_another_ca_is_refused(
    pki: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    foreign = pki["foreign 2"]
    context = client_context(pki["ca"], foreign.cert, foreign.key)
    text = await refused(pki, caplog, lambda port: _tls_dial(port, context))
    assert "TLS handshake failed: unknown CA" in text


async def test_a_hello_naming_another_node_than_the_certificate_is_refused(
    pki: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    two = pki[2]
    context = client_context(pki["ca"], two.cert, two.key)
    text = await refused(pki, caplog, lambda port: _tls_dial(port, context, hello_node=3))
    assert "Hello says node 3, its certificate names 2" in text


async def test_plaintext_on_the_tls_port_is_refused(
    pki: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    async def plaintext(port: int) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(encode_frame(PEER.encode(PeerHello(CLUSTER, 2, 1, 1))))
        await trio.aclose_forcefully(stream)

    text = await refused(pki, caplog, plaintext)
    assert "not TLS" in text


async def test_expired_and_not_yet_valid_certificates_are_refused(
    pki: dict[str, Any], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    expired = issue(pki["dir"], "node", 4, days=1, not_before=pki["past"])
    context = client_context(pki["ca"], expired.cert, expired.key)
    text = await refused(pki, caplog, lambda port: _tls_dial(port, context, hello_node=4))
    assert "certificate expired" in text
    caplog.clear()
    early = issue(pki["dir"], "node", 5, not_before=pki["future"], days=10)
    context = client_context(pki["ca"], early.cert, early.key)
    text = await refused(pki, caplog, lambda port: _tls_dial(port, context, hello_node=5))
    assert "certificate not yet valid" in text


async def test_the_dialer_refuses_a_server_that_is_not_the_peer_it_dialed(
    pki: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Node 2 dials "node 1" but the server there presents node 2's own certificate."""
    caplog.set_level(logging.WARNING, "felix.transport")
    ca = pki["ca"]
    async with trio.open_nursery() as nursery:
        impostor = Node(1, peer_tls(ca, pki[2]), {2: PeerAddress("127.0.0.1", 9)})
        await nursery.start(impostor.transport.run)
        two = Node(
            2, peer_tls(ca, pki[2]), {1: PeerAddress("127.0.0.1", impostor.transport.listen_port)}
        )
        await nursery.start(two.transport.run)
        with trio.fail_after(10):
            while two.transport.stats.handshakes_refused == 0:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert "its certificate names node 2" in caplog.text
