"""Protocol versions on the client API: control-plane nodes running the test-only next
version (2) keep serving older clients at version 1 (deltas and progress, without the
v2 field), serve a v2 client at 2 (the field arrives), and refuse a client with no
version in common naming both ranges.  Real sockets, the in-process control plane."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from felix.broker.connection import ClientConnection, ConnectionClosed
from felix.proto.client_messages import (
    ClientHello,
    Deltas,
    Error,
    ErrorCode,
    HelloAck,
    SnapshotChunk,
    WatchProgress,
)
from felix.proto.versions import VersionRange
from felix.server.watch_hub import HubLimits
from tests.broker.harness import ControlPlane, control_plane
from tests.broker.test_client import brokers, caught_up

NEXT = VersionRange(1, 2)
LIMITS = HubLimits(progress_interval_s=0.05)


@asynccontextmanager
async def next_control_plane() -> AsyncIterator[ControlPlane]:
    """Three nodes whose client API speaks [1, 2]."""
    async with control_plane(LIMITS) as cp:
        for services in cp.services.values():
            services.api.versions = NEXT
        yield cp


async def until(conn: ClientConnection, seen: list[Any], done: Callable[[Any], bool]) -> Any:
    with trio.fail_after(15):
        while True:
            message = await conn.receive()
            seen.append(message)
            if done(message):
                return message


def has_version(version: int) -> Callable[[Any], bool]:
    return lambda m: isinstance(m, Deltas) and any(d.version == version for d in m.deltas)


def progress_at(version: int) -> Callable[[Any], bool]:
    return lambda m: isinstance(m, WatchProgress) and m.version >= version


@pytest.mark.parametrize(
    ("offered", "acked"),
    [(None, None), ((1, 1), 1), ((1, 2), 2), ((1, 7), 2)],
    ids=["old-client-no-range", "v1-only", "next", "newer-client"],
)
async def test_watchers_get_deltas_at_the_version_they_share(
    offered: tuple[int, int] | None, acked: int | None
) -> None:
    async with next_control_plane() as cp:
        conn = await ClientConnection.open("127.0.0.1", cp.ports[1])
        seen: list[Any] = []
        try:
            low, high = offered or (None, None)
            await conn.send(ClientHello(None, None, "", "", low, high))
            await until(conn, seen, lambda m: isinstance(m, SnapshotChunk) and m.last)
            for name in ("beta", "gamma"):  # the watch keeps going, write after write
                version = await cp.write("set_tenant", {"name": name})
                await until(conn, seen, has_version(version))
            last = await until(conn, seen, progress_at(version))
        finally:
            await conn.aclose()
        acks = [m for m in seen if isinstance(m, HelloAck)]
        if acked is None:
            assert acks == []  # an old client would not know the message
            assert conn.protocol_version == 1
        else:
            assert seen[0] == HelloAck(acked)  # before anything the watch sends
            assert acks == [HelloAck(acked)]
            assert conn.protocol_version == acked
        # Version 2's synthetic field: the server sets it, only a v2 connection has it.
        assert last.next_probe == (last.version if acked == 2 else 0)


async def test_a_client_with_no_common_version_is_refused_naming_both_ranges() -> None:
    async with next_control_plane() as cp:
        conn = await ClientConnection.open("127.0.0.1", cp.ports[2])
        try:
            await conn.send(ClientHello(None, None, "", "", 3, 4))
            with trio.fail_after(15):
                error = await conn.receive()
                with pytest.raises(ConnectionClosed):
                    await conn.receive()
        finally:
            await conn.aclose()
        assert error == Error(
            ErrorCode.BAD_REQUEST,
            "no common protocol version: the client speaks [3, 4], this node speaks [1, 2]",
            None,
        )


@pytest.mark.parametrize("client_next", [False, True], ids=["v1-broker", "next-broker"])
async def test_brokers_keep_their_view_current_against_next_nodes(
    client_next: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole broker client (its range from the environment, as in production)."""
    if client_next:
        monkeypatch.setenv("FELIX_PROTOCOL_NEXT", "1")
    else:
        monkeypatch.delenv("FELIX_PROTOCOL_NEXT", raising=False)
    async with next_control_plane() as cp, brokers(cp, 1, 2) as views:
        await caught_up(cp, *views)
        for name in ("beta", "gamma", "delta"):
            await cp.write("set_tenant", {"name": name})
        await caught_up(cp, *views)
        for view in views:
            conn = view._session.conn
            assert conn is not None and conn.protocol_version == (2 if client_next else 1)
