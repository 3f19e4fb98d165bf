"""Server-side cost of the watch fan-out: one publish to N connected subscribers.

    python -m bench.fanout [--subscribers 100,500,1000] [--publishes 50] [--runs 3] [--tls]

Subscribers are real loopback WebSocket connections that have said Hello (and read
nothing during the timed part; kernel buffers hold the small messages).  The figure is
the wall time from publish until the fan-out task has handed the message to every
subscriber, per subscriber: encode + frame once, then one non-blocking ``send`` per
subscriber (docs/architecture.md §7, "Hot paths").  The fan-out runs on one thread and
the subscribers read nothing while it runs, so the figure is the server's CPU per
subscriber per message.

With ``--tls`` every run measures plaintext and then ``wss://`` (a throwaway CA and node
certificate; each subscriber its own TLS session, so the frame is encrypted once per
subscriber), and the report adds the per-run TLS / plaintext ratio.
"""

from __future__ import annotations

import argparse
import ssl
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import trio

from bench._os import raise_fd_limit
from bench._report import print_table, write_json
from felix.broker.connection import ClientConnection
from felix.proto.client_messages import Change, ClientHello, Delta
from felix.security.certs import init_ca, issue
from felix.security.contexts import classify_handshake_error, client_context, server_context
from felix.server.watch_hub import HubLimits, WatchHub
from felix.server.ws_server import ServerTls, WsConnection, serve_ws


def tls_pair(pki: Path) -> tuple[ServerTls, ssl.SSLContext]:
    """The server's TLS (a node certificate from a fresh CA) and a client context."""
    init_ca(pki, "bench")
    node = issue(pki, "node", 1)
    server = server_context(node.cert, node.key, pki / "ca.crt", require_client_cert=False)
    return ServerTls(lambda: server, classify_handshake_error), client_context(pki / "ca.crt")


async def measure(
    subscribers: int, publishes: int, tls: tuple[ServerTls, ssl.SSLContext] | None
) -> dict[str, float]:
    version = 0

    def view() -> tuple[int, bytes, Sequence[Change]]:
        return version, b"", []

    hub = WatchHub(view, HubLimits(progress_interval_s=3600))

    async def handler(conn: WsConnection) -> None:
        await conn.receive()
        await hub.watch(conn, 0)

    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_ws(
                handler,
                "127.0.0.1",
                0,
                backlog_bytes_max=1 << 22,
                tls=tls[0] if tls is not None else None,
                task_status=task_status,
            )
        )
        nursery.start_soon(hub.run)
        clients = []
        for _ in range(subscribers):
            conn = await ClientConnection.open(
                "127.0.0.1", port, ssl_context=tls[1] if tls is not None else None
            )
            await conn.send(ClientHello(None, 0, ""))
            clients.append(conn)
        while hub.watchers < subscribers:
            await trio.sleep(0.01)
        await trio.sleep(0.1)
        per_publish = []
        for _ in range(publishes):
            prev = version
            version += 1
            change = Change("shard", f"orders/{version % 64}", {"leader": 3, "epoch": version})
            started = time.perf_counter()
            hub.publish([Delta(prev, version, bytes(8), (change,))])
            await hub.wait_fanned_out()  # the fan-out runs as its own task
            per_publish.append(time.perf_counter() - started)
        nursery.cancel_scope.cancel()
    median = statistics.median(per_publish)
    return {
        "subscribers": subscribers,
        "tls": tls is not None,
        "publish_ms_p50": median * 1e3,
        "us_per_subscriber": median * 1e6 / subscribers,
        "slow_disconnects": hub.stats.slow_disconnects,
    }


def main() -> None:
    raise_fd_limit()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", default="100,500,1000")
    parser.add_argument("--publishes", type=int, default=50)
    parser.add_argument("--runs", type=int, default=1, help="rounds over every N")
    parser.add_argument("--tls", action="store_true", help="plaintext and TLS in each round")
    parser.add_argument("--json", type=Path, default=None, help="default: bench/results/")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="felix-fanout-") as pki:
        tls = tls_pair(Path(pki)) if args.tls else None
        modes = (None, tls) if tls is not None else (None,)
        rows = [
            {**trio.run(measure, int(n), args.publishes, mode), "run": run}
            for run in range(1, args.runs + 1)
            for n in args.subscribers.split(",")
            for mode in modes  # back to back: the machine's drift hits both alike
        ]
    headers = [
        "run",
        "subscribers",
        "tls",
        "publish_ms_p50",
        "us_per_subscriber",
        "slow_disconnects",
    ]
    print_table(headers, [[r[h] for h in headers] for r in rows])
    payload: dict[str, object] = {"results": rows}
    if args.tls:
        payload["tls_vs_plain"] = ratios(rows)
        print("\nTLS / plaintext, µs per subscriber per publish (min/median/max over runs):")
        table = payload["tls_vs_plain"]
        assert isinstance(table, list)
        print_table(["subscribers", "plain", "tls", "ratio"], [list(r.values()) for r in table])
    print(f"JSON: {write_json('fanout', payload, args.json)}")


def ratios(rows: Sequence[dict[str, float]]) -> list[dict[str, str]]:
    """Per N: the medians over runs, and the TLS / plaintext ratio of each run."""
    table = []
    for n in dict.fromkeys(r["subscribers"] for r in rows):
        plain = {
            r["run"]: r["us_per_subscriber"] for r in rows if r["subscribers"] == n and not r["tls"]
        }
        tls = {r["run"]: r["us_per_subscriber"] for r in rows if r["subscribers"] == n and r["tls"]}
        each = sorted(tls[run] / plain[run] for run in plain)
        table.append(
            {
                "subscribers": str(int(n)),
                "plain": f"{statistics.median(plain.values()):.2f}",
                "tls": f"{statistics.median(tls.values()):.2f}",
                "ratio": f"{each[0]:.2f}/{statistics.median(each):.2f}/{each[-1]:.2f}",
            }
        )
    return table


if __name__ == "__main__":
    main()
