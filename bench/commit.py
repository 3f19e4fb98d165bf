"""Commit latency, throughput and failover of a real 3-process cluster on loopback.

    python -m bench.commit [--sequential 2000] [--seconds 5] [--writers 1,16,64]
                           [--failover-trials 10] [--json bench/results/commit.json]

Three `felix serve` processes with their WALs on disk (a temp dir); the bench client
writes over the WebSocket client API (one connection per 8 writers, requests
pipelined); each write updates one of 1,000 tenant records (~100 bytes), so the state
churns in place like real metadata instead of growing without end.
- sequential: one writer, one write at a time: commit latency p50/p99 (client-observed:
  send -> WriteResult, so it includes both WebSocket hops);
- throughput: N concurrent writers for ``--seconds``: committed writes/s;
- failover: ``kill -9`` the leader, then time until a write succeeds again (p50/p99/max
  over the trials); the killed node is restarted between trials.
Every process the bench starts is stopped by PID, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench._report import print_table, write_json
from felix.broker.connection import ClientConnection, ConnectionClosed
from felix.proto.client_messages import CLIENT_TO_SERVER, Error, WriteRequest, WriteResult
from felix.proto.ws_frames import client_frame
from felix.testing.processes import ProcessCluster


class Connection:
    """One client connection with request ids, so many writers can pipeline over it."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.ids = itertools.count(1)
        self.waiting: dict[int, trio.MemorySendChannel[Any]] = {}
        self._outbox: list[bytes] = []
        self._wake = trio.Event()

    async def sender(self) -> None:
        """Coalesces the frames of concurrent writers into one send (one syscall)."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            frames, self._outbox = self._outbox, []
            await self.conn.send_raw(b"".join(frames))

    async def reader(self) -> None:
        try:
            while True:
                for reply in await self.conn.receive_batch():
                    request_id = getattr(reply, "request_id", None)
                    channel = self.waiting.pop(request_id, None) if request_id else None
                    if channel is not None:
                        channel.send_nowait(reply)
        except ConnectionClosed:
            for channel in self.waiting.values():
                channel.send_nowait(None)

    async def put(self, key: str, value: str) -> Any:
        """One metadata write: a tenant record (~100 bytes)."""
        request_id = next(self.ids)
        send, receive = trio.open_memory_channel[Any](1)
        self.waiting[request_id] = send
        args = {"name": key, "display_name": value}
        request = WriteRequest(request_id, "set_tenant", args, None)
        self._outbox.append(client_frame(CLIENT_TO_SERVER.encode(request), os.urandom(4)))
        self._wake.set()
        return await receive.receive()


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run_writers(
    port: int, writers: int, seconds: float | None, count: int | None
) -> dict[str, Any]:
    latencies: list[float] = []
    failures = 0
    connections = max(1, min(8, writers // 8 or 1))
    async with trio.open_nursery() as nursery:
        conns = []
        for _ in range(connections):
            conn = Connection(await ClientConnection.open("127.0.0.1", port))
            nursery.start_soon(conn.reader)
            nursery.start_soon(conn.sender)
            conns.append(conn)
        deadline = time.perf_counter() + (seconds or 1e9)
        remaining = [count or 0]

        async def writer(w: int) -> None:
            nonlocal failures
            conn = conns[w % len(conns)]
            for n in itertools.count():
                if time.perf_counter() >= deadline or (count is not None and remaining[0] <= 0):
                    return
                remaining[0] -= 1
                started = time.perf_counter()
                # Metadata churns in place (1,000 records), it does not grow without end.
                reply = await conn.put(f"t{(w * 7919 + n) % 1000}", f"{w}-{n}-" + "x" * 70)
                if isinstance(reply, WriteResult):
                    latencies.append(time.perf_counter() - started)
                else:
                    failures += 1

        started = time.perf_counter()
        async with trio.open_nursery() as writers_nursery:
            for w in range(writers):
                writers_nursery.start_soon(writer, w)
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return {
        "writers": writers,
        "writes": len(latencies),
        "failures": failures,
        "writes_per_s": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.5) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
    }


async def first_successful_write(cluster: ProcessCluster, exclude: int, key: str) -> float:
    """Try every surviving node's client API until one write is acknowledged."""
    while True:
        for node_id in cluster.nodes:
            if node_id == exclude:
                continue
            port = cluster.nodes[node_id].client_port
            try:
                with trio.fail_after(1.0):
                    conn = await ClientConnection.open("127.0.0.1", port, timeout_s=1)
                    try:
                        await conn.send(WriteRequest(1, "set_tenant", {"name": key}, None))
                        reply = await conn.receive()
                    finally:
                        await conn.aclose()
                if isinstance(reply, WriteResult):
                    return time.perf_counter()
                assert isinstance(reply, Error)
            except (OSError, ConnectionClosed, trio.TooSlowError):
                pass
        await trio.sleep(0.005)


def failover_trials(cluster: ProcessCluster, trials: int) -> list[float]:
    times = []
    for trial in range(trials):
        leader = cluster.wait_for_leader()
        cluster.put(f"warm{trial}", "x")
        killed_at = time.perf_counter()
        cluster.nodes[leader].kill9()
        done = trio.run(first_successful_write, cluster, leader, f"failover{trial}")
        times.append(done - killed_at)
        cluster.nodes[leader].start()
        cluster.wait_caught_up(leader, cluster.put(f"after{trial}", "x"), timeout_s=30)
        print(f"  failover trial {trial + 1}/{trials}: {times[-1] * 1e3:.0f} ms", flush=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--writers", default="1,16,64")
    parser.add_argument("--failover-trials", type=int, default=10)
    parser.add_argument("--tick-ms", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="felix-bench-") as tmp:
        cluster = ProcessCluster(Path(tmp), tick_ms=args.tick_ms, secure=False)
        cluster.start_all()
        try:
            leader = cluster.wait_for_leader()
            port = cluster.nodes[leader].client_port
            sequential = trio.run(run_writers, port, 1, None, args.sequential)
            rows = [{"mode": "sequential", **sequential}]
            for writers in [int(w) for w in args.writers.split(",")]:
                leader = cluster.wait_for_leader()
                port = cluster.nodes[leader].client_port
                result = trio.run(run_writers, port, writers, args.seconds, None)
                rows.append({"mode": f"{writers} writers", **result})
            failover = (
                failover_trials(cluster, args.failover_trials) if args.failover_trials else []
            )
        finally:
            cluster.stop_all()
    headers = ["mode", "writes", "failures", "writes_per_s", "p50_ms", "p99_ms"]
    print_table(headers, [[row[h] for h in headers] for row in rows])
    summary: dict[str, Any] = {"throughput": rows}
    if failover:
        summary["failover_ms"] = {
            "p50": statistics.median(failover) * 1e3,
            "p99": percentile(failover, 0.99) * 1e3,
            "max": max(failover) * 1e3,
            "trials": [t * 1e3 for t in failover],
        }
        f = summary["failover_ms"]
        print(
            f"\nfailover (kill -9 leader -> first acknowledged write), {len(failover)} trials: "
            f"p50 {f['p50']:.0f} ms, p99 {f['p99']:.0f} ms, max {f['max']:.0f} ms"
        )
    path = write_json("commit", summary)
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
