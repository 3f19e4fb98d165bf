"""The broker's receive path: CPU per delta message received, decoded and applied.

    python -m bench.receive [--brokers 100] [--messages 300] [--interval-ms 5]
        [--impl lean,trio-stream]

N brokers (`ClientConnection` + `MetadataCache`, as `open_metadata_client` uses them)
run in one ``trio.run``, each on its own loopback WebSocket connection; a sender process
writes the same ~200-byte metadata delta (a `set_tenant` change, as in
`bench.propagation`) to every connection, one message every ``--interval-ms``, so each
broker wakes up once per message — the steady-state shape of a propagation run.  The
figure is the broker process's CPU time over the messages divided by the messages
(socket wake-up, frame parse, CBOR decode, digest check, apply): what limits how many
brokers fit on a machine and how long the last of them waits.

``--impl`` compares receive loops: ``view`` is the whole library, `open_metadata_client`
(its session task, batch handling, lag bookkeeping: what a broker runs; the sender
answers its Hello with a snapshot first); ``lean`` is `felix.broker.connection` with a
bare `MetadataCache` (a plain non-blocking socket: one ``wait_readable`` and one
``recv`` per message); ``trio-stream`` is the same parser and decoder behind
``trio.SocketStream.receive_some`` (what the connection used before).
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import statistics
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

from bench._os import raise_fd_limit
from bench._report import print_table, write_json
from felix.broker.cache import MetadataCache
from felix.broker.client import open_metadata_client
from felix.broker.connection import RECEIVE_BYTES, ClientConnection, ConnectionClosed
from felix.metadata.commands import CreateStream, RegisterNode, SetTenant
from felix.metadata.state import MetadataState
from felix.proto.client_messages import SERVER_TO_CLIENT, Deltas, SnapshotChunk
from felix.proto.ws_frames import accept_token, server_frame

DISPLAY_NAME_BYTES = 120


def workload(messages: int) -> tuple[MetadataState, int, bytes, list[Any], list[bytes]]:
    """(initial snapshot: state, version, digest, records) and one frame per delta."""
    state = MetadataState()
    index = 0
    for n in range(1, 7):
        index += 1
        state.apply_command(index, RegisterNode(n, f"10.0.0.{n}:9092", f"r{n % 3}"))
    index += 1
    state.apply_command(index, CreateStream("orders", 64, "acme", 3))
    version, digest, records = state.version, state.digest, list(state.records())
    frames = []
    for seq in range(messages):
        index += 1
        prefix = f"{seq:010d}-"
        name = prefix + "x" * (DISPLAY_NAME_BYTES - len(prefix))
        delta = state.apply_command(index, SetTenant(f"bench-t{seq % 64:03d}", name)).delta
        frames.append(server_frame(SERVER_TO_CLIENT.encode(Deltas([delta]))))
    return state, version, digest, records, frames


def read_client_frame(conn: socket.socket) -> None:
    """Read (and drop) one masked client frame: the library's ClientHello."""
    data = b""
    while True:
        if len(data) >= 2:
            size, at = data[1] & 0x7F, 2
            if size == 126 and len(data) >= 4:
                size, at = int.from_bytes(data[2:4], "big"), 4
            if (size < 126 or at == 4) and len(data) >= at + 4 + size:
                return
        data += conn.recv(4096)


def sender(
    port_pipe: Any, brokers: int, frames: list[bytes], interval_s: float, hello: bytes | None
) -> None:
    """The server side (its own process): accept, upgrade (and, for ``view``, answer the
    Hello with ``hello``, a snapshot), then one frame per interval to every connection."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=brokers)
    port_pipe.send(listener.getsockname()[1])
    conns = []
    for _ in range(brokers):
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = b""
        while b"\r\n\r\n" not in request:
            request += conn.recv(4096)
        key = next(
            line.split(b":", 1)[1].strip()
            for line in request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = accept_token(key)
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        if hello is not None:
            read_client_frame(conn)
            conn.sendall(hello)
        conns.append(conn)
    port_pipe.recv()  # every broker has its snapshot: go
    start = time.monotonic()
    for n, frame in enumerate(frames):
        delay = start + n * interval_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        for conn in conns:
            conn.sendall(frame)
    port_pipe.recv()  # the brokers are done
    for conn in conns:
        conn.close()


class TrioStreamConnection(ClientConnection):
    """The baseline: the same parse and decode behind ``trio.SocketStream``."""

    def __init__(self, conn: ClientConnection) -> None:
        super().__init__(conn._sock, conn._parser)
        self._stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn._sock))

    async def _fill(self) -> None:
        data = await self._stream.receive_some(RECEIVE_BYTES)
        if not data:
            raise ConnectionClosed(reason="end of stream")
        self._parser.feed(data)
        await self._parse()


async def views_run(port: int, brokers: int, last: int, go: Any) -> float:
    async with AsyncExitStack() as stack:
        views = [
            await stack.enter_async_context(
                open_metadata_client(
                    [f"127.0.0.1:{port}"], node_id=None, register=False, digest_check_s=None
                )
            )
            for _ in range(brokers)
        ]
        cpu = time.process_time()
        go.send("go")
        for view in views:
            await view.wait_version(last)
        cpu = time.process_time() - cpu
        go.send("done")
    return cpu


async def brokers_run(
    impl: str, port: int, brokers: int, snapshot: tuple[int, bytes, list[Any]], last: int, go: Any
) -> float:
    conns = []
    caches = []
    for _ in range(brokers):
        conn = await ClientConnection.open("127.0.0.1", port)
        conns.append(TrioStreamConnection(conn) if impl == "trio-stream" else conn)
        cache = MetadataCache(None)
        cache.apply_snapshot(*snapshot)
        caches.append(cache)

    async def broker(conn: ClientConnection, cache: MetadataCache) -> None:
        while (cache.version or 0) < last:
            for message in await conn.receive_batch():
                for delta in message.deltas:
                    cache.apply_delta(delta)

    cpu = time.process_time()
    go.send("go")
    async with trio.open_nursery() as nursery:
        for conn, cache in zip(conns, caches, strict=True):
            nursery.start_soon(broker, conn, cache)
    cpu = time.process_time() - cpu
    go.send("done")
    for conn in conns:
        await conn.aclose()
    return cpu


def measure(impl: str, brokers: int, messages: int, interval_s: float) -> float:
    """CPU µs per message per broker for one implementation."""
    _, version, digest, records, frames = workload(messages)
    hello = None
    if impl == "view":
        chunk = SnapshotChunk(None, version, digest, 0, tuple(records), True)
        hello = server_frame(SERVER_TO_CLIENT.encode(chunk))
    parent, child = multiprocessing.Pipe()
    proc = multiprocessing.get_context("fork").Process(
        target=sender, args=(child, brokers, frames, interval_s, hello)
    )
    proc.start()
    try:
        port = parent.recv()
        last = version + messages
        if impl == "view":
            cpu = trio.run(views_run, port, brokers, last, parent)
        else:
            snapshot = (version, digest, records)
            cpu = trio.run(brokers_run, impl, port, brokers, snapshot, last, parent)
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    return cpu / (brokers * messages) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--brokers", type=int, default=100)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--interval-ms", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--impl", default="view,lean,trio-stream")
    parser.add_argument("--json", type=Path, default=None, help="default: bench/results/")
    args = parser.parse_args()
    raise_fd_limit()
    impls = [name.strip() for name in args.impl.split(",") if name.strip()]
    samples: dict[str, list[float]] = {name: [] for name in impls}
    for _ in range(args.repeats):  # interleaved, so drift hits every impl alike
        for name in impls:
            samples[name].append(
                measure(name, args.brokers, args.messages, args.interval_ms / 1000)
            )
    base = statistics.median(samples[impls[0]])
    rows = []
    for name in impls:
        xs = samples[name]
        med = statistics.median(xs)
        rows.append(
            [name, round(min(xs), 1), round(med, 1), round(max(xs), 1), round(med / base, 2)]
        )
    print(f"\nreceive path: CPU µs per delta message per broker ({args.brokers} brokers, "
          f"{args.messages} messages, {args.repeats} repeats)")  # fmt: skip
    print_table(["impl", "min", "median", "max", f"x {impls[0]}"], rows)
    path = write_json(
        "receive",
        {"settings": {**vars(args), "json": str(args.json)}, "us_per_message": samples,
         "median": {name: statistics.median(samples[name]) for name in impls}},
        args.json,
    )  # fmt: skip
    print(f"JSON: {path}")


if __name__ == "__main__":
    main()
