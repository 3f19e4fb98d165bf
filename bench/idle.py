"""What idle client connections cost a server: CPU per second with N quiet brokers.

    python -m bench.idle [--connections 1000] [--keepalive-s 10] [--sample-s 30] [--runs 3]
        [--open-over-s 0]

A server process runs the client port's connection layer, `serve_ws` (its keepalive
included), with a handler that only reads, as the client API does for a watch-only
broker; a client process opens ``--connections`` `ClientConnection`s that send nothing
and answer PINGs, as the broker library does: at once, or evenly over
``--open-over-s`` (brokers arriving over a while, as after a storm, so their keepalive
deadlines spread).  After a settle, the figure is the server
process's CPU (user + system, from ``/proc``) over ``--sample-s`` divided by the time:
with nothing written, the whole cost is the keepalive (docs/architecture.md §12,
"Keepalive").  It is what each connected broker adds to a node's idle rate, and to a
reconnect storm's server CPU (`bench.propagation --storm`).  Every run starts both
processes afresh and stops them by PID.
"""

from __future__ import annotations

import argparse
import select
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio

from bench._os import pid_cpu_s, raise_fd_limit
from bench._report import print_table, write_json

SETTLE_S = 3.0  # after the last connection opened, before the sample
READY_TIMEOUT_S = 120.0  # to open every connection


def serve(keepalive_s: float) -> None:
    """The server process: prints its port, then serves until killed."""
    from felix.server.ws_server import ConnectionGone, ServeLimits, WsConnection, serve_ws

    async def reader(conn: WsConnection) -> None:
        try:
            while True:
                await conn.receive()
        except ConnectionGone:
            pass

    async def main() -> None:
        limits = ServeLimits(keepalive_interval_s=keepalive_s)
        async with trio.open_nursery() as nursery:
            port = await nursery.start(
                lambda task_status: serve_ws(
                    reader, "127.0.0.1", 0, backlog_bytes_max=1 << 20, limits=limits,
                    task_status=task_status,
                )
            )  # fmt: skip
            print(port, flush=True)

    raise_fd_limit()
    trio.run(main)


def connect(port: int, connections: int, open_over_s: float) -> None:
    """The client process: opens every connection, prints ``connected``, then answers
    PINGs (inside `ClientConnection.receive`) until killed."""
    from felix.broker.connection import ClientConnection

    async def quiet(conn: ClientConnection) -> None:
        while True:
            await conn.receive()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(quiet, await ClientConnection.open("127.0.0.1", port))
                await trio.sleep(open_over_s / connections)
            print("connected", flush=True)

    raise_fd_limit()
    trio.run(main)


def run_once(connections: int, keepalive_s: float, sample_s: float, open_over_s: float) -> float:
    """Server CPU ms per second over the sample, with every connection open."""
    me = [sys.executable, "-m", "bench.idle"]
    server = subprocess.Popen(
        [*me, "--role", "server", "--keepalive-s", str(keepalive_s)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    client = None
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        client = subprocess.Popen(
            [*me, "--role", "client", "--port", str(port), "--connections", str(connections),
             "--open-over-s", str(open_over_s)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert client.stdout is not None
        ready, _, _ = select.select([client.stdout], [], [], READY_TIMEOUT_S + open_over_s)
        line = client.stdout.readline().strip() if ready else "nothing in time"
        if line != "connected":
            raise RuntimeError(f"the client process did not connect (said {line!r})")
        time.sleep(SETTLE_S)  # a settle, not a synchronisation: the sample starts later
        before, started = pid_cpu_s(server.pid), time.monotonic()
        time.sleep(sample_s)
        used, elapsed = pid_cpu_s(server.pid) - before, time.monotonic() - started
        return used / elapsed * 1000
    finally:
        for proc in (client, server):
            if proc is not None:
                proc.kill()
                proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--keepalive-s", type=float, default=10.0, help="keepalive interval")
    parser.add_argument("--sample-s", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--open-over-s", type=float, default=0.0, help="0: all at once")
    parser.add_argument("--json", type=Path, default=None, help="default: bench/results/")
    parser.add_argument("--role", choices=("bench", "server", "client"), default="bench")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.role == "server":
        serve(args.keepalive_s)
        return
    if args.role == "client":
        connect(args.port, args.connections, args.open_over_s)
        return
    rates = [
        run_once(args.connections, args.keepalive_s, args.sample_s, args.open_over_s)
        for _ in range(args.runs)
    ]
    per = [rate * 1000 / args.connections for rate in rates]  # µs per second per connection
    print(
        f"\nidle connections: server CPU with {args.connections:,} quiet brokers"
        f" (keepalive {args.keepalive_s:g} s, opened over {args.open_over_s:g} s,"
        f" {args.sample_s:g} s samples, {args.runs} runs)"
    )
    print_table(
        ["figure", "min", "median", "max"],
        [
            ["server ms/s", min(rates), statistics.median(rates), max(rates)],
            ["µs/s per connection", min(per), statistics.median(per), max(per)],
        ],
    )
    path = write_json(
        "idle",
        {"settings": {**vars(args), "json": str(args.json)}, "server_ms_per_s": rates,
         "us_per_s_per_connection": per},
        args.json,
    )  # fmt: skip
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
