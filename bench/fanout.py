"""Server-side cost of the watch fan-out: one publish to N connected subscribers.

    python -m bench.fanout [--subscribers 100,500,1000] [--publishes 50]

Subscribers are real loopback WebSocket connections that have said Hello (and read
nothing during the timed part; kernel buffers hold the small messages).  The figure is
the wall time from publish until the fan-out task has handed the message to every
subscriber, per subscriber: encode + frame once, then one non-blocking ``send`` per
subscriber (docs/architecture.md §7, "Hot paths").
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from collections.abc import Sequence

import trio

from bench._report import print_table, write_json
from felix.broker.connection import ClientConnection
from felix.proto.client_messages import Change, ClientHello, Delta
from felix.server.watch_hub import HubLimits, WatchHub
from felix.server.ws_server import WsConnection, serve_ws


async def measure(subscribers: int, publishes: int) -> dict[str, float]:
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
                handler, "127.0.0.1", 0, backlog_bytes_max=1 << 22, task_status=task_status
            )
        )
        nursery.start_soon(hub.run)
        clients = []
        for _ in range(subscribers):
            conn = await ClientConnection.open("127.0.0.1", port)
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
        "publish_ms_p50": median * 1e3,
        "us_per_subscriber": median * 1e6 / subscribers,
        "slow_disconnects": hub.stats.slow_disconnects,
    }


def raise_fd_limit() -> None:
    """Each subscriber costs ~3 descriptors here (client, server, the sender's handle)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))


def main() -> None:
    raise_fd_limit()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", default="100,500,1000")
    parser.add_argument("--publishes", type=int, default=50)
    args = parser.parse_args()
    rows = [trio.run(measure, int(n), args.publishes) for n in args.subscribers.split(",")]
    headers = ["subscribers", "publish_ms_p50", "us_per_subscriber", "slow_disconnects"]
    print_table(headers, [[row[h] for h in headers] for row in rows])
    print(f"JSON: {write_json('fanout', {'results': rows})}")


if __name__ == "__main__":
    main()
