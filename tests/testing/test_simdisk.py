"""SimDisk: only fsynced writes survive a crash; a torn tail keeps a prefix of entries."""

from __future__ import annotations

import random

import pytest

from felix.proto.raft_messages import ConfState, Entry, EntryKind, SnapshotMeta
from felix.raft.types import HardState
from felix.testing.simdisk import DiskContractError, DiskWrite, SimDisk

CONF = ConfState(voters=(1, 2, 3), learners=())


def entries(first: int, last: int, term: int) -> tuple[Entry, ...]:
    return tuple(Entry(i, term, EntryKind.NORMAL, b"x") for i in range(first, last + 1))


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
    loss = disk.crash(random.Random(0), torn_write_rate=0.0)
    assert loss.writes_lost == 1
    assert disk.last_index == 2
    assert disk.hard_state == HardState()
    assert not disk.pending


def test_torn_write_keeps_a_prefix_of_entries_but_never_the_hard_state() -> None:
    kept_counts = set()
    for seed in range(30):
        disk = SimDisk()
        disk.submit(DiskWrite(entries=entries(1, 4, 1), hard_state=HardState(1, 1, 0)))
        loss = disk.crash(random.Random(seed), torn_write_rate=1.0)
        assert disk.last_index == loss.torn_entries_kept
        assert disk.hard_state == HardState()
        kept_counts.add(loss.torn_entries_kept)
    assert len(kept_counts) > 2


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
    disk.submit(DiskWrite(entries=entries(1, 6, 1)))
    disk.complete_oldest()
    meta = SnapshotMeta(4, 1, CONF, 2, 0)
    disk.save_snapshot(meta, b"{}")
    boot = disk.boot_state(CONF)
    assert boot.snapshot == (meta, b"{}")
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
    disk.submit(DiskWrite(snapshot=(SnapshotMeta(5, 2, CONF, 0, 0), b"s")))
    disk.complete_oldest()
    assert disk.log == []
    assert disk.last_index == 5
