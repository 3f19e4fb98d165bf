"""A flood of connections that never authenticate (silent, garbage, half a handshake)
is bounded before authentication and does not stop an authenticated watcher's deltas."""

from __future__ import annotations

from pathlib import Path

import trio

from felix.broker.connection import ClientConnection
from felix.metadata.tokens import format_token
from felix.proto.client_messages import (
    ClientHello,
    Deltas,
    SnapshotChunk,
    WriteRequest,
    WriteResult,
)
from felix.server.raft_node import NodeSettings
from felix.server.ws_server import ServeLimits
from felix.testing.cluster import TrioCluster

ADMIN = format_token("f1f1f1f1f1f1f1f1", bytes(range(32)))
FLOOD = 120


async def test_a_flood_is_bounded_and_authenticated_deltas_keep_flowing(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(ADMIN)
    settings = NodeSettings(tick_s=0.01, snapshot_in_thread=False)
    async with trio.open_nursery() as nursery:
        cluster = TrioCluster(nursery, [1], settings=settings)
        _, services = await cluster.start_metadata(1, bootstrap_token_file=token_file)
        services.api.serve_limits = ServeLimits(connections_max=200, handshakes_max=16)
        port = await nursery.start(services.run, "127.0.0.1", 0)
        await cluster.wait_for_leader()

        watcher = await ClientConnection.open("127.0.0.1", port, token=ADMIN)
        writer = await ClientConnection.open("127.0.0.1", port, token=ADMIN)
        await watcher.send(ClientHello(None, None, ""))
        assert isinstance(await watcher.receive(), SnapshotChunk)

        flood: list[trio.SocketStream] = []
        for i in range(FLOOD):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            if i % 3 == 1:
                await stream.send_all(b"\x16\x03\x01\xff\xff" + b"x" * 100)  # garbage
            elif i % 3 == 2:
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")  # half an upgrade
            flood.append(stream)
        stats = services.api.serve_stats
        with trio.fail_after(10):
            while stats.refused_busy + stats.upgrades_failed < FLOOD - 16:
                await trio.sleep(0.01)  # polling counters, bounded
        assert stats.handshaking <= 16  # the bound held while the flood was on

        for i in range(30):
            await writer.send(WriteRequest(i, "set_tenant", {"name": f"t{i}"}, None))
            assert isinstance(await writer.receive(), WriteResult)
        seen: set[str] = set()
        with trio.fail_after(10):
            while len(seen) < 30:
                message = await watcher.receive()
                if isinstance(message, Deltas):
                    seen |= {c.key for d in message.deltas for c in d.changes}
        assert seen == {f"t{i}" for i in range(30)}
        for stream in flood:
            await trio.aclose_forcefully(stream)
        await watcher.aclose()
        await writer.aclose()
        nursery.cancel_scope.cancel()
