"""The simulation's disk: the real WAL on simulated files, and a model to check it against.

Theory of operation
-------------------
Each simulated node persists through the production WAL (`felix.storage.memory_wal.
MemoryWal`: segment format, group commit, snapshot store, recovery) on `SimFiles`, a
`MemoryFiles` that also counts how many appended bytes are not yet fsynced.  The driver
writes a `Ready` at once (``write``, no fsync), calls ``sync`` when the simulated fsync
completes, and on a crash calls ``MemoryWal.crash`` -- losing the unsynced bytes, or
keeping a prefix of them (a torn tail) -- and ``open`` to recover.

`SimDisk` is the *model* of what that WAL holds durably: an independent, obviously
correct picture (hard state, newest snapshot, contiguous log) fed the same batches.  A
batch counts only once its fsync completes (`complete_oldest`).  It is what the checkers
consult for "durable" (persist before send), and every recovery is compared with it
(`expected_boot`): the WAL must give back exactly the model's image, or -- when a crash
happened to keep the whole unsynced batch record -- the image with that batch applied.

Two details follow the WAL's contract.  A snapshot in a batch is saved to the snapshot
store before the batch record is written, durably on its own, so a crash that loses the
record keeps the snapshot (the log after it survives only if it holds the snapshot's last
entry with the same term, Raft §7).  And booting from a snapshot raises the hard state to
cover it (its entries are committed, its term has been seen).

The model keeps its log contiguous after its snapshot; a write that would leave a gap,
or a compaction past the durable snapshot, is a driver bug and raises `DiskContractError`.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from felix.proto.raft_messages import ConfState, Entry, SnapshotMeta
from felix.raft.types import BootState, HardState
from felix.storage.files import MemoryFiles, UnsyncedMode

__all__ = ["CrashLoss", "DiskContractError", "DiskWrite", "SimDisk", "SimFiles"]


class DiskContractError(AssertionError):
    """A write the WAL contract forbids (a gap in the log, compaction past the snapshot)."""


class SimFiles(MemoryFiles):
    """`MemoryFiles` that knows how many appended bytes each file holds unsynced."""

    def __init__(self) -> None:
        super().__init__()
        self._unsynced: dict[str, int] = {}

    @property
    def unsynced_bytes(self) -> int:
        return sum(self._unsynced.values())

    def unsynced_files(self) -> int:
        return sum(1 for count in self._unsynced.values() if count)

    def append(self, path: str, data: bytes | memoryview) -> int:
        count = super().append(path, data)
        self._unsynced[path] = self._unsynced.get(path, 0) + count
        return count

    def fsync(self, path: str) -> None:
        super().fsync(path)
        self._unsynced.pop(path, None)

    def truncate(self, path: str, size: int) -> None:
        super().truncate(path, size)
        self._unsynced.pop(path, None)  # only recovery truncates, and fsyncs right after

    def rename(self, src: str, dst: str) -> None:
        super().rename(src, dst)
        moved = self._unsynced.pop(src, 0)
        if moved:
            self._unsynced[dst] = moved

    def remove(self, path: str) -> None:
        super().remove(path)
        self._unsynced.pop(path, None)

    def crash(
        self,
        unsynced: UnsyncedMode = "lose",
        *,
        torn_bytes: int | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().crash(unsynced, torn_bytes=torn_bytes, rng=rng)
        self._unsynced.clear()


@dataclass(frozen=True, slots=True)
class DiskWrite:
    snapshot: tuple[SnapshotMeta, bytes] | None = None
    entries: tuple[Entry, ...] = ()
    hard_state: HardState | None = None
    compact_to: int | None = None


@dataclass(frozen=True, slots=True)
class CrashLoss:
    """What a crash did to the pending (unsynced) batches."""

    writes_lost: int
    writes_kept: int


class SimDisk:
    def __init__(self) -> None:
        self.hard_state = HardState()
        self.snapshot: tuple[SnapshotMeta, bytes] | None = None
        self.log: list[Entry] = []
        self.pending: deque[DiskWrite] = deque()

    @property
    def log_base(self) -> int:
        """Index of the entry just before ``log[0]`` (the durable snapshot's index)."""
        return self.snapshot[0].index if self.snapshot else 0

    @property
    def last_index(self) -> int:
        return self.log[-1].index if self.log else self.log_base

    def term_at(self, index: int) -> int | None:
        """Durable term of ``index``, or None if the durable image does not hold it."""
        base = self.log_base
        if index == base:
            return self.snapshot[0].term if self.snapshot else 0
        if base < index <= self.last_index:
            return self.log[index - base - 1].term
        return None

    def submit(self, write: DiskWrite) -> None:
        self.pending.append(write)

    def complete_oldest(self) -> DiskWrite:
        """The oldest pending write's fsync finished: make it durable."""
        write = self.pending.popleft()
        self._apply(write)
        return write

    def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """Durably store a snapshot the node took itself (temp file, fsync, rename)."""
        self._install_snapshot(meta, data)

    def crash(self, *, writes_kept: int = 0) -> CrashLoss:
        """Power loss: the oldest ``writes_kept`` pending writes made it to disk whole
        (their fsync never returned, the bytes got there anyway); of the others only the
        snapshot survives (the store saved it durably before the batch was written)."""
        kept = min(writes_kept, len(self.pending))
        for i, write in enumerate(self.pending):
            if i < kept:
                self._apply(write)
            elif write.snapshot is not None:
                self._install_snapshot(*write.snapshot)
        lost = len(self.pending) - kept
        self.pending.clear()
        return CrashLoss(lost, kept)

    def boot_state(self, conf: ConfState) -> BootState:
        return BootState(self.hard_state, conf, self.snapshot, tuple(self.log))

    def expected_boot(self, conf: ConfState) -> BootState:
        """What a WAL holding exactly this durable image must recover: the hard state
        raised to cover the snapshot, the snapshot's membership over ``conf``."""
        if self.snapshot is None:
            return self.boot_state(conf)
        meta = self.snapshot[0]
        hs = self.hard_state
        commit = max(hs.commit, meta.index)
        if meta.term > hs.term:
            hs = HardState(meta.term, None, commit)
        else:
            hs = HardState(hs.term, hs.vote, commit)
        return BootState(hs, meta.conf, self.snapshot, tuple(self.log))

    def _apply(self, write: DiskWrite) -> None:
        if write.snapshot is not None:
            self._install_snapshot(*write.snapshot)
        if write.entries:
            self._append(write.entries)
        if write.hard_state is not None:
            self.hard_state = write.hard_state
        if write.compact_to is not None:
            self._compact(write.compact_to)

    def _install_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """A snapshot replaces the log up to its index; a matching suffix survives."""
        keep: list[Entry] = []
        if self.term_at(meta.index) == meta.term:
            keep = [e for e in self.log if e.index > meta.index]
        if self.snapshot is None or meta.index >= self.snapshot[0].index:
            self.snapshot = (meta, data)
            self.log = keep

    def _append(self, entries: tuple[Entry, ...]) -> None:
        first = entries[0].index
        base = self.log_base
        if first <= base:
            entries = tuple(e for e in entries if e.index > base)
            if not entries:
                return
            first = entries[0].index
        if first > self.last_index + 1:
            raise DiskContractError(f"write at {first} leaves a gap after {self.last_index}")
        del self.log[first - base - 1 :]
        self.log.extend(entries)

    def _compact(self, index: int) -> None:
        if index > self.log_base:
            raise DiskContractError(
                f"compaction to {index} past the durable snapshot at {self.log_base}"
            )
