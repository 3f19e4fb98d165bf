"""The simulation's disk: the `SimDisk` model, `SimFiles`, and the real WAL against both.

The last test is differential: random Raft-shaped batches go to a `MemoryWal` and to the
model, with crashes (lose, torn, kept whole) at random points; every recovery must give
back exactly the model's durable image.  The simulation relies on that agreement.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from felix.proto.raft_messages import ConfState, Entry, EntryKind, SnapshotMeta
from felix.raft.types import BootState, HardState
from felix.storage.memory_wal import MemoryWal
from felix.storage.snapshots import snapshot_meta
from felix.testing.simdisk import DiskContractError, DiskWrite, SimDisk, SimFiles

CONF = ConfState(voters=(1, 2, 3), learners=())


def entries(first: int, last: int, term: int) -> tuple[Entry, ...]:
    return tuple(Entry(i, term, EntryKind.NORMAL, b"x") for i in range(first, last + 1))


def snap(index: int, term: int, data: bytes = b"{}") -> tuple[SnapshotMeta, bytes]:
    return snapshot_meta(index, term, CONF, data), data


def test_write_is_durable_only_after_its_fsync() -> None:
    disk = SimDisk()
    disk.submit(DiskWrite(entries=entries(1, 3, 1), hard_state=HardState(1, 2, 0)))
    assert disk.last_index == 0
    disk.complete_oldest()
    boot = disk.boot_state(CONF)
    assert [e.index for e in boot.entries] == [1, 2, 3]
    assert boot.hard_state == HardState(1, 2, 0)


def test_crash_drops_unsynced_writes() -> None:
    disk = SimDisk()
    disk.submit(DiskWrite(entries=entries(1, 2, 1)))
    disk.complete_oldest()
    disk.submit(DiskWrite(entries=entries(3, 5, 1), hard_state=HardState(1, 1, 2)))
    loss = disk.crash()
    assert (loss.writes_lost, loss.writes_kept) == (1, 0)
    assert disk.last_index == 2
    assert disk.hard_state == HardState()
    assert not disk.pending


def test_crash_may_keep_a_whole_unsynced_write() -> None:
    disk = SimDisk()
    disk.submit(DiskWrite(entries=entries(1, 4, 1), hard_state=HardState(1, 1, 0)))
    loss = disk.crash(writes_kept=1)
    assert (loss.writes_lost, loss.writes_kept) == (0, 1)
    assert disk.last_index == 4
    assert disk.hard_state == HardState(1, 1, 0)


def test_crash_keeps_the_snapshot_of_a_lost_write() -> None:
    """The snapshot store saved it durably before the batch record was written."""
    disk = SimDisk()
    disk.submit(DiskWrite(entries=entries(1, 3, 1), hard_state=HardState(1, None, 1)))
    disk.complete_oldest()
    disk.submit(DiskWrite(snapshot=snap(6, 2), hard_state=HardState(2, None, 6)))
    disk.crash()
    assert disk.snapshot == snap(6, 2)
    assert disk.log == []
    assert disk.hard_state == HardState(1, None, 1)
    boot = disk.expected_boot(CONF)
    assert boot.hard_state == HardState(2, None, 6)  # raised to cover the snapshot


def test_entries_overwrite_a_suffix() -> None:
    disk = SimDisk()
    disk.submit(DiskWrite(entries=entries(1, 5, 1)))
    disk.submit(DiskWrite(entries=entries(3, 4, 2)))
    disk.complete_oldest()
    disk.complete_oldest()
    assert [(e.index, e.term) for e in disk.log] == [(1, 1), (2, 1), (3, 2), (4, 2)]
    assert disk.term_at(4) == 2
    assert disk.term_at(5) is None


def test_gap_in_the_log_is_a_contract_error() -> None:
    disk = SimDisk()
    disk.submit(DiskWrite(entries=entries(3, 4, 1)))
    with pytest.raises(DiskContractError):
        disk.complete_oldest()


def test_snapshot_replaces_the_prefix_and_boot_state_follows_it() -> None:
    disk = SimDisk()
    disk.submit(DiskWrite(entries=entries(1, 6, 1), hard_state=HardState(1, None, 6)))
    disk.complete_oldest()
    meta, data = snap(4, 1)
    disk.save_snapshot(meta, data)
    boot = disk.expected_boot(CONF)
    assert boot.snapshot == (meta, data)
    assert [e.index for e in boot.entries] == [5, 6]
    assert disk.term_at(4) == 1
    disk.submit(DiskWrite(compact_to=4))
    disk.complete_oldest()
    with pytest.raises(DiskContractError):
        disk.submit(DiskWrite(compact_to=5))
        disk.complete_oldest()


def test_received_snapshot_that_conflicts_clears_the_log() -> None:
    disk = SimDisk()
    disk.submit(DiskWrite(entries=entries(1, 3, 1)))
    disk.complete_oldest()
    disk.submit(DiskWrite(snapshot=snap(5, 2)))
    disk.complete_oldest()
    assert disk.log == []
    assert disk.last_index == 5


def test_sim_files_count_unsynced_bytes() -> None:
    files = SimFiles()
    files.makedirs("/d")
    files.create("/d/a")
    files.append("/d/a", b"12345")
    files.create("/d/b")
    files.append("/d/b", b"xy")
    assert (files.unsynced_bytes, files.unsynced_files()) == (7, 2)
    files.fsync("/d/a")
    assert (files.unsynced_bytes, files.unsynced_files()) == (2, 1)
    files.remove("/d/b")
    assert files.unsynced_bytes == 0
    files.append("/d/a", b"678")
    files.crash("torn", torn_bytes=1)
    assert files.unsynced_bytes == 0
    assert files.read("/d/a") == b"123456"


def test_wal_unsynced_batch_is_one_record_in_one_file() -> None:
    files = SimFiles()
    wal = MemoryWal(disk=files, segment_bytes_max=256)
    wal.open(CONF)
    for first in range(1, 40, 3):
        wal.write(HardState(1, None, first), entries(first, first + 2, 1))
        assert files.unsynced_files() == 1 and files.unsynced_bytes > 0
        wal.sync()
        assert files.unsynced_bytes == 0
    assert wal.segment_count > 1


# ---------------------------------------------------------------------------------------
# Differential: the real WAL against the model


@dataclass
class _Writer:
    """Produces batches the way a Raft core would (and the model checks they fit)."""

    rng: random.Random
    hard_state: HardState = field(default_factory=HardState)
    snap_index: int = 0
    log: list[Entry] = field(default_factory=list)  # in memory, after the snapshot

    @property
    def last_index(self) -> int:
        return self.log[-1].index if self.log else self.snap_index

    def reset(self, boot: BootState) -> None:
        self.hard_state = boot.hard_state
        self.snap_index = boot.snapshot[0].index if boot.snapshot else 0
        self.log = list(boot.entries)

    def batch(self) -> DiskWrite:
        rng, hs = self.rng, self.hard_state
        roll = rng.random()
        if roll < 0.1 and hs.commit < self.last_index + 5:  # a leader's snapshot
            index = max(hs.commit, self.last_index) + rng.randint(1, 5)
            term = hs.term + 1
            self.hard_state = HardState(term, None, index)
            self.snap_index, self.log = index, []
            data = rng.randbytes(rng.randint(1, 40))
            return DiskWrite(snapshot=snap(index, term, data), hard_state=self.hard_state)
        if roll < 0.2:  # a new term, maybe a vote
            self.hard_state = HardState(hs.term + 1, rng.choice((None, 2, 3)), hs.commit)
            return DiskWrite(hard_state=self.hard_state)
        first = self.last_index + 1
        if roll < 0.35 and self.last_index > hs.commit:  # a conflicting suffix
            first = rng.randint(max(hs.commit, self.snap_index) + 1, self.last_index)
        new = tuple(
            Entry(i, hs.term, EntryKind.NORMAL, rng.randbytes(rng.randint(0, 30)))
            for i in range(first, first + rng.randint(1, 6))
        )
        del self.log[first - self.snap_index - 1 :]
        self.log.extend(new)
        commit = rng.randint(hs.commit, self.last_index)
        self.hard_state = HardState(hs.term, hs.vote, commit)
        return DiskWrite(entries=new, hard_state=self.hard_state)


def _local_snapshot(wal: MemoryWal, model: SimDisk, rng: random.Random) -> None:
    """The state machine snapshots up to the durable commit, then the WAL compacts."""
    index = min(model.hard_state.commit, model.last_index)
    term = model.term_at(index)
    if index <= model.log_base or term is None:
        return
    meta, data = snap(index, term, rng.randbytes(8))
    wal.snapshots.save(meta, data)
    model.save_snapshot(meta, data)
    model.submit(DiskWrite(compact_to=index))
    model.complete_oldest()
    wal.compact(index)


@pytest.mark.parametrize("seed", range(40))
def test_wal_recovers_exactly_the_model_image(seed: int) -> None:
    rng = random.Random(seed)
    files = SimFiles()
    wal = MemoryWal(disk=files, segment_bytes_max=rng.choice((300, 1000, 4000)))
    model = SimDisk()
    writer = _Writer(rng)
    writer.reset(wal.open(CONF))
    crashes = 0
    for _ in range(300):
        write = writer.batch()
        model.submit(write)
        wal.write(write.hard_state, write.entries, write.snapshot)
        if rng.random() < 0.15:
            unsynced = files.unsynced_bytes
            mode = rng.choice(("lose", "torn", "whole"))
            kept = {"lose": 0, "torn": rng.randrange(unsynced), "whole": unsynced}[mode]
            wal.crash("torn", torn_bytes=kept)
            model.crash(writes_kept=1 if kept == unsynced else 0)
            boot = wal.open(CONF)
            assert boot == model.expected_boot(CONF), f"crash {crashes} ({mode}, {kept} bytes)"
            writer.reset(boot)
            crashes += 1
            continue
        wal.sync()
        model.complete_oldest()
        if rng.random() < 0.1:
            _local_snapshot(wal, model, rng)
    wal.crash("lose")
    model.crash()
    assert wal.open(CONF) == model.expected_boot(CONF)
    assert crashes > 10
