"""Reading the write-ahead log back: segment listing, replay, repair, and the join with
the newest usable snapshot (the recovery half of `felix.storage.segmented_wal`).

*Recovery* (`felix.storage.segmented_wal.SyncWal.open`).  Segments are read in sequence
order; a gap in the sequence numbers is refused.  Each record's checksum is verified.  A
defect that a crash can leave (record cut short, zero-filled tail, bad checksum on the
very last record) is truncated, but only at the tail of the last segment: those bytes
were never acknowledged.  Any other defect -- a bad checksum before the tail, a damaged
older segment, a malformed payload -- raises `CorruptLogError` naming the file, the
offset and what to do.  The replayed log is then joined with the newest intact snapshot
that it continues into a `BootState` (`join_snapshot`: a damaged newer snapshot is
reported in the `BootReport` and left in place; docs/architecture.md §4, "Snapshot
fallback").

`iter_records` reads the same records for inspection (``felix wal dump``) and repairs
nothing.
"""

from __future__ import annotations

import itertools
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field

from felix.proto.raft_messages import ConfState, Entry, SnapshotMeta
from felix.raft.types import BootState, HardState
from felix.storage.errors import CorruptLogError, CorruptSnapshotError, NoUsableSnapshotError
from felix.storage.files import Files
from felix.storage.segment_format import (
    BATCH_TYPES,
    PAYLOAD_ERRORS,
    SEGMENT_HEADER_BYTES,
    BatchRecord,
    FormatError,
    RecordScanner,
    RecordType,
    SegmentHeader,
    StateRecord,
    decode_any_batch,
    decode_segment_header,
    decode_state,
    parse_segment_name,
)
from felix.storage.snapshots import SnapshotStore, snapshot_name


@dataclass(slots=True)
class ReplayedLog:
    """The log as the records describe it: entries ``first..last`` after a snapshot base.

    Entries ``base_index+1 .. first-1`` were in segments deleted by compaction.
    """

    hard_state: HardState = field(default_factory=HardState)
    base_index: int = 0
    base_term: int = 0
    first: int = 1
    entries: list[Entry] = field(default_factory=list)

    @property
    def last_index(self) -> int:
        return self.first + len(self.entries) - 1

    def start(self, state: StateRecord) -> None:
        """Begin from the first segment's STATE record."""
        self.hard_state = state.hard_state
        self.base_index, self.base_term = state.base_index, state.base_term
        self.first = state.last_index + 1
        self.entries = []

    def check_continues(self, state: StateRecord) -> str | None:
        """A later segment's STATE must describe exactly the log replayed so far."""
        ours = (self.hard_state, self.base_index, self.base_term, self.last_index)
        theirs = (state.hard_state, state.base_index, state.base_term, state.last_index)
        if ours != theirs:
            return f"segment start state {theirs} disagrees with the log before it {ours}"
        return None

    def apply(self, batch: BatchRecord) -> str | None:
        """Apply one batch in the `Ready` order; returns a problem, or None."""
        if batch.snapshot is not None:
            index, term = batch.snapshot
            if index < self.base_index:
                return f"snapshot marker {index} is older than the log base {self.base_index}"
            self.base_index, self.base_term = index, term
            self.first, self.entries = index + 1, []
        if batch.entries:
            start = batch.entries[0].index
            if start <= self.base_index:
                return f"entries from {start} overwrite snapshot {self.base_index}"
            if start > self.last_index + 1:
                return f"entries from {start} leave a gap after {self.last_index}"
            if start < self.first:  # overwrites entries held only by deleted segments
                self.first, self.entries = start, []
            else:
                del self.entries[start - self.first :]
            self.entries.extend(batch.entries)
        if batch.hard_state is not None:
            self.hard_state = batch.hard_state
        return None


@dataclass(frozen=True, slots=True)
class Segment:
    seq: int
    first_index: int
    path: str


def list_segments(files: Files, wal_dir: str) -> list[Segment]:
    """Segment files sorted by sequence number; a gap in the sequence is refused."""
    found: list[tuple[SegmentHeader, str]] = [
        (parsed, name)
        for name in files.listdir(wal_dir)
        if (parsed := parse_segment_name(name)) is not None
    ]
    found.sort(key=lambda item: item[0].seq)
    segments = [Segment(h.seq, h.first_index, posixpath.join(wal_dir, n)) for h, n in found]
    for before, after in itertools.pairwise(segments):
        if after.seq != before.seq + 1:
            raise CorruptLogError(
                after.path,
                None,
                f"segment sequence jumps from {before.seq} to {after.seq}: "
                "a segment is missing or duplicated",
            )
    return segments


def replay_segment(
    files: Files, segment: Segment, log: ReplayedLog | None, *, repair: bool
) -> ReplayedLog | None:
    """Apply one segment's records to ``log`` (None: this is the first segment).

    With ``repair`` (the last segment) a torn tail is truncated durably, and None is
    returned if the segment holds no durable STATE record (a torn rotation).
    """
    buf = files.read(segment.path)
    try:
        header = decode_segment_header(buf)
    except FormatError as exc:
        if exc.torn and repair:
            return None
        raise CorruptLogError(segment.path, exc.offset, exc.problem) from None
    if (header.seq, header.first_index) != (segment.seq, segment.first_index):
        raise CorruptLogError(segment.path, 0, f"header {header} disagrees with the file name")
    scanner = RecordScanner(buf, SEGMENT_HEADER_BYTES)
    records = iter(scanner)
    first = next(records, None)
    if first is None:
        _handle_defect(files, segment, scanner, repair)
        if repair:
            return None
        raise CorruptLogError(segment.path, SEGMENT_HEADER_BYTES, "segment has no STATE record")
    log = _apply_first(segment, first, log)
    for offset, record_type, payload in records:
        problem = _apply_record(log, record_type, payload)
        if problem is not None:
            raise CorruptLogError(segment.path, offset, problem)
    _handle_defect(files, segment, scanner, repair)
    return log


def _apply_first(
    segment: Segment, first: tuple[int, int, memoryview], log: ReplayedLog | None
) -> ReplayedLog:
    offset, record_type, payload = first
    if record_type != RecordType.STATE:
        raise CorruptLogError(segment.path, offset, "a segment must start with a STATE record")
    try:
        state = decode_state(payload)
    except PAYLOAD_ERRORS as exc:
        raise CorruptLogError(segment.path, offset, f"malformed STATE record: {exc}") from None
    if state.last_index + 1 != segment.first_index:
        raise CorruptLogError(segment.path, offset, "STATE record disagrees with the file name")
    if log is None:
        log = ReplayedLog()
        log.start(state)
        return log
    problem = log.check_continues(state)
    if problem is not None:
        raise CorruptLogError(segment.path, offset, problem)
    return log


def _apply_record(log: ReplayedLog, record_type: int, payload: memoryview) -> str | None:
    if record_type not in BATCH_TYPES:
        return "a STATE record in the middle of a segment"
    try:
        batch = decode_any_batch(record_type, payload)
    except PAYLOAD_ERRORS as exc:
        return f"malformed {RecordType(record_type).name} record: {exc}"
    return log.apply(batch)


def _handle_defect(files: Files, segment: Segment, scanner: RecordScanner, repair: bool) -> None:
    defect = scanner.defect
    if defect is None:
        return
    if not (defect.torn and repair):
        raise CorruptLogError(segment.path, defect.offset, defect.problem)
    files.truncate(segment.path, defect.offset)
    files.fsync(segment.path)


@dataclass(frozen=True, slots=True)
class Reset:
    hard_state: HardState
    snapshot: tuple[int, int]


@dataclass(frozen=True, slots=True)
class BootReport:
    """Which snapshot boot used and which kept snapshot files it found damaged
    (docs/architecture.md §4, "Snapshot fallback").

    ``snapshot`` is the file booted from (None: the log alone, or a fresh node);
    ``newest`` the newest snapshot file on disk; ``damaged`` every kept snapshot file that
    failed its checks, newest first (each left in place, never used).
    """

    snapshot: str | None = None
    newest: str | None = None
    damaged: tuple[CorruptSnapshotError, ...] = ()
    replayed: int = 0  # log entries after the boot snapshot

    @property
    def fell_back(self) -> bool:
        """True when boot did not use the newest snapshot file."""
        return self.snapshot != self.newest


def join_snapshot(
    log: ReplayedLog, store: SnapshotStore, conf: ConfState, wal_dir: str
) -> tuple[BootState, Reset | None, BootReport]:
    """Combine the replayed log with the newest usable snapshot into a `BootState`.

    Every kept snapshot is checked, newest first.  Boot uses the newest one that is
    intact and that the log continues: the log holds every entry after the oldest kept
    snapshot (docs/architecture.md §4, "Snapshot fallback"), so when the newest file is
    damaged the one before it plus the log gives the same state.  When every snapshot is
    damaged the log alone serves if it still starts at index 1.  Otherwise the node
    refuses to start with `NoUsableSnapshotError`, naming each file and its problem.

    The snapshot used may be ahead of the log (one saved just before a crash): the log's
    entries after it are kept only if the log holds the snapshot's last entry with the
    same term (Raft §7); otherwise they belong to a history the snapshot replaced, and
    the returned `Reset` tells the caller to restart the log after it.
    """
    names = store.names()
    newest = names[-1] if names else None
    damaged: list[CorruptSnapshotError] = []
    chosen: tuple[str, tuple[SnapshotMeta, bytes]] | None = None
    too_old: tuple[SnapshotMeta, str] | None = None  # the newest intact one, not joinable
    for name in reversed(names):
        try:
            snap = store.load(name)
        except CorruptSnapshotError as exc:
            damaged.append(exc)
            continue
        if chosen is None and too_old is None:
            if _older_than_log(log, snap[0]):
                too_old = (snap[0], store.path_of(name))
            else:
                chosen = (name, snap)
    if chosen is not None:
        name, snap = chosen
        boot, reset = _boot_from(log, snap)
        return boot, reset, BootReport(name, newest, tuple(damaged), len(boot.entries))
    log_is_whole = not log.base_index and log.first == 1
    if log_is_whole:  # no snapshot, or every one damaged: the log alone is a chain
        boot = BootState(log.hard_state, conf, None, tuple(log.entries))
        return boot, None, BootReport(None, newest, tuple(damaged), len(boot.entries))
    if not damaged:
        detail = (
            f"the newest snapshot ({too_old[0].index}) is older than the log's first entry "
            f"({log.first}) or base ({log.base_index}): a snapshot or segment is missing"
            if too_old is not None
            else f"log entries before {log.first} are missing (snapshot {log.base_index} or "
            f"a segment), and {store.directory} holds no snapshot covering them"
        )
        raise CorruptLogError(wal_dir, None, detail)
    raise NoUsableSnapshotError(
        store.directory, tuple(damaged), _chain_problems(log, store, too_old, wal_dir)
    )


def _older_than_log(log: ReplayedLog, meta: SnapshotMeta) -> bool:
    """The log does not continue ``meta``: it restarts after a later snapshot (received
    from a leader), or its entries just after ``meta`` were compacted away."""
    return meta.index < log.base_index or meta.index < log.first - 1


def _chain_problems(
    log: ReplayedLog,
    store: SnapshotStore,
    too_old: tuple[SnapshotMeta, str] | None,
    wal_dir: str,
) -> tuple[str, ...]:
    """Why no intact snapshot (nor the log alone) can replace the damaged ones."""
    problems = []
    if log.base_index:
        base = snapshot_name(log.base_index, log.base_term)
        restart = (
            f"the log ({wal_dir}) restarts after snapshot {log.base_index} (term "
            f"{log.base_term}, received from the leader)"
        )
        if base not in store.names():
            restart += f" and {store.path_of(base)} is missing"
        problems.append(restart)
    if too_old is not None:
        meta, path = too_old
        problems.append(f"{path} is intact but the log does not continue it (index {meta.index})")
    held = f"entries {log.first}..{log.last_index}" if log.entries else "no entries"
    compacted = "" if log.base_index else f", those before {log.first} were compacted"
    problems.append(f"the log ({wal_dir}) holds {held}{compacted}")
    return tuple(problems)


def _boot_from(
    log: ReplayedLog, snap: tuple[SnapshotMeta, bytes]
) -> tuple[BootState, Reset | None]:
    meta = snap[0]
    hs = _hard_state_after(log.hard_state, meta)
    offset = meta.index - log.first
    if meta.index > log.last_index:
        conflict = True  # the snapshot is ahead of everything the log holds
    elif offset >= 0:
        conflict = log.entries[offset].term != meta.term
    else:
        conflict = False  # its last entry was in a compacted segment: same history
    if conflict:
        return BootState(hs, meta.conf, snap, ()), Reset(hs, (meta.index, meta.term))
    return BootState(hs, meta.conf, snap, tuple(log.entries[offset + 1 :])), None


def _hard_state_after(hs: HardState, meta: SnapshotMeta) -> HardState:
    """A snapshot's entries are committed; its term is a term this node has seen."""
    commit = max(hs.commit, meta.index)
    if meta.term > hs.term:
        return HardState(meta.term, None, commit)
    return HardState(hs.term, hs.vote, commit)


def iter_records(files: Files, wal_dir: str) -> Iterator[tuple[str, int, int, object]]:
    """Every record in every segment as ``(segment path, offset, type, decoded)``.

    For inspection (``felix wal dump``): nothing is repaired; a defect raises
    `CorruptLogError` after the good records before it were yielded.
    """
    for segment in list_segments(files, wal_dir):
        buf = files.read(segment.path)
        try:
            decode_segment_header(buf)
        except FormatError as exc:
            raise CorruptLogError(segment.path, exc.offset, exc.problem) from None
        scanner = RecordScanner(buf, SEGMENT_HEADER_BYTES)
        for offset, record_type, payload in scanner:
            try:
                decoded: object = (
                    decode_state(payload)
                    if record_type == RecordType.STATE
                    else decode_any_batch(record_type, payload)
                )
            except PAYLOAD_ERRORS as exc:
                raise CorruptLogError(segment.path, offset, f"malformed record: {exc}") from None
            yield segment.path, offset, record_type, decoded
        if scanner.defect is not None:
            kind = "torn tail (recovery would truncate it)" if scanner.defect.torn else "corrupt"
            raise CorruptLogError(
                segment.path,
                scanner.defect.offset,
                f"{scanner.defect.problem} ({kind})",
                "inspect the records above; recovery decides whether this node may start",
            )
