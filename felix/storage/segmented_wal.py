"""The write-ahead log: segment files, group commit, crash recovery.

Theory of operation
-------------------
A data directory holds ``wal/`` (segments, see `felix.storage.segment_format`) and
``snap/`` (snapshot files, see `felix.storage.snapshots`).

*Writing.*  Each `Ready` becomes one batch record appended to the active segment and one
fsync (group commit): the snapshot marker, the entries and the hard state are durable
together or not at all.  A snapshot received from the leader is first saved atomically
in ``snap/``; the marker in the batch then restarts the log after it.  Suffix truncation
is logical: a batch whose entries start at index i replaces everything from i on when
the log is replayed, so the disk only ever sees appends (a crash can leave at most a torn
final record).  When the active segment reaches ``segment_bytes_max``, it is fsynced and
a new one is started with a STATE record (hard state, snapshot base, last index), so
every segment can be read without the ones before it.

*Compaction.*  Segment k is deleted (oldest first) once the next segment starts at or
below the compaction index, which is capped at the *oldest* kept snapshot on disk (by
file name, so a damaged file still holds the log back): every entry still live in
segment k is then covered by every kept snapshot, and each kept snapshot can be joined
with the log that remains.  That is what lets boot fall back to an older snapshot when
the newest is damaged, at the cost of keeping up to ``snapshots_keep`` snapshot
intervals of log (plus at most one segment) on disk (docs/architecture.md §4,
"Snapshot fallback").

*Recovery* (`SyncWal.open`) is `felix.storage.recovery`: segments are replayed in
order, a torn tail of the last segment is truncated, any other defect raises
`CorruptLogError`, and the log is joined with the newest intact snapshot it continues
into a `BootState`; damaged snapshot files are logged, left in place and listed in
`SyncWal.boot_report`.

The sync `SyncWal` does only file operations (testable without trio); `SegmentedWal` is
the thin async facade that runs them in a worker thread so the event loop never blocks
on the disk.
"""

from __future__ import annotations

import functools
import logging
import posixpath
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final, Generic, TypeVar

import trio

from felix.proto.raft_messages import ConfState, Entry, SnapshotMeta
from felix.raft.ready import Ready
from felix.raft.types import BootState, HardState
from felix.storage.errors import CorruptLogError, WalFailedError
from felix.storage.files import Files, OsFiles, append_all
from felix.storage.recovery import (
    BootReport,
    ReplayedLog,
    Segment,
    join_snapshot,
    list_segments,
    replay_segment,
)
from felix.storage.recovery import iter_records as iter_records  # `felix wal dump`
from felix.storage.segment_format import (
    BatchRecord,
    StateRecord,
    encode_batch,
    encode_segment_header,
    encode_state,
    segment_name,
)
from felix.storage.snapshots import SNAPSHOTS_KEEP_DEFAULT, SnapshotStore

if TYPE_CHECKING:
    import outcome  # trio's result type (start_thread_soon delivers one)

logger = logging.getLogger("felix.storage")

WAL_DIR: Final = "wal"
SNAP_DIR: Final = "snap"
SEGMENT_BYTES_MAX_DEFAULT: Final = 64 * 1024 * 1024

T = TypeVar("T")


class SyncWal:
    """The WAL's file operations, synchronous (see the module docstring).

    Call `open` once; then `save` (or `write` + `sync`) per `Ready`, `compact` after a
    snapshot.  After any failed disk operation the instance refuses further use
    (`WalFailedError`): the node must restart and recover from what is on disk.
    """

    def __init__(
        self,
        directory: str,
        *,
        files: Files | None = None,
        segment_bytes_max: int = SEGMENT_BYTES_MAX_DEFAULT,
        snapshots_keep: int = SNAPSHOTS_KEEP_DEFAULT,
    ) -> None:
        self.files: Files = files if files is not None else OsFiles()
        self.directory = directory
        self.wal_dir = posixpath.join(directory, WAL_DIR)
        self.snapshots = SnapshotStore(
            posixpath.join(directory, SNAP_DIR), self.files, snapshots_keep
        )
        self.segment_bytes_max = segment_bytes_max
        self._segments: list[Segment] = []
        self._active_bytes = 0
        self._hard_state = HardState()
        self._base = (0, 0)
        self._last_index = 0
        self._dirty = False
        self._failed: BaseException | None = None
        self.boot_report = BootReport()  # what `open` booted from (and passed over)

    # -- boot ----------------------------------------------------------------------------

    def open(self, conf: ConfState) -> BootState:
        """Replay the log (repairing a torn tail) and return what the Raft core starts from.

        ``conf`` is the bootstrap membership, used when no snapshot overrides it.
        """
        return self._guarded(self._open, conf)

    def _open(self, conf: ConfState) -> BootState:
        self.files.makedirs(self.wal_dir)
        self.snapshots.open()
        segments = list_segments(self.files, self.wal_dir)
        log = self._replay(segments) if segments else None
        if log is None:
            return self._init_fresh(conf)
        boot, reset, self.boot_report = join_snapshot(log, self.snapshots, conf, self.wal_dir)
        _log_boot_report(self.boot_report, boot)
        self._hard_state, self._base = log.hard_state, (log.base_index, log.base_term)
        self._last_index = log.last_index
        self._active_bytes = self.files.size(self._segments[-1].path)
        if reset is not None:
            self.write(reset.hard_state, (), None, marker=reset.snapshot)
            self.sync()
        return boot

    def _init_fresh(self, conf: ConfState) -> BootState:
        if self.snapshots.names():
            raise CorruptLogError(
                self.wal_dir,
                None,
                "no WAL segments, but snapshots exist: the term and vote are lost",
            )
        self._segments = []
        self._start_segment(0, 1)
        return BootState(HardState(), conf)

    def _replay(self, segments: list[Segment]) -> ReplayedLog | None:
        """Read every segment in order; repair or refuse defects (see module docstring)."""
        log: ReplayedLog | None = None
        self._segments = list(segments)
        for position, segment in enumerate(segments):
            is_last = position == len(segments) - 1
            replayed = replay_segment(self.files, segment, log, repair=is_last)
            if replayed is None:  # only possible for the last segment
                self._drop_torn_segment(segment)
                self._segments.pop()
                return log
            log = replayed
        return log

    def _drop_torn_segment(self, segment: Segment) -> None:
        """A last segment whose STATE record never became durable: a torn rotation."""
        self.files.remove(segment.path)
        self.files.fsync_dir(self.wal_dir)

    # -- writing -------------------------------------------------------------------------

    def save(
        self,
        hard_state: HardState | None = None,
        entries: Sequence[Entry] = (),
        snapshot: tuple[SnapshotMeta, bytes] | None = None,
    ) -> None:
        """Persist one batch with one fsync; returns only when it is durable."""
        self.write(hard_state, entries, snapshot)
        self.sync()

    def save_ready(self, ready: Ready) -> None:
        """Persist what ``ready`` asks for, in its order, then honour ``compact_to``."""
        self.save(ready.hard_state, ready.entries, ready.snapshot)
        if ready.compact_to is not None:
            self.compact(ready.compact_to)

    def write(
        self,
        hard_state: HardState | None = None,
        entries: Sequence[Entry] = (),
        snapshot: tuple[SnapshotMeta, bytes] | None = None,
        *,
        marker: tuple[int, int] | None = None,
    ) -> None:
        """Append one batch record without fsync (a crash may lose it until `sync`).

        A ``snapshot`` is saved to the snapshot store first (durably: its own fsyncs).
        """
        self._check_usable()
        if snapshot is not None:
            meta, data = snapshot
            self._guarded(self.snapshots.save, meta, data)
            marker = (meta.index, meta.term)
        if hard_state is None and not entries and marker is None:
            return
        self._check_batch(entries, marker)
        record = encode_batch(BatchRecord(marker, entries, hard_state))
        self._guarded(self._append, record)
        if marker is not None:
            self._base, self._last_index = marker, marker[0]
        if entries:
            self._last_index = entries[-1].index
        if hard_state is not None:
            self._hard_state = hard_state

    def sync(self) -> None:
        """Make every written batch durable (one fsync)."""
        self._check_usable()
        if self._dirty:
            self._guarded(self.files.fsync, self._segments[-1].path)
            self._dirty = False

    def _check_batch(self, entries: Sequence[Entry], marker: tuple[int, int] | None) -> None:
        base, last = (marker[0], marker[0]) if marker else (self._base[0], self._last_index)
        if entries and not base < entries[0].index <= last + 1:
            raise ValueError(
                f"entries from {entries[0].index} do not fit a log with snapshot {base} "
                f"and last index {last}"
            )

    def _append(self, record: bytes) -> None:
        if self._active_bytes >= self.segment_bytes_max:
            self._rotate()
        append_all(self.files, self._segments[-1].path, record)
        self._active_bytes += len(record)
        self._dirty = True

    def _rotate(self) -> None:
        """Seal the active segment (fsync), then start the next one durably."""
        active = self._segments[-1]
        if self._dirty:
            self.files.fsync(active.path)
            self._dirty = False
        self._start_segment(active.seq + 1, self._last_index + 1)

    def _start_segment(self, seq: int, first_index: int) -> None:
        path = posixpath.join(self.wal_dir, segment_name(seq, first_index))
        state = StateRecord(self._hard_state, *self._base, first_index - 1)
        head = encode_segment_header(seq, first_index) + encode_state(state)
        self.files.create(path)
        append_all(self.files, path, head)
        self.files.fsync(path)
        self.files.fsync_dir(self.wal_dir)
        self._segments.append(Segment(seq, first_index, path))
        self._active_bytes = len(head)

    # -- compaction ----------------------------------------------------------------------

    def compact(self, index: int) -> int:
        """Delete segments holding only entries up to ``index``; returns how many.

        ``index`` is capped at the oldest kept snapshot on disk, so nothing is deleted that
        only the log holds, and every kept snapshot can still be joined with the log.
        """
        return self._guarded(self._compact, index)

    def _compact(self, index: int) -> int:
        oldest = self.snapshots.oldest_index()
        if oldest is None:
            return 0
        index = min(index, oldest)
        count = 0
        while (
            count + 1 < len(self._segments) and self._segments[count + 1].first_index - 1 <= index
        ):
            count += 1
        for segment in self._segments[:count]:
            self.files.remove(segment.path)
        if count:
            self.files.fsync_dir(self.wal_dir)
            del self._segments[:count]
        return count

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def last_index(self) -> int:
        return self._last_index

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    def close(self) -> None:
        self.files.close()

    @property
    def failed(self) -> BaseException | None:
        """The disk error that made this WAL unusable, if any (for /livez)."""
        return self._failed

    def _check_usable(self) -> None:
        if self._failed is not None:
            raise WalFailedError(
                f"{self.wal_dir}: an earlier disk operation failed ({self._failed!r}); "
                "restart the node to recover from what is on disk"
            ) from self._failed

    def _guarded(self, fn: Callable[..., T], *args: object) -> T:
        """Run a disk operation; any failure makes this instance unusable (fsyncgate)."""
        self._check_usable()
        try:
            return fn(*args)
        except ValueError:
            raise  # a caller's mistake, refused before touching the disk
        except BaseException as exc:
            self._failed = exc
            raise


def _log_boot_report(report: BootReport, boot: BootState) -> None:
    """Damaged snapshot files, loudly: each with its offset and problem."""
    for damaged in report.damaged:
        logger.error(
            "snapshot file damaged, not used and left in place: %s at byte offset %s: %s",
            damaged.path,
            damaged.offset,
            damaged.problem,
        )
    if report.fell_back:
        used = f"snapshot {report.snapshot} plus" if report.snapshot else "the log alone:"
        logger.error(
            "booting from %s %d log entries instead of the newest snapshot %s "
            "(the same state: the log holds every entry after the oldest kept snapshot); "
            "check this disk: a snapshot file never changes after it is written",
            used,
            len(boot.entries),
            report.newest,
        )


# ---------------------------------------------------------------------------------------
# The async facade


class SegmentedWal:
    """Async facade over a `SyncWal`: one disk operation at a time, in a worker thread.

    ``offload=False`` runs operations inline (after a checkpoint): for in-memory backends
    under `trio.testing.MockClock`, where a thread would let the clock jump mid-operation.
    A cancelled call still completes its disk work (threads are not abandoned), so a batch
    is never half-acknowledged.
    """

    def __init__(self, core: SyncWal, *, offload: bool = True) -> None:
        self.core = core
        self.offload = offload
        self._lock = trio.Lock()

    @classmethod
    async def open(
        cls,
        directory: str,
        conf: ConfState,
        *,
        segment_bytes_max: int = SEGMENT_BYTES_MAX_DEFAULT,
        snapshots_keep: int = SNAPSHOTS_KEEP_DEFAULT,
    ) -> tuple[SegmentedWal, BootState]:
        """Open (or create) the WAL in ``directory`` on the real disk and replay it."""
        core = SyncWal(
            directory, segment_bytes_max=segment_bytes_max, snapshots_keep=snapshots_keep
        )
        wal = cls(core)
        boot = await wal._run(core.open, conf)
        return wal, boot

    async def save(self, ready: Ready) -> None:
        """Persist ``ready`` (snapshot, entries, hard state; one fsync), then compact."""
        await self._run(self.core.save_ready, ready)

    def start_save(self, ready: Ready) -> PendingSave | None:
        """Start `save` in the worker thread now and return at once; the caller must
        ``await`` the result's `PendingSave.wait` (on the same task, before anything
        else on this WAL).  None if that is not possible right now (another operation
        holds the WAL, or ``offload`` is off): then call `save` instead.

        The leader starts its fsync before it sends the AppendEntries of the same
        Ready: on a loaded machine the first send can wake a follower that takes the
        leader's CPU, and the leader's own write should not wait for that."""
        if not self.offload or self._lock.locked():
            return None
        self._lock.acquire_nowait()
        return WorkerCall(functools.partial(self.core.save_ready, ready), self._lock.release)

    async def append(
        self,
        hard_state: HardState | None = None,
        entries: Sequence[Entry] = (),
        snapshot: tuple[SnapshotMeta, bytes] | None = None,
    ) -> None:
        await self._run(self.core.save, hard_state, entries, snapshot)

    async def compact(self, index: int) -> int:
        return await self._run(self.core.compact, index)

    async def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Durably store a snapshot the state machine took (before `compact`)."""
        await self._run(self.core.snapshots.save, meta, data)

    async def read_snapshot_chunk(self, meta: SnapshotMeta, offset: int, size: int) -> bytes:
        return await self._run(self.core.snapshots.read_chunk, meta, offset, size)

    async def aclose(self) -> None:
        await self._run(self.core.close)

    @trio.lowlevel.enable_ki_protection  # no KeyboardInterrupt between acquire and try
    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        if not self.offload:
            async with self._lock:
                await trio.lowlevel.checkpoint()
                return fn(*args)
        # A call cancelled before it starts does nothing.  Once it holds the lock the disk
        # work is uncancellable.  The uncontended path skips `trio.Lock.acquire`'s own
        # schedule point (the thread hop is one), which saves a pass of the run loop.
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            self._lock.acquire_nowait()  # fails if another call holds or awaits it (FIFO)
        except trio.WouldBlock:
            await self._lock.acquire()
        try:
            return await _in_worker_thread(functools.partial(fn, *args))
        finally:
            self._lock.release()


class WorkerCall(Generic[T]):
    """``job()`` started in one of trio's cached worker threads now, awaited later with
    `wait` (by one task); uncancellable once started.

    `trio.to_thread.run_sync` without its capacity limiter, context copy and cancellation
    machinery, which cost ~15 us per call: a fsync is ~150 us, and a `SegmentedWal` runs
    one operation at a time anyway (its lock).  Cancellation is refused (`Abort.FAILED`)
    as ``to_thread`` does by default: the disk work always finishes and its outcome is
    returned, so a batch is never half-acknowledged.  ``release`` runs when `wait` ends.
    """

    def __init__(self, job: Callable[[], T], release: Callable[[], None] | None = None) -> None:
        self._release = release
        self._outcome: outcome.Outcome[T] | None = None
        self._waiter: trio.lowlevel.Task | None = None
        token = trio.lowlevel.current_trio_token()

        def deliver(result: outcome.Outcome[T]) -> None:  # in the worker thread
            token.run_sync_soon(self._done, result)

        trio.lowlevel.start_thread_soon(job, deliver)

    def _done(self, result: outcome.Outcome[T]) -> None:  # on the Trio thread
        if self._waiter is not None:
            trio.lowlevel.reschedule(self._waiter, result)
        else:
            self._outcome = result

    async def wait(self) -> T:
        try:
            if self._outcome is None:
                self._waiter = trio.lowlevel.current_task()
                value: T = await trio.lowlevel.wait_task_rescheduled(_refuse_abort)
                return value
            await trio.lowlevel.cancel_shielded_checkpoint()
            return self._outcome.unwrap()
        finally:
            if self._release is not None:
                self._release()


PendingSave = WorkerCall[None]


async def _in_worker_thread(job: Callable[[], T]) -> T:
    """``job()`` in a worker thread, awaited at once (see `WorkerCall`)."""
    return await WorkerCall(job).wait()


def _refuse_abort(_: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED
