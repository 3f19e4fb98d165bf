"""Real processes: watch-only clients of an independent WebSocket library stay connected.

Three `felix serve` processes, kept busy by a writer pipelining metadata writes, and
watch-only clients made with the `websockets` library (asyncio, in a thread of its own),
which answers every PING and sends nothing else (its own pings are off).  The nodes'
keepalive interval is short (``watch.keepalive_interval_ms``), so the run spans many
intervals; no client may be closed, and every node's ``felix_client_keepalive_closes``
stays 0.  ``FELIX_KEEPALIVE_SOAK_S`` sets the duration (default 30 s; the issue's soak is
120 s: ``FELIX_KEEPALIVE_SOAK_S=120 pytest tests/server/test_processes_keepalive.py -s``).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import websockets
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from felix.broker.connection import ConnectionClosed as FelixConnectionClosed
from felix.proto.client_messages import (
    CLIENT_TO_SERVER,
    SERVER_TO_CLIENT,
    ClientHello,
    Deltas,
    Error,
    SnapshotChunk,
    WriteRequest,
    WriteResult,
)
from felix.testing.processes import Credentials, ProcessCluster, ServeProcess

KEEPALIVE_MS = 2000
WATCHERS = 6
IN_FLIGHT = 16  # writes pipelined on the writer's connection


def soak_seconds() -> float:
    return float(os.environ.get("FELIX_KEEPALIVE_SOAK_S", "30"))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    procs = ProcessCluster(tmp_path)
    for node in procs.nodes.values():
        node.args += ["--set", f"watch.keepalive_interval_ms={KEEPALIVE_MS}"]
    try:
        procs.start_all()
        yield procs
    finally:
        procs.stop_all()  # every process, by PID


@dataclass
class Watcher:
    """One watch-only client of the `websockets` library; reconnects if closed."""

    port: int
    closes: list[str] = field(default_factory=list)  # "code reason" of each close
    connects: int = 0
    refused: int = 0  # connection attempts before the port was open
    version: int | None = None
    deltas: int = 0

    async def run(self, creds: Credentials, stop: asyncio.Event) -> None:
        context = creds.ssl_context()
        assert isinstance(context, ssl.SSLContext)
        while not stop.is_set():
            try:
                async with connect(
                    f"wss://127.0.0.1:{self.port}/",
                    ssl=context,
                    additional_headers={"Authorization": f"Bearer {creds.token}"},
                    ping_interval=None,  # only the server pings; the library answers
                    compression=None,
                    proxy=None,
                    max_size=None,
                    open_timeout=20,
                ) as ws:
                    self.connects += 1
                    await ws.send(CLIENT_TO_SERVER.encode(ClientHello(None, None, "")))
                    reader = asyncio.ensure_future(self._read(ws))
                    stopped = asyncio.ensure_future(stop.wait())
                    await asyncio.wait({reader, stopped}, return_when=asyncio.FIRST_COMPLETED)
                    if reader.done():
                        reader.result()  # raises the ConnectionClosed that ended it
                    reader.cancel()
                    stopped.cancel()
            except websockets.ConnectionClosed as exc:
                frame = exc.rcvd
                self.closes.append(f"{frame.code} {frame.reason}" if frame else "1006 (no frame)")
            except OSError:  # the node's client port is not up yet: try again shortly
                self.refused += 1
                await asyncio.sleep(0.05)

    async def _read(self, ws: websockets.asyncio.client.ClientConnection) -> None:
        async for message in ws:
            assert isinstance(message, bytes)
            decoded = SERVER_TO_CLIENT.decode(message)
            if isinstance(decoded, SnapshotChunk) and decoded.last:
                self.version = decoded.version
            elif isinstance(decoded, Deltas):
                self.deltas += len(decoded.deltas)
                self.version = decoded.deltas[-1].version
        raise websockets.ConnectionClosedOK(ws.close_rcvd, ws.close_sent)


def run_watchers(watchers: list[Watcher], creds: Credentials, ready: threading.Event) -> None:
    """The asyncio side, in its own thread: every watcher until ``stop`` is set."""

    async def main() -> None:
        stop = asyncio.Event()
        holder["loop"], holder["stop"] = asyncio.get_running_loop(), stop
        ready.set()
        await asyncio.gather(*(w.run(creds, stop) for w in watchers))

    asyncio.run(main())


holder: dict[str, object] = {}


async def keep_writing(port: int, creds: Credentials, seconds: float) -> tuple[int, int, int]:
    """Pipeline writes to one node for ``seconds`` (a follower forwards them, should the
    leader move); returns (acknowledged, refused, last version)."""
    acked, refused, last, sent = 0, 0, 0, 0
    conn = await creds.open(port)
    try:
        with trio.move_on_after(seconds):
            while True:
                while sent - acked - refused < IN_FLIGHT:
                    sent += 1
                    args = {"name": f"t{sent}", "display_name": f"tenant {sent}"}
                    await conn.send(WriteRequest(sent, "set_tenant", args, None))
                for reply in await conn.receive_batch():
                    if isinstance(reply, WriteResult):
                        acked += 1
                        last = max(last, reply.version)
                    elif isinstance(reply, Error):
                        refused += 1  # a leader change under load: not what is measured
    finally:
        await conn.aclose()
    return acked, refused, last


def keepalive_closes(node: ServeProcess) -> float:
    code, text = node.get_text("/metrics")
    assert code == 200, text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "felix_client_keepalive_closes"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


def test_watch_only_websockets_clients_are_never_closed_by_keepalive(
    cluster: ProcessCluster,
) -> None:
    seconds = soak_seconds()
    assert seconds * 1000 >= 5 * KEEPALIVE_MS, "the soak must span several intervals"
    leader = cluster.wait_for_leader()
    cluster.put("warmup", "x")
    ports = [node.client_port for node in cluster.nodes.values()]
    watchers = [Watcher(ports[i % len(ports)]) for i in range(WATCHERS)]
    ready = threading.Event()
    thread = threading.Thread(target=run_watchers, args=(watchers, cluster.creds, ready))
    thread.start()
    try:
        assert ready.wait(20)
        try:
            acked, refused, last = trio.run(keep_writing, cluster.nodes[leader].client_port,
                                   cluster.creds, seconds)  # fmt: skip
        except FelixConnectionClosed:
            pytest.fail("the writer's connection closed: did the leader change?")
    finally:
        loop, stop = holder["loop"], holder["stop"]
        assert isinstance(loop, asyncio.AbstractEventLoop) and isinstance(stop, asyncio.Event)
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
    closes = {n: keepalive_closes(node) for n, node in cluster.nodes.items()}
    print(
        f"\nkeepalive soak: {seconds:.0f} s, keepalive interval {KEEPALIVE_MS} ms,"
        f" {len(watchers)} watchers, {acked} writes acknowledged (last version {last}),"
        f" {refused} refused,"
        f" client-side closes {sum(len(w.closes) for w in watchers)},"
        f" server keepalive closes {sum(closes.values()):.0f},"
        f" deltas per watcher {[w.deltas for w in watchers]}"
    )
    assert not thread.is_alive()
    assert acked > 0
    for watcher in watchers:
        assert watcher.closes == [] and watcher.connects == 1, watcher
        assert watcher.deltas > 0 and watcher.version is not None
    assert closes == {n: 0 for n in cluster.nodes}
    for node in cluster.nodes.values():
        assert "keepalive:" not in node.log_path.read_text()
