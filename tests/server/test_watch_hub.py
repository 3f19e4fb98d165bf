"""The watch hub over real loopback sockets: order, resume, snapshots, slow subscribers."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from felix.broker.connection import ClientConnection, ConnectionClosed
from felix.proto.client_messages import (
    Change,
    ClientHello,
    Delta,
    DeltaPart,
    Deltas,
    Resync,
    SnapshotChunk,
    WatchProgress,
)
from felix.server.watch_hub import HubLimits, WatchHub, pack_deltas, split_delta
from felix.server.ws_server import WsConnection, serve_ws


class Model:
    """A toy replicated view: key -> value, version, publishing deltas to a hub."""

    def __init__(self) -> None:
        self.items: dict[str, int] = {}
        self.version = 0
        self.hub: WatchHub | None = None

    def snapshot(self) -> tuple[int, bytes, Sequence[Change]]:
        records = [Change("kv", k, {"v": v}) for k, v in sorted(self.items.items())]
        return self.version, b"d%d" % self.version, records

    def write(self, count: int = 1, changes_each: int = 1) -> list[Delta]:
        deltas = []
        for _ in range(count):
            prev = self.version
            self.version += 1
            changes = []
            for c in range(changes_each):
                key = f"k{(self.version * 7 + c) % 50}"
                self.items[key] = self.version
                changes.append(Change("kv", key, {"v": self.version}))
            deltas.append(Delta(prev, self.version, b"d%d" % self.version, tuple(changes)))
        assert self.hub is not None
        self.hub.publish(deltas)
        return deltas


@asynccontextmanager
async def serving(
    limits: HubLimits, *, send_buffer_bytes: int | None = None, backlog_bytes_max: int = 256 << 10
) -> AsyncIterator[tuple[Model, WatchHub, int]]:
    """``send_buffer_bytes``: every connection's (locked) kernel send buffer."""
    model = Model()
    hub = WatchHub(model.snapshot, limits)
    model.hub = hub

    async def handler(conn: WsConnection) -> None:
        if send_buffer_bytes is not None:
            conn.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_bytes)
        hello = ClientHello  # the first message opens the watch
        from felix.proto.client_messages import CLIENT_TO_SERVER

        message = CLIENT_TO_SERVER.decode(await conn.receive())
        assert isinstance(message, hello)
        reason = await hub.watch(conn, message.from_version)
        await conn.close(4001, reason[:100])

    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_ws(
                handler,
                "127.0.0.1",
                0,
                backlog_bytes_max=backlog_bytes_max,
                task_status=task_status,
            )
        )
        nursery.start_soon(hub.run)
        yield model, hub, port
        nursery.cancel_scope.cancel()


class Watcher:
    """Applies what it receives exactly as a broker must, and asserts the guarantees."""

    def __init__(self) -> None:
        self.items: dict[str, int] = {}
        self.version: int | None = None
        self.seen: list[int] = []
        self.snapshots = 0
        self.progress: list[int] = []
        self._chunks: list[Change] = []
        self._parts: list[Change] = []

    def apply(self, message: object) -> None:
        if isinstance(message, SnapshotChunk):
            self._chunks.extend(message.records)
            if message.last:
                self.items = {c.key: c.value["v"] for c in self._chunks if c.value}
                self._chunks = []
                self.version = message.version
                self.snapshots += 1
        elif isinstance(message, Deltas):
            for delta in message.deltas:
                self._apply_delta(delta)
        elif isinstance(message, DeltaPart):
            self._parts.extend(message.changes)
            if message.last:
                changes, self._parts = tuple(self._parts), []
                self._apply_delta(Delta(message.prev_version, message.version, b"", changes))
        elif isinstance(message, WatchProgress):
            assert self.version is not None and message.version <= self.version + 0
            self.progress.append(message.version)

    def _apply_delta(self, delta: Delta) -> None:
        assert delta.prev_version == self.version, "gap or duplicate"
        for change in delta.changes:
            assert change.value is not None
            self.items[change.key] = change.value["v"]
        self.version = delta.version
        self.seen.append(delta.version)


async def watch_until(conn: ClientConnection, watcher: Watcher, version: int) -> None:
    with trio.fail_after(10):
        while watcher.version is None or watcher.version < version:
            for message in await conn.receive_batch():
                watcher.apply(message)


async def connect(port: int, from_version: int | None) -> ClientConnection:
    conn = await ClientConnection.open("127.0.0.1", port)
    await conn.send(ClientHello(7, from_version, "t"))
    return conn


async def test_snapshot_then_live_deltas_in_order() -> None:
    async with serving(HubLimits(snapshot_chunk_records=7)) as (model, _hub, port):
        model.write(30)
        conn = await connect(port, None)
        watcher = Watcher()
        await watch_until(conn, watcher, 30)
        assert watcher.snapshots == 1 and watcher.items == model.items
        model.write(100)
        await watch_until(conn, watcher, 130)
        assert watcher.items == model.items
        assert watcher.seen == list(range(31, 131))


async def test_resume_from_retained_version_sends_only_what_follows() -> None:
    async with serving(HubLimits()) as (model, _hub, port):
        model.write(50)
        conn = await connect(port, 40)
        watcher = Watcher()
        watcher.version, watcher.items = 40, {}
        await watch_until(conn, watcher, 50)
        assert watcher.seen == list(range(41, 51)) and watcher.snapshots == 0


async def test_resume_below_history_gets_a_snapshot_not_a_gap() -> None:
    async with serving(HubLimits(history_versions_max=10)) as (model, hub, port):
        model.write(50)
        assert hub.oldest_resumable() == 40
        conn = await connect(port, 5)
        watcher = Watcher()
        await watch_until(conn, watcher, 50)
        assert watcher.snapshots == 1 and watcher.items == model.items


async def test_ahead_of_this_node_waits_until_it_catches_up() -> None:
    async with serving(HubLimits(wait_ahead_s=5)) as (model, _hub, port):
        model.write(10)
        conn = await connect(port, 12)
        watcher = Watcher()
        watcher.version = 12
        await trio.testing.wait_all_tasks_blocked()
        model.write(5)
        await watch_until(conn, watcher, 15)
        assert watcher.seen == [13, 14, 15]


async def test_ahead_forever_gets_resync() -> None:
    async with serving(HubLimits(wait_ahead_s=0.05)) as (_model, _hub, port):
        conn = await connect(port, 99)
        with trio.fail_after(10):
            message = await conn.receive()
        assert isinstance(message, Resync) and "ahead of this node" in message.reason


async def test_progress_when_idle() -> None:
    async with serving(HubLimits(progress_interval_s=0.05)) as (model, _hub, port):
        model.write(3)
        conn = await connect(port, 3)
        watcher = Watcher()
        watcher.version = 3
        with trio.fail_after(10):
            while not watcher.progress:
                for message in await conn.receive_batch():
                    watcher.apply(message)
        assert watcher.progress[0] == 3


async def test_big_delta_is_split_and_applied_atomically() -> None:
    async with serving(HubLimits(message_bytes_max=2000)) as (model, _hub, port):
        conn = await connect(port, 0)
        watcher = Watcher()
        watcher.version = 0
        model.write(1, changes_each=400)
        await watch_until(conn, watcher, 1)
        assert watcher.items == model.items and watcher.seen == [1]


async def test_slow_subscriber_is_cut_off_and_others_are_not_delayed() -> None:
    limits = HubLimits(coalesce_after_frames=4, subscriber_lag_versions_max=50)
    async with serving(limits) as (model, hub, port):
        slow = await connect(port, 0)
        fast = await connect(port, 0)
        watcher = Watcher()
        watcher.version = 0
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(2000):  # the slow one never reads, the fast one keeps up
            model.write(10, changes_each=20)
            for message in await fast.receive_batch():
                watcher.apply(message)
            if hub.stats.resyncs:
                break
        assert hub.stats.resyncs == 1 and hub.watchers == 1
        got_resync = False
        with trio.fail_after(10), pytest.raises(ConnectionClosed):
            while True:  # reads what was queued, then the Resync, then the close
                for message in await slow.receive_batch():
                    got_resync = got_resync or isinstance(message, Resync)
        assert got_resync
        model.write(5)
        await watch_until(fast, watcher, model.version)
        assert watcher.items == model.items


async def test_the_slow_subscriber_bound_is_its_own_not_the_history() -> None:
    """A history of 5 versions does not cut a slow subscriber off sooner: it is held
    (coalesced) up to ``subscriber_lag_versions_max`` versions, and resyncs only past it."""
    lag_max = 200
    limits = HubLimits(
        coalesce_after_frames=4, history_versions_max=5, subscriber_lag_versions_max=lag_max
    )
    # A small (locked) send buffer and messages of ~80 KiB: 4 queued are more than the
    # kernel takes without a read (the receive buffer grows only as the client reads),
    # so once held, its deltas stay held until it reads.
    async with serving(limits, send_buffer_bytes=4096, backlog_bytes_max=4 << 20) as (
        model,
        hub,
        port,
    ):
        slow = await connect(port, 0)  # never reads until the end
        await trio.testing.wait_all_tasks_blocked()
        (sub,) = hub._subscribers  # white box: how many versions are held for it
        for _ in range(2000):  # fill its socket and backlog until deltas are held
            model.write(100, changes_each=20)
            await hub.wait_fanned_out()
            if sub.held is not None:
                break
        assert sub.held is not None and hub.stats.resyncs == 0
        while sub.held.versions < lag_max:  # exactly at the bound, one version at a time
            model.write(1, changes_each=20)
            await hub.wait_fanned_out()
            assert sub.held is not None, sub.connection.sender.backlog_frames
        assert sub.held.versions == lag_max > 10 * limits.history_versions_max
        assert hub.oldest_resumable() == model.version - limits.history_versions_max
        assert hub.stats.resyncs == 0 and hub.watchers == 1  # still subscribed
        model.write(1)  # one more than the bound
        await hub.wait_fanned_out()
        assert hub.stats.resyncs == 1 and hub.watchers == 0 and hub.stats.slow_disconnects == 1
        watcher = Watcher()
        watcher.version = 0
        reasons = await read_until_closed(slow, watcher)
        assert watcher.version is not None and watcher.version < model.version  # no gap
        assert reasons == [f"subscriber too slow: more than {lag_max} versions held for it"]


def test_pack_splits_only_at_version_boundaries() -> None:
    deltas = [Delta(i, i + 1, b"", (Change("kv", "k", {"v": "x" * 100}),)) for i in range(20)]
    messages = pack_deltas(deltas, 600)
    assert all(isinstance(m, Deltas) for m in messages) and len(messages) > 1
    flat = [d for m in messages if isinstance(m, Deltas) for d in m.deltas]
    assert flat == deltas


def test_split_delta_parts_cover_all_changes_once() -> None:
    changes = tuple(Change("kv", f"k{i}", {"v": i}) for i in range(500))
    parts = split_delta(Delta(4, 5, b"dd", changes), 1000)
    assert len(parts) > 1 and [p.seq for p in parts] == list(range(len(parts)))
    assert [p.last for p in parts] == [False] * (len(parts) - 1) + [True]
    assert tuple(c for p in parts for c in p.changes) == changes


async def read_until_closed(conn: ClientConnection, watcher: Watcher) -> list[str]:
    """Apply everything until the server closes; returns the Resync reasons seen."""
    reasons: list[str] = []
    with trio.fail_after(10), pytest.raises(ConnectionClosed):
        while True:
            for message in await conn.receive_batch():
                if isinstance(message, Resync):
                    reasons.append(message.reason)
                else:
                    watcher.apply(message)
    return reasons


@pytest.mark.parametrize(
    "limits",
    [HubLimits(fanout_batches_max=20), HubLimits(fanout_bytes_max=4000)],
    ids=["by-count", "by-bytes"],
)
async def test_fanout_queue_overflow_resyncs_every_subscriber(limits: HubLimits) -> None:
    """The Raft loop publishes without waiting; when the fan-out task is a whole queue
    behind, every subscriber is told to resync (nothing is dropped silently), and the
    hub serves new subscribers normally afterwards."""
    async with serving(limits) as (model, hub, port):
        live = await connect(port, 0)
        watcher = Watcher()
        watcher.version = 0
        model.write(1)
        await watch_until(live, watcher, 1)
        for _ in range(100):  # no checkpoint in between: the fan-out task cannot run
            model.write(1, changes_each=5)
            if hub.stats.fanout_overflows:
                break
        assert hub.stats.fanout_overflows == 1 and hub.watchers == 0
        reasons = await read_until_closed(live, watcher)
        assert len(reasons) == 1 and "fan-out fell" in reasons[0]
        assert watcher.version == 1  # nothing after the last fanned-out batch, no gap
        resumed = await connect(port, 1)
        again = Watcher()
        again.version = 1
        model.write(3)
        await watch_until(resumed, again, model.version)
        assert again.seen == list(range(2, model.version + 1))
        assert hub.stats.fanout_overflows == 1
        await hub.wait_fanned_out()


async def test_one_batch_over_the_fanout_byte_bound_alone_is_delivered() -> None:
    async with serving(HubLimits(fanout_bytes_max=100)) as (model, hub, port):
        conn = await connect(port, 0)
        watcher = Watcher()
        watcher.version = 0
        model.write(1, changes_each=50)  # one batch, far over 100 bytes, queue empty
        await watch_until(conn, watcher, 1)
        assert hub.stats.fanout_overflows == 0 and watcher.items == model.items


class TaskSteps(trio.abc.Instrument):
    """Counts the scheduler steps of the tasks whose name ends with ``suffix``."""

    def __init__(self, suffix: str) -> None:
        self.suffix = suffix
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith(self.suffix):
            self.steps += 1


@pytest.mark.parametrize("ttl_s", [5.0, 0.0])
async def test_an_idle_hub_wakes_once_per_progress_interval(
    autojump_clock: trio.testing.MockClock, ttl_s: float
) -> None:
    """No subscriber held, no snapshot cached: the maintenance wakes for WatchProgress
    only, not on a short fixed tick (an idle node's CPU); a snapshot TTL of 0 (allowed)
    does not make it spin."""
    model = Model()
    hub = WatchHub(model.snapshot, HubLimits(progress_interval_s=1.0, snapshot_cache_ttl_s=ttl_s))
    model.hub = hub
    steps = TaskSteps("WatchHub.run")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.run)
        await trio.testing.wait_all_tasks_blocked()
        trio.lowlevel.add_instrument(steps)
        await trio.sleep(10.0)
        trio.lowlevel.remove_instrument(steps)
        nursery.cancel_scope.cancel()
    assert 9 <= steps.steps <= 11  # one step per second (a 50 ms tick made 200)


async def test_the_hub_expires_a_cached_snapshot_when_it_falls_due(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The maintenance sleeps until the entry's due time (last serve + TTL), also when a
    serve during its sleep moves that time later; the progress interval is far longer."""
    model = Model()
    hub = WatchHub(model.snapshot, HubLimits(progress_interval_s=60.0, snapshot_cache_ttl_s=5.0))
    model.hub = hub
    model.write(3)
    stats = hub.snapshots.stats
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.run)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        await hub.snapshots.get(3, "", model.snapshot)
        await trio.sleep_until(start + 3.0)
        await hub.snapshots.get(3, "", model.snapshot)  # served again: due at start + 8
        await trio.sleep_until(start + 7.99)
        assert stats.cache_bytes > 0 and stats.encodes == 1
        await trio.sleep_until(start + 8.01)
        assert stats.cache_bytes == 0
        nursery.cancel_scope.cancel()
