"""The watch hub: committed deltas fan out to every subscribed broker, in order.

Theory of operation
-------------------
*Publish* (the hot path) runs in the Raft loop after each applied batch and never
waits: the batch's deltas are appended to the retained history, packed into ``Deltas``
messages of at most ``message_bytes_max`` (split only at version boundaries; a single
delta larger than that goes out as ``DeltaPart`` messages with an end marker), each
message is CBOR-encoded and WebSocket-framed **once**, and the framed batch is queued for
the fan-out.

*Fan-out* (`WatchHub.fan_out`) runs as its own task: it hands each queued batch's bytes
to every live subscriber's `FrameSender` -- a non-blocking write, no task switch per
subscriber -- yielding every `FANOUT_YIELD_EVERY` subscribers, so the Raft loop's acks,
commits and fsyncs never wait for it.  Its queue is bounded (``fanout_batches_max``,
``fanout_bytes_max``): if the fan-out falls that far behind, publishing still does not
wait or drop anything silently -- every subscriber gets a ``Resync`` saying why and is
disconnected (its broker restarts from a snapshot, as after `WatchHub.reset`), and the
queue is emptied.

*Subscribe* (``WatchUpdates(from_version)``) starts a subscriber in catch-up mode:
- ``from_version`` retained in history: the deltas after it are sent from history;
- ``from_version`` None, or older than the history: a ``Snapshot`` (chunks, end marker)
  of the view at the current version, then deltas after it — never a silent gap.  The
  chunks come from the node's `SnapshotCache` (one encode per version, shared with
  ``GetSnapshot``), sent in one of its bounded send slots;
- ``from_version`` ahead of this node (a lagging follower): wait until the node has
  applied it (bounded), else ``Resync``.
While a subscriber catches up, live messages for it queue (bounded); then it turns live.

*Slow subscribers*: a subscriber whose socket is full gets a bounded backlog drained by
its flusher.  Past ``coalesce_after_frames`` queued messages its further deltas are
held as their net effect (`felix.server.coalesce.NetDelta`: one change per record, the
latest; the first ``prev_version``, the newest version and digest), so what is held
grows with the records touched, not with the versions.  Once its backlog is empty
(`_flush_held`, every maintenance tick) it gets that as ONE delta from the version it
was last sent to the newest -- in `DeltaPart`s if bigger than ``message_bytes_max``,
which the broker applies only at the last part -- and its digest check still holds
(the digest is a function of the view alone).  Past ``subscriber_lag_versions_max``
versions or ``subscriber_held_bytes_max`` bytes held, or the backlog's byte bound, it
gets a ``Resync`` saying which and is disconnected.  Nobody else ever waits for it.
A resuming subscriber's catch-up from history is *not* coalesced: it resumes with
exactly the deltas after its version (already packed and paced, and bounded by the
history), which the rolling-restart test relies on ("every Raft index is a version").

*WatchProgress*: every ``progress_interval_s`` without a publish, one pre-built
``WatchProgress{version}`` frame goes to every live subscriber (in order with deltas, since
it travels the same socket path).

*Maintenance* (`WatchHub._maintain`) wakes only when there is work: at the next progress
time, every `HELD_FLUSH_INTERVAL_S` while some subscriber has deltas held (`_held`), and
when a cached snapshot falls due (at most ``min(progress_interval_s,
snapshot_cache_ttl_s)`` late, when it fell due during snapshot sends; a TTL of 0 counts
as the interval).  An idle node with no slow subscriber wakes once per progress
interval, not on a fixed short tick.

A subscriber leaves the hub when its watch ends for any reason -- a ``Resync``, or the
connection closing under it (`WatchHub.watch` cancelled) -- so ``watchers`` counts only
open watches, and a broker that went away is never counted as a slow one.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import trio

from felix.proto.client_messages import (
    SERVER_TO_CLIENT,
    Change,
    Delta,
    DeltaPart,
    Deltas,
    Resync,
    WatchProgress,
)
from felix.proto.versions import BASELINE
from felix.proto.ws_frames import server_frame
from felix.server.coalesce import NetDelta, value_size
from felix.server.snapshot_cache import SnapshotCache, SnapshotLimits, send_snapshot
from felix.server.ws_server import WsConnection

log = logging.getLogger("felix.watch")

SnapshotSource = Callable[[], tuple[int, bytes, Sequence[Change]]]
"""Returns (version, digest, records) of the current view, consistently."""


@dataclass(frozen=True, slots=True)
class HubLimits:
    history_versions_max: int = 100_000  # deltas retained for resuming subscribers
    history_bytes_max: int = 64 * 1024 * 1024
    message_bytes_max: int = 1024 * 1024  # one Deltas message; bigger deltas are split
    snapshot_chunk_records: int = 2000
    coalesce_after_frames: int = 64
    pending_frames_max: int = 10_000  # queued for a subscriber still catching up
    wait_ahead_s: float = 10.0  # how long a broker ahead of this node may wait
    progress_interval_s: float = 1.0
    # Published batches not yet fanned out; past either bound, everyone resyncs.
    fanout_batches_max: int = 10_000
    fanout_bytes_max: int = 64 * 1024 * 1024  # their frames' bytes
    # A live subscriber's deltas held (coalesced) while its socket is full; past this
    # many versions it resyncs.  Its own bound: a short history does not cut slow
    # subscribers off sooner (``watch.subscriber_lag_versions_max``).
    subscriber_lag_versions_max: int = 100_000
    # ...or past this many (estimated, encoded) bytes of net changes held for it
    # (``watch.subscriber_held_bytes_max``): they grow with the records touched.
    subscriber_held_bytes_max: int = 16 * 1024 * 1024
    # Encoded snapshots shared per version (`felix.server.snapshot_cache`).
    snapshot_cache_bytes_max: int = 256 * 1024 * 1024
    snapshot_cache_ttl_s: float = 5.0
    snapshot_sends_max: int = 16  # snapshot sends at once; more queue for a slot

    def snapshot_limits(self) -> SnapshotLimits:
        return SnapshotLimits(
            chunk_records=self.snapshot_chunk_records,
            bytes_max=self.snapshot_cache_bytes_max,
            ttl_s=self.snapshot_cache_ttl_s,
            sends_max=self.snapshot_sends_max,
        )


@dataclass(slots=True)
class HubStats:
    deltas_published: int = 0
    frames_built: int = 0
    frames_sent: int = 0
    coalesced: int = 0  # coalesced deliveries: one net delta each
    coalesced_versions: int = 0  # versions they covered
    resyncs: int = 0
    slow_disconnects: int = 0
    snapshots_sent: int = 0
    fanout_overflows: int = 0  # the fan-out queue was full: every subscriber resynced


@dataclass(frozen=True, slots=True)
class _Batch:
    """Consecutive versions (first..last) published together, framed once."""

    first: int
    last: int
    frames: list[bytes]
    deltas: Sequence[Delta]
    size_bytes: int  # of the frames


FANOUT_YIELD_EVERY = 32  # subscribers served between two yields to the Raft loop
HELD_FLUSH_INTERVAL_S = 0.05  # how often a subscriber with held deltas is checked


@dataclass(eq=False)
class Subscriber:
    connection: WsConnection
    version: int  # the highest version handed to this subscriber (sent, queued or held)
    live: bool = False
    pending: list[bytes] = field(default_factory=list)  # while catching up
    held: NetDelta | None = None  # the net effect of what came while the socket was full
    done: trio.Event = field(default_factory=trio.Event)
    reason: str = ""
    protocol_version: int = BASELINE  # the connection's (`felix.proto.versions`)


class WatchHub:
    def __init__(
        self,
        snapshot_source: SnapshotSource,
        limits: HubLimits = HubLimits(),
        *,
        version: int = 0,
        history: Callable[[], str] = lambda: "",
    ) -> None:
        """``version``: where the state the hub will publish from stands now;
        ``history``: the lineage its snapshots are of (docs/architecture.md §14)."""
        self.limits = limits
        self.stats = HubStats()
        self._snapshot_source = snapshot_source
        self.snapshots = SnapshotCache(limits.snapshot_limits())  # shared with the client API
        self.history = history
        self._history: deque[tuple[Delta, int]] = deque()  # (delta, encoded size)
        self._history_bytes = 0
        self.version = version  # last published version
        self._subscribers: set[Subscriber] = set()
        self._held: set[Subscriber] = set()  # subscribers with deltas held: `_flush_held`
        self._advanced = trio.Event()
        self._published_since_progress = False
        self._maintain_wake = trio.Event()  # set when a subscriber starts being held
        self._fanout: deque[_Batch] = deque()  # bounded: see `_fanout_overflow`
        self._fanout_bytes = 0
        self._fanout_wake = trio.Event()
        self._fanned_out = trio.Event()

    @property
    def watchers(self) -> int:
        return len(self._subscribers)

    @property
    def history_bytes(self) -> int:
        return self._history_bytes

    @property
    def held_bytes(self) -> int:
        """Net changes held for slow subscribers now (estimated encoded bytes)."""
        return sum(s.held.size_bytes for s in self._held if s.held is not None)

    def oldest_resumable(self) -> int:
        """The smallest ``from_version`` served from history."""
        return self._history[0][0].prev_version if self._history else self.version

    def reset(self, version: int) -> None:
        """The state was replaced (snapshot installed): history no longer connects."""
        self._history.clear()
        self._history_bytes = 0
        self._fanout.clear()
        self._fanout_bytes = 0
        self.version = version
        for sub in list(self._subscribers):
            self._resync(sub, "the node installed a snapshot; take a fresh snapshot")

    # --- publish (hot path) -----------------------------------------------------------

    def publish(self, deltas: Sequence[Delta]) -> None:
        if not deltas:
            return
        frames = self._frames_for(deltas)
        self._remember(deltas)
        self.version = deltas[-1].version
        self.stats.deltas_published += len(deltas)
        self._published_since_progress = True
        size = sum(map(len, frames))
        limits = self.limits
        if self._fanout and (  # (one batch alone may exceed the byte bound)
            len(self._fanout) >= limits.fanout_batches_max
            or self._fanout_bytes + size > limits.fanout_bytes_max
        ):
            self._fanout_overflow()
        self._fanout.append(_Batch(deltas[0].prev_version + 1, self.version, frames, deltas, size))
        self._fanout_bytes += size
        self._fanout_wake.set()
        self._advanced.set()
        self._advanced = trio.Event()

    async def fan_out(self) -> None:
        """Deliver published batches to every subscriber, in order.

        Runs as its own task, not inside the Raft loop: on loopback each send also pays
        for the receiver's side of TCP, so a fan-out to hundreds of brokers takes
        milliseconds, and the loop's acks, commits and fsyncs must not wait for it.  It
        yields every `FANOUT_YIELD_EVERY` subscribers for the same reason, and once
        before the first: the writers' replies that the same apply woke go out first
        (on a small machine each send here wakes a broker process that competes with
        the writer for a core)."""
        while True:
            if not self._fanout:
                self._fanned_out.set()
                self._fanout_wake = trio.Event()
                await self._fanout_wake.wait()
                await trio.lowlevel.checkpoint()
                continue
            self._fanned_out = trio.Event()
            batch = self._fanout.popleft()
            self._fanout_bytes -= batch.size_bytes
            for n, sub in enumerate(list(self._subscribers)):
                self._deliver(sub, batch)
                if n % FANOUT_YIELD_EVERY == FANOUT_YIELD_EVERY - 1:
                    await trio.lowlevel.checkpoint()

    async def wait_fanned_out(self) -> None:
        """Until everything published so far was handed to every subscriber."""
        while self._fanout or not self._fanned_out.is_set():
            await self._fanned_out.wait()
            await trio.lowlevel.checkpoint()

    def _fanout_overflow(self) -> None:
        """The fan-out task is a whole queue behind the Raft loop: rather than wait or
        grow, every subscriber (live or catching up) is told to resync and dropped, and
        the queued batches, which now have no one to go to, are discarded.  A subscriber
        joining later starts after them (from history or a snapshot)."""
        self.stats.fanout_overflows += 1
        reason = (
            f"the watch fan-out fell {len(self._fanout)} batches"
            f" ({self._fanout_bytes} bytes) behind; take a fresh snapshot"
        )
        log.warning("%s (%d subscribers)", reason, len(self._subscribers))
        self._fanout.clear()
        self._fanout_bytes = 0
        for sub in list(self._subscribers):
            self._resync(sub, reason)

    def _deliver(self, sub: Subscriber, batch: _Batch) -> None:
        if batch.last <= sub.version or sub.done.is_set():
            return  # it joined after this batch (history or snapshot already cover it)
        if batch.first <= sub.version:
            self._resync(sub, "internal: overlapping delta batch")  # never expected
            return
        sub.version = batch.last
        if not sub.live:
            sub.pending.extend(batch.frames)
            if len(sub.pending) > self.limits.pending_frames_max:
                self._resync(sub, "too far behind while catching up")
            return
        sender = sub.connection.sender
        if sub.held is not None or sender.backlog_frames >= self.limits.coalesce_after_frames:
            self._hold(sub, batch.deltas)  # one net delta, sent once the socket drains
            return
        for frame in batch.frames:
            if not sender.send(frame):
                self._slow(sub)
                return
        self.stats.frames_sent += len(batch.frames)

    def _frames_for(self, deltas: Sequence[Delta]) -> list[bytes]:
        messages = pack_deltas(deltas, self.limits.message_bytes_max)
        frames = [server_frame(SERVER_TO_CLIENT.encode(m)) for m in messages]
        self.stats.frames_built += len(frames)
        return frames

    def _remember(self, deltas: Iterable[Delta]) -> None:
        for delta in deltas:
            size = delta_size(delta)
            self._history.append((delta, size))
            self._history_bytes += size
        limits = self.limits
        while self._history and (
            len(self._history) > limits.history_versions_max
            or self._history_bytes > limits.history_bytes_max
        ):
            _, size = self._history.popleft()
            self._history_bytes -= size

    def _hold(self, sub: Subscriber, deltas: Sequence[Delta]) -> None:
        """Fold ``deltas`` into what is held for ``sub``; past either bound, Resync."""
        limits = self.limits
        try:
            if sub.held is None:
                sub.held = NetDelta(deltas[0])
                sub.held.extend(deltas[1:])
                self._held.add(sub)
                self._maintain_wake.set()
            else:
                sub.held.extend(deltas)
        except ValueError as exc:  # never expected: batches are consecutive
            self._resync(sub, f"internal: {exc}")
            return
        held = sub.held
        if held.versions > limits.subscriber_lag_versions_max:
            reason = f"more than {limits.subscriber_lag_versions_max} versions held for it"
        elif held.size_bytes > limits.subscriber_held_bytes_max:
            reason = f"more than {limits.subscriber_held_bytes_max} bytes of changes held for it"
        else:
            return
        self.stats.slow_disconnects += 1
        self._resync(sub, f"subscriber too slow: {reason}")

    def _leave(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)
        self._held.discard(sub)
        sub.held = None

    def _slow(self, sub: Subscriber) -> None:
        self.stats.slow_disconnects += 1
        self._resync(sub, "subscriber too slow: its send buffer overflowed")

    def _resync(self, sub: Subscriber, reason: str) -> None:
        """Tell the subscriber to start over from a snapshot, then disconnect it."""
        self.stats.resyncs += 1
        self._leave(sub)
        sub.connection.sender.send_final(server_frame(SERVER_TO_CLIENT.encode(Resync(reason))))
        sub.reason = reason
        sub.done.set()

    # --- maintenance tasks --------------------------------------------------------------

    async def run(self) -> None:
        """The fan-out task, WatchProgress heartbeats and draining of coalesced deltas."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.fan_out)
            await self._maintain()

    async def _maintain(self) -> None:
        """Progress, held flushes and snapshot expiry, each only when it falls due."""
        interval, ttl = self.limits.progress_interval_s, self.limits.snapshot_cache_ttl_s
        idle_wait = min(interval, ttl) if ttl > 0 else interval  # (a TTL of 0: no spin)
        held_wait = min(interval, HELD_FLUSH_INTERVAL_S)
        next_progress = trio.current_time() + interval
        while True:
            now = trio.current_time()
            deadline = min(next_progress, now + (held_wait if self._held else idle_wait))
            due = self.snapshots.next_expiry()
            if due is not None:
                deadline = min(deadline, due)
            with trio.move_on_at(deadline):
                await self._maintain_wake.wait()
            self._maintain_wake = trio.Event()
            self._flush_held()
            self.snapshots.expire()
            now = trio.current_time()
            if now >= next_progress:
                next_progress += interval
                if next_progress <= now:  # woke a whole interval late: no burst to catch up
                    next_progress = now + interval
                # WatchProgress promises everything <= version was sent: only when idle.
                if not self._published_since_progress and not self._fanout:
                    self._broadcast_progress()
                self._published_since_progress = False

    def _broadcast_progress(self) -> None:
        # One frame per protocol version in use; ``next_probe`` is version 2's synthetic
        # field (only a connection that negotiated 2 carries it).
        progress = WatchProgress(self.version, next_probe=self.version)
        frames: dict[int, bytes] = {}
        for sub in list(self._subscribers):
            if not sub.live or sub.held is not None:
                continue
            frame = frames.get(sub.protocol_version)
            if frame is None:
                payload = SERVER_TO_CLIENT.encode(progress, sub.protocol_version)
                frame = frames[sub.protocol_version] = server_frame(payload)
            if not sub.connection.sender.send(frame):
                self._slow(sub)

    def _flush_held(self) -> None:
        """A drained socket gets what was held for it as ONE delta, from the version it
        was last sent to the newest (in `DeltaPart`s if big: still applied at once)."""
        for sub in list(self._held):
            held = sub.held
            assert held is not None  # in `_held` exactly while something is held
            if sub.connection.sender.backlog_frames == 0:
                sub.held = None
                self._held.discard(sub)
                self.stats.coalesced += 1
                self.stats.coalesced_versions += held.versions
                frames = self._frames_for([held.delta()])
                for frame in frames:
                    if not sub.connection.sender.send(frame):
                        self._slow(sub)
                        break
                else:
                    self.stats.frames_sent += len(frames)

    # --- subscribe ----------------------------------------------------------------------

    async def watch(
        self, connection: WsConnection, from_version: int | None, protocol_version: int = BASELINE
    ) -> str:
        """Serve ``WatchUpdates(from_version)`` until the subscriber is dropped; returns
        why (the caller closes the connection).  ``protocol_version``: the connection's;
        only `WatchProgress` differs between the versions so far."""
        sub = Subscriber(connection, from_version or 0, protocol_version=protocol_version)
        try:
            return await self._serve(sub, from_version)
        finally:
            self._leave(sub)  # ended, resynced, or its connection closed under it

    async def _serve(self, sub: Subscriber, from_version: int | None) -> str:
        connection = sub.connection
        if from_version is not None and from_version > self.version:
            with trio.move_on_after(self.limits.wait_ahead_s):
                while from_version > self.version:
                    await self._advanced.wait()
            if from_version > self.version:
                return self._refuse_ahead(connection, from_version)
        if from_version is not None and from_version >= self.oldest_resumable():
            self._subscribers.add(sub)
            sent = self._history_frames_after(from_version)
            sub.version = self.version  # the history covers everything published so far
            await self._send_catch_up(sub, sent)
        else:
            await self._send_snapshot(sub)
        await self._go_live(sub)
        await sub.done.wait()
        return sub.reason

    def _refuse_ahead(self, connection: WsConnection, from_version: int) -> str:
        reason = f"version {from_version} is ahead of this node ({self.version})"
        self.stats.resyncs += 1
        connection.sender.send(server_frame(SERVER_TO_CLIENT.encode(Resync(reason))))
        return reason

    def _history_frames_after(self, from_version: int) -> list[bytes]:
        deltas = [d for d, _ in self._history if d.version > from_version]
        return self._frames_for(deltas) if deltas else []

    async def _send_catch_up(self, sub: Subscriber, frames: list[bytes]) -> None:
        sender = sub.connection.sender
        for frame in frames:
            if not sender.send(frame):
                self._slow(sub)
                return
            if sender.backlog_bytes > sender.backlog_bytes_max // 2:
                await sender.drain()
        self.stats.frames_sent += len(frames)

    async def _send_snapshot(self, sub: Subscriber) -> None:
        """The view at the current version, from the node's snapshot cache, in one of its
        send slots (queued for one first).  The subscriber joins only once it has its
        slot, at the version the snapshot is of, so what is published meanwhile waits in
        ``sub.pending`` right after it."""
        async with self.snapshots.send_slot():
            self._subscribers.add(sub)
            sub.version = self.version
            snapshot = await self.snapshots.get(
                self.version, self.history(), self._snapshot_source, sub.protocol_version
            )
            await send_snapshot(sub.connection, snapshot, None)
        self.stats.snapshots_sent += 1

    async def _go_live(self, sub: Subscriber) -> None:
        sender = sub.connection.sender
        while sub.pending and not sub.done.is_set():
            frames, sub.pending = sub.pending, []
            for frame in frames:
                if not sender.send(frame):
                    self._slow(sub)
                    return
            await sender.drain()
        sub.live = True


def delta_size(delta: Delta) -> int:
    """A cheap estimate of a delta's encoded size (for packing and history bounds)."""
    total = 32 + len(delta.digest)
    for change in delta.changes:
        total += 16 + len(change.kind) + len(change.key)
        if change.value:
            total += sum(8 + len(k) + value_size(v) for k, v in change.value.items())
    return total


def pack_deltas(deltas: Sequence[Delta], message_bytes_max: int) -> list[Deltas | DeltaPart]:
    """Consecutive deltas packed into messages of at most ``message_bytes_max``, split only
    at version boundaries; one oversized delta becomes `DeltaPart`s."""
    messages: list[Deltas | DeltaPart] = []
    batch: list[Delta] = []
    batch_bytes = 0
    for delta in deltas:
        size = delta_size(delta)
        if size > message_bytes_max:
            if batch:
                messages.append(Deltas(tuple(batch)))
                batch, batch_bytes = [], 0
            messages.extend(split_delta(delta, message_bytes_max))
            continue
        if batch and batch_bytes + size > message_bytes_max:
            messages.append(Deltas(tuple(batch)))
            batch, batch_bytes = [], 0
        batch.append(delta)
        batch_bytes += size
    if batch:
        messages.append(Deltas(tuple(batch)))
    return messages


def split_delta(delta: Delta, message_bytes_max: int) -> list[DeltaPart]:
    """One command's oversized delta in parts; the broker applies it only at ``last``."""
    parts: list[list[Change]] = [[]]
    size = 0
    for change in delta.changes:
        change_size = delta_size(Delta(0, 0, b"", (change,)))
        if parts[-1] and size + change_size > message_bytes_max:
            parts.append([])
            size = 0
        parts[-1].append(change)
        size += change_size
    return [
        DeltaPart(
            delta.prev_version,
            delta.version,
            delta.digest,
            seq,
            seq == len(parts) - 1,
            tuple(changes),
        )
        for seq, changes in enumerate(parts)
    ]
