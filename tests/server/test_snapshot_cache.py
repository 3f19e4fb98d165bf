"""One snapshot encode per version (felix.server.snapshot_cache), against real parts: the
3-node in-process control plane with the client API on loopback sockets (brokers check
every snapshot's digest with the broker library's `MetadataCache`), the watch hub over
real sockets, Trio's MockClock for the TTL."""

from __future__ import annotations

import socket
from collections.abc import Sequence

import trio
import trio.testing

from felix.broker.cache import MetadataCache
from felix.broker.connection import ClientConnection
from felix.metadata.view import view_of
from felix.proto.client_messages import (
    CLIENT_TO_SERVER,
    SERVER_TO_CLIENT,
    Change,
    ClientHello,
    GetSnapshot,
    SnapshotChunk,
)
from felix.proto.ws_frames import server_frame
from felix.server.snapshot_cache import SnapshotCache, SnapshotLimits, with_request_id
from felix.server.watch_hub import HubLimits, WatchHub
from felix.server.ws_server import WsConnection, serve_ws
from tests.broker.harness import ControlPlane, control_plane, wait_for


def test_a_spliced_request_id_gives_the_bytes_a_fresh_encode_gives() -> None:
    # Payloads on both sides of the frame header's size steps (126 bytes, 64 KiB).
    for count in (0, 1, 3, 40, 3000):
        records = tuple(Change("kv", f"k{n}", {"v": n, "s": "x" * 20}) for n in range(count))
        chunk = SnapshotChunk(None, 42, b"\x01" * 8, 3, records, False, "lineage")
        frame = server_frame(SERVER_TO_CLIENT.encode(chunk))
        for request_id in (0, 1, 23, 24, 255, 256, 65_535, 65_536, 2**32, 2**63 - 1):
            with_id = SnapshotChunk(request_id, 42, b"\x01" * 8, 3, records, False, "lineage")
            assert with_request_id(frame, request_id) == server_frame(
                SERVER_TO_CLIENT.encode(with_id)
            ), (count, request_id)


async def _seed(cp: ControlPlane, streams: int) -> None:
    for n in range(1, 4):
        address = f"10.0.0.{n}:9000"
        await cp.write("register_node", {"node_id": n, "address": address, "rack": f"r{n}"})
        await cp.write("node_health", {"node_id": n, "status": "up"})
    for n in range(streams):
        await cp.write("create_stream", {"name": f"s{n}", "shards": 8, "tenant": "acme"})


async def _watch_snapshot(port: int, cache: MetadataCache) -> int:
    """A fresh broker's watch: its snapshot, applied (digest checked) by the broker
    library's cache; returns the version."""
    conn = await ClientConnection.open("127.0.0.1", port)
    try:
        await conn.send(ClientHello(None, None, ""))
        chunks: list[Change] = []
        with trio.fail_after(30):
            while True:
                for message in await conn.receive_batch():
                    if isinstance(message, SnapshotChunk):
                        assert message.request_id is None
                        chunks.extend(message.records)
                        if message.last:
                            cache.apply_snapshot(
                                message.version, message.digest, chunks, message.history
                            )
                            return message.version
    finally:
        await conn.aclose()


async def test_a_hundred_fresh_subscribers_share_one_encode_and_a_write_makes_another() -> None:
    limits = HubLimits(snapshot_chunk_records=50, snapshot_cache_ttl_s=600)
    async with control_plane(limits) as cp:
        await _seed(cp, 20)  # 160 shards: several chunks
        state = await cp.state()
        node = 1
        stats = cp.hubs[node].snapshots.stats
        encodes, served = stats.encodes, stats.served
        caches = [MetadataCache() for _ in range(100)]
        versions: list[int] = []

        async def one(cache: MetadataCache) -> None:
            versions.append(await _watch_snapshot(cp.ports[node], cache))

        async with trio.open_nursery() as nursery:
            for cache in caches:
                nursery.start_soon(one, cache)
        # One encode per version served (a Raft NOOP could move the version mid-test;
        # on a quiet cluster this is one encode for all 100).
        assert stats.encodes - encodes == len(set(versions))
        assert stats.served - served == 100
        assert len(set(versions)) <= 2
        expected = view_of(state.records())
        for cache, version in zip(caches, versions, strict=True):
            if version == state.version:
                assert cache.records == expected and cache.digest_bytes == state.digest
        # A write: the next subscriber sees the newer version, from a new encode.
        after = await cp.write("create_stream", {"name": "late", "shards": 2, "tenant": "acme"})
        await wait_for(lambda: cp.hubs[node].version >= after)
        before = stats.encodes
        fresh = MetadataCache()
        assert await _watch_snapshot(cp.ports[node], fresh) >= after
        assert stats.encodes == before + 1
        newest = await cp.state()
        assert fresh.digest_bytes == newest.digest
        assert stats.cache_bytes <= limits.snapshot_cache_bytes_max


async def test_a_cache_smaller_than_one_snapshot_encodes_each_time_and_serves_right() -> None:
    limits = HubLimits(snapshot_chunk_records=50, snapshot_cache_bytes_max=1000)
    async with control_plane(limits) as cp:
        await _seed(cp, 10)
        state = await cp.state()
        stats = cp.hubs[2].snapshots.stats
        encodes = stats.encodes
        for _ in range(3):
            cache = MetadataCache()
            assert await _watch_snapshot(cp.ports[2], cache) == state.version
            assert cache.digest_bytes == state.digest
            assert stats.cache_bytes == 0  # never kept: bigger than the bound
        assert stats.encodes - encodes == 3


async def test_get_snapshot_answers_carry_their_own_request_ids_from_one_encode() -> None:
    limits = HubLimits(snapshot_chunk_records=30, snapshot_cache_ttl_s=600)
    async with control_plane(limits) as cp:
        await _seed(cp, 6)
        state = await cp.state()
        leader = (await cp.cluster.wait_for_leader()).node_id
        stats = cp.hubs[leader].snapshots.stats
        encodes = stats.encodes
        conn = await ClientConnection.open("127.0.0.1", cp.ports[leader])
        ids = [7, 0, 24, 2**40, 2**63 - 1]
        for request_id in ids:
            await conn.send(GetSnapshot(request_id, request_id % 2 == 0))
        got: dict[int, list[SnapshotChunk]] = {i: [] for i in ids}
        done: set[int] = set()
        with trio.fail_after(30):
            while len(done) < len(ids):
                for message in await conn.receive_batch():
                    assert isinstance(message, SnapshotChunk) and message.request_id in got
                    got[message.request_id].append(message)
                    if message.last:
                        done.add(message.request_id)
        await conn.aclose()
        expected = view_of(state.records())
        for chunks in got.values():
            assert [c.seq for c in chunks] == list(range(len(chunks))) and len(chunks) > 1
            cache = MetadataCache()
            records = [r for c in chunks for r in c.records]
            cache.apply_snapshot(chunks[-1].version, chunks[-1].digest, records)
            assert chunks[-1].version == state.version and cache.records == expected
        assert stats.encodes - encodes == 1  # all five ids, one version, one encode
        # A watch start at that version shares the frames (request_id None).
        assert await _watch_snapshot(cp.ports[leader], MetadataCache()) == state.version
        assert stats.encodes - encodes == 1


def _records(count: int) -> list[Change]:
    return [Change("kv", f"k{n:05}", {"v": n, "pad": "p" * 1000}) for n in range(count)]


async def test_ttl_expiry_on_the_mock_clock(mock_clock: trio.testing.MockClock) -> None:
    cache = SnapshotCache(SnapshotLimits(chunk_records=10, ttl_s=5.0))
    records = _records(25)

    def view() -> tuple[int, bytes, Sequence[Change]]:
        return 9, b"\x00" * 8, records

    assert cache.next_expiry() is None  # nothing cached
    first = await cache.get(9, "h", view)
    assert cache.stats.encodes == 1 and len(first.frames) == 3
    assert cache.next_expiry() == trio.current_time() + 5.0
    # A storm served for longer than the TTL, a request every 4.9 s: one encode, since
    # the TTL counts from the last serve, not from the build.
    for _ in range(4):
        mock_clock.jump(4.9)
        cache.expire()
        assert await cache.get(9, "h", view) is first
    assert cache.stats.encodes == 1 and cache.stats.served == 5
    mock_clock.jump(4.9)
    cache.expire()
    assert cache.stats.cache_bytes > 0  # 4.9 s since the last serve: kept
    mock_clock.jump(0.2)
    cache.expire()  # the hub's maintenance tick: nothing asked for 5.1 s, dropped
    assert cache.stats.cache_bytes == 0
    again = await cache.get(9, "h", view)
    assert again is not first and cache.stats.encodes == 2 and cache.stats.served == 6
    assert again.frames == first.frames


async def test_concurrent_builds_of_one_version_wait_for_the_first() -> None:
    cache = SnapshotCache(SnapshotLimits(chunk_records=10))
    records = _records(100)  # ten chunks: the build yields between them
    views = 0

    def view() -> tuple[int, bytes, Sequence[Change]]:
        nonlocal views
        views += 1
        return 3, b"\x00" * 8, records

    results = []

    async def one() -> None:
        results.append(await cache.get(3, "", view))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(one)
    assert views == 1 and cache.stats.encodes == 1 and cache.stats.served == 20
    assert cache.stats.joined == 19 and all(r is results[0] for r in results)


async def test_at_most_the_configured_snapshot_sends_run_at_once() -> None:
    """Six fresh subscribers that do not read, a 2 MB snapshot, two send slots: two
    sends block in their drains, four queue; once the subscribers read, every one gets
    the whole snapshot, and no more than two were ever in flight."""
    records = _records(2000)
    limits = HubLimits(snapshot_chunk_records=100, snapshot_sends_max=2)
    hub = WatchHub(lambda: (0, b"\x00" * 8, records), limits)
    stats = hub.snapshots.stats

    async def handler(conn: WsConnection) -> None:
        # A small send buffer: a non-reading client blocks its snapshot send early.
        conn.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
        message = CLIENT_TO_SERVER.decode(await conn.receive())
        assert isinstance(message, ClientHello)
        await hub.watch(conn, message.from_version)

    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_ws(
                handler, "127.0.0.1", 0, backlog_bytes_max=1 << 20, task_status=task_status
            )
        )
        nursery.start_soon(hub.run)
        conns = [await ClientConnection.open("127.0.0.1", port) for _ in range(6)]
        for conn in conns:
            await conn.send(ClientHello(None, None, ""))
        await wait_for(lambda: stats.sends_waiting == 4)
        assert stats.sends_in_flight == 2

        async def read_all(conn: ClientConnection) -> None:
            keys: list[str] = []
            with trio.fail_after(30):
                while True:
                    for message in await conn.receive_batch():
                        assert isinstance(message, SnapshotChunk)
                        keys.extend(r.key for r in message.records)
                        if message.last:
                            assert keys == [r.key for r in records]
                            return

        async with trio.open_nursery() as readers:
            for conn in conns:
                readers.start_soon(read_all, conn)
        assert stats.sends_in_flight_peak == 2 and stats.encodes == 1 and stats.served == 6
        await wait_for(lambda: stats.sends_in_flight == 0 and stats.sends_waiting == 0)
        for conn in conns:
            await conn.aclose()
        nursery.cancel_scope.cancel()


async def test_the_counts_are_exported_with_the_watch_metrics() -> None:
    from felix.server.metrics import NodeMetrics

    records = _records(5)
    hub = WatchHub(lambda: (0, b"\x00" * 8, records), HubLimits())
    metrics = NodeMetrics(1)
    metrics.watch_stats(lambda: hub)
    for _ in range(3):
        snapshot = await hub.snapshots.get(0, "", lambda: (0, b"\x00" * 8, records))
    text = metrics.exposition().decode()
    assert "felix_snapshot_encodes_total 1.0" in text
    assert "felix_snapshot_served_total 3.0" in text
    assert f"felix_snapshot_cache_bytes {float(snapshot.size_bytes)}" in text
    assert "felix_snapshot_sends_waiting 0.0" in text


async def test_nothing_expires_while_sends_are_in_flight_or_queued(
    mock_clock: trio.testing.MockClock,
) -> None:
    """The storm: every send slot held by a slow receiver for longer than the TTL, more
    requests queued behind them; the version they all want stays encoded once."""
    cache = SnapshotCache(SnapshotLimits(chunk_records=10, ttl_s=5.0, sends_max=1))
    records = _records(25)

    def view() -> tuple[int, bytes, Sequence[Change]]:
        return 4, b"\x00" * 8, records

    first = await cache.get(4, "h", view)
    held, release = trio.Event(), trio.Event()

    async def slow_send() -> None:
        async with cache.send_slot():
            held.set()
            await release.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_send)
        await held.wait()
        mock_clock.jump(30.0)
        cache.expire()
        assert cache.stats.cache_bytes > 0  # a send in flight: kept
        assert cache.next_expiry() is None  # ...and nothing falls due while it lasts
        release.set()
    mock_clock.jump(1.0)
    assert await cache.get(4, "h", view) is first and cache.stats.encodes == 1
    assert cache.next_expiry() == trio.current_time() + 5.0
    mock_clock.jump(5.1)
    cache.expire()  # no send in flight or queued, not served for 5.1 s: dropped
    assert cache.stats.cache_bytes == 0 and cache.next_expiry() is None
