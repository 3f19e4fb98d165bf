"""A simulated disk for one node: writes become durable only when their fsync completes.

Theory of operation
-------------------
The driver hands each `Ready`'s persistence work to `SimDisk.submit` as one `DiskWrite`
(group commit).  The write sits in a volatile queue until the simulation's event queue
says its fsync finished (`complete_oldest`); only then is it applied to the durable image
(hard state, snapshot, log).  `crash` throws the queue away, optionally keeping a torn
prefix of the oldest write's records (snapshot, then entries, never the hard state that
comes last), which is what a WAL recovering a torn tail ends up with.  `boot_state` reads
the durable image back as the core's `BootState`.

The durable log is kept contiguous after the durable snapshot; a write that would leave
a gap is a bug in whoever produced it and raises `DiskContractError`.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from felix.proto.raft_messages import ConfState, Entry, SnapshotMeta
from felix.raft.types import BootState, HardState

__all__ = ["CrashLoss", "DiskContractError", "DiskWrite", "SimDisk"]


class DiskContractError(AssertionError):
    """A write the WAL contract forbids (a gap in the log, compaction past the snapshot)."""


@dataclass(frozen=True, slots=True)
class DiskWrite:
    snapshot: tuple[SnapshotMeta, bytes] | None = None
    entries: tuple[Entry, ...] = ()
    hard_state: HardState | None = None
    compact_to: int | None = None


@dataclass(frozen=True, slots=True)
class CrashLoss:
    """What a crash threw away: whole writes, and how many entries a torn tail kept."""

    writes_lost: int
    torn_entries_kept: int


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

    def crash(self, rng: random.Random, torn_write_rate: float) -> CrashLoss:
        """Lose every unsynced write; maybe keep a torn prefix of the oldest one."""
        lost = len(self.pending)
        kept = 0
        if self.pending and rng.random() < torn_write_rate:
            oldest = self.pending[0]
            kept = rng.randint(0, len(oldest.entries))
            self._apply(DiskWrite(oldest.snapshot, oldest.entries[:kept]))
        self.pending.clear()
        return CrashLoss(lost, kept)

    def boot_state(self, conf: ConfState) -> BootState:
        return BootState(self.hard_state, conf, self.snapshot, tuple(self.log))

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
