"""Does a flood of connections that never authenticate slow authenticated deltas?

    python -m bench.flood [--watchers 100] [--flood 1000] [--connect-rate 500] \\
        [--rate 20] [--duration 10] [--runs 3]

One secure `felix serve` process (TLS and tokens on, as it ships; its bounds before
authentication at their defaults), ``--watchers`` authenticated watchers and a writer in
this process, and every run made twice back to back: quiet, then with an attacker
process (``bench.flood --attack``) keeping ``--flood`` connections open to the client
port, each reconnected as soon as the server drops it (at most ``--connect-rate`` new
connections per second), in three shapes: a silent TCP connection (it holds a handshake
slot until the 5 s handshake bound), garbage where a TLS ClientHello goes, and a whole
TLS handshake plus a WebSocket upgrade without credentials (it waits out the 5 s
authentication bound).  Per write: the time from send until the last watcher applied it.
The attacker shares the 2 cores with the server here, so the "flood" figures are an
upper bound on what an attack from elsewhere costs.  Every process is stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from bench._os import raise_fd_limit
from bench._report import print_table, write_json
from bench.propagation import percentile, server_cpu_s
from felix.broker.connection import ClientConnection
from felix.proto.client_messages import ClientHello, Deltas, WriteRequest, WriteResult
from felix.proto.ws_frames import client_handshake
from felix.security.contexts import client_context
from felix.testing.processes import ProcessCluster

COUNTERS = (
    "felix_client_refused_busy_total",
    "felix_client_tls_handshakes_failed_total",
    'felix_client_unauthorized_total{operation="authenticate"}',
)


# --- the attacker (its own process) ---------------------------------------------------


async def attack(port: int, ca: Path, connections: int, connect_rate: float) -> None:
    """Keep ``connections`` unauthenticated connections open, in three shapes."""
    context = client_context(ca)
    next_connect = [trio.current_time()]

    async def paced() -> None:  # a token bucket of one: at most connect_rate per second
        now = trio.current_time()
        slot = max(now, next_connect[0])
        next_connect[0] = slot + 1 / connect_rate
        await trio.sleep_until(slot)

    async def one(shape: int) -> None:
        while True:
            await paced()
            try:
                stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
                if shape == 1:
                    await stream.send_all(b"\x16\x03\x01\x02\x00" + os.urandom(512))
                elif shape == 2:
                    tls = trio.SSLStream(stream, context, server_side=False)
                    await tls.do_handshake()
                    await tls.send_all(client_handshake("x", "/", os.urandom(16)))
                    stream = tls
                while await stream.receive_some(4096):  # until the server drops it
                    pass
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async with trio.open_nursery() as nursery:
        for n in range(connections):
            nursery.start_soon(one, n % 3)


# --- the measurement ----------------------------------------------------------------------


async def measure(
    port: int, cluster: ProcessCluster, watchers: int, rate: float, duration: float
) -> list[float]:
    """All-watchers latency of each write, in ms."""
    creds = cluster.creds
    applied: list[dict[int, float]] = [{} for _ in range(watchers)]
    conns = [await creds.open(port) for _ in range(watchers)]

    async def watch(conn: ClientConnection, seen: dict[int, float]) -> None:
        await conn.send(ClientHello(None, None, ""))
        while True:
            for message in await conn.receive_batch():
                if isinstance(message, Deltas):
                    t = time.monotonic()
                    for delta in message.deltas:
                        seen.setdefault(delta.version, t)

    sent: dict[int, float] = {}
    async with trio.open_nursery() as nursery:
        for conn, seen in zip(conns, applied, strict=True):
            nursery.start_soon(watch, conn, seen)
        writer = await creds.open(port)
        await trio.sleep(1.0)  # the snapshots are out; the flood (if any) is up to strength
        start = trio.current_time()
        for seq in range(round(rate * duration)):
            await trio.sleep_until(start + seq / rate)
            t = time.monotonic()
            await writer.send(WriteRequest(seq, "set_tenant", {"name": f"f{seq % 64}"}, None))
            reply = await writer.receive()
            assert isinstance(reply, WriteResult), reply
            sent[reply.version] = t
        with trio.move_on_after(10):
            newest = max(sent)
            while not all(newest in seen for seen in applied):
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    for conn in [*conns, writer]:
        await conn.aclose()
    latencies = []
    for version, t in sent.items():
        times = [seen.get(version) for seen in applied]
        if None not in times:
            latencies.append((max(x for x in times if x is not None) - t) * 1000)
    return latencies


def counters(cluster: ProcessCluster) -> dict[str, float]:
    _, text = cluster.nodes[1].get_text("/metrics")
    found = dict.fromkeys(COUNTERS, 0.0)
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in found:
            found[name] = float(value)
    return found


def one_run(args: argparse.Namespace, root: Path, flood: bool) -> dict[str, Any]:
    cluster = ProcessCluster(root, size=1, tick_ms=50)
    attacker: subprocess.Popen[bytes] | None = None
    try:
        cluster.start_all()
        cluster.wait_for_leader(timeout_s=30)
        port = cluster.nodes[1].client_port
        before = counters(cluster)
        if flood:
            assert cluster.creds.ca is not None
            attacker = subprocess.Popen(
                [sys.executable, "-m", "bench.flood", "--attack", str(port),
                 "--ca", str(cluster.creds.ca), "--flood", str(args.flood),
                 "--connect-rate", str(args.connect_rate)],
                start_new_session=True, cwd=Path(__file__).resolve().parent.parent,
            )  # fmt: skip
        cpu = server_cpu_s(cluster)
        latencies = trio.run(measure, port, cluster, args.watchers, args.rate, args.duration)
        cpu = server_cpu_s(cluster) - cpu
        after = counters(cluster)
    finally:
        if attacker is not None:
            attacker.terminate()
            attacker.wait(10)
        cluster.stop_all()
    written = round(args.rate * args.duration)
    return {
        "flood": flood,
        "writes": written,
        "complete": len(latencies),
        "all_p50_ms": percentile(latencies, 0.5),
        "all_p99_ms": percentile(latencies, 0.99),
        "all_max_ms": max(latencies, default=float("nan")),
        "server_cpu_s": round(cpu, 2),
        **{name: after[name] - before[name] for name in COUNTERS},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--flood", type=int, default=1000, help="connections kept open")
    parser.add_argument("--connect-rate", type=float, default=500.0, help="new per second, max")
    parser.add_argument("--rate", type=float, default=20.0, help="writes per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of writes")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="default: bench/results/")
    parser.add_argument("--attack", type=int, default=0, help=argparse.SUPPRESS)  # a port
    parser.add_argument("--ca", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    raise_fd_limit()
    if args.attack:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the bench stops us by PID
        trio.run(attack, args.attack, args.ca, args.flood, args.connect_rate)
        return 0
    root = Path(tempfile.mkdtemp(prefix="felix-flood-"))
    try:
        rows = []
        for run in range(1, args.runs + 1):
            for flood in (False, True):  # back to back: the machine's drift hits both
                rows.append({"run": run, **one_run(args, root / f"run{run}-{flood}", flood)})
    finally:
        shutil.rmtree(root, ignore_errors=True)
    headers = ["run", "flood", "complete", "all_p50_ms", "all_p99_ms", "all_max_ms",
               "server_cpu_s", *COUNTERS]  # fmt: skip
    print_table(headers, [[r[h] for h in headers] for r in rows])
    ratios = [q["all_p99_ms"] / p["all_p99_ms"] for p, q in zip(rows[::2], rows[1::2], strict=True)]
    print(
        f"flood / quiet all-watchers p99, per run pair: "
        f"{min(ratios):.2f}/{statistics.median(ratios):.2f}/{max(ratios):.2f} (min/median/max)"
    )
    print(f"JSON: {write_json('flood', {'results': rows, 'p99_ratios': ratios}, args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
