"""The WAL contract, run against both the segmented (real files) and the memory WAL."""

from __future__ import annotations

import pytest

from felix.proto.raft_messages import Entry, EntryKind
from felix.raft.ready import Ready
from felix.raft.types import HardState
from tests.storage.conftest import Harness
from tests.storage.model import CONF, Model, entries, snap


def test_a_fresh_wal_boots_empty_with_the_bootstrap_conf(harness: Harness) -> None:
    boot = harness.open()
    assert boot.hard_state == HardState()
    assert boot.conf == CONF
    assert boot.snapshot is None
    assert boot.entries == ()
    assert harness.restart() == boot


def test_saved_batches_survive_a_restart(harness: Harness) -> None:
    harness.open()
    harness.wal.save(HardState(1, 2, 0), entries(1, 3, 1))
    harness.wal.save(HardState(1, 2, 2), entries(4, 5, 1))
    boot = harness.restart()
    assert boot.hard_state == HardState(1, 2, 2)
    assert boot.entries == entries(1, 5, 1)


def test_a_batch_overwrites_the_conflicting_suffix(harness: Harness) -> None:
    harness.open()
    harness.wal.save(HardState(1, 1, 0), entries(1, 6, 1))
    harness.wal.save(HardState(2, 3, 2), entries(3, 4, 2))
    boot = harness.restart()
    assert boot.entries == entries(1, 2, 1) + entries(3, 4, 2)
    harness.wal.save(None, entries(5, 5, 2))
    assert harness.restart().entries == entries(1, 2, 1) + entries(3, 5, 2)


def test_hard_state_alone_is_a_batch(harness: Harness) -> None:
    harness.open()
    harness.wal.save(HardState(7, None, 0))
    harness.wal.save(HardState(7, 3, 0))
    assert harness.restart().hard_state == HardState(7, 3, 0)


def test_a_received_snapshot_replaces_the_log(harness: Harness) -> None:
    harness.open()
    harness.wal.save(HardState(1, 1, 2), entries(1, 5, 1))
    received = snap(20, 2)
    harness.wal.save(HardState(3, None, 20), entries(21, 22, 3), received)
    boot = harness.restart()
    assert boot.snapshot == received
    assert boot.conf == received[0].conf
    assert boot.entries == entries(21, 22, 3)
    assert boot.hard_state == HardState(3, None, 20)


def test_compaction_deletes_old_segments_and_keeps_the_rest(harness: Harness) -> None:
    harness.open()
    model = Model()
    for start in range(1, 200, 10):
        batch = entries(start, start + 9, 1, b"payload" * 3)
        harness.wal.save(HardState(1, 1, start), batch)
        model.save(HardState(1, 1, start), batch)
    assert harness.wal.segment_count > 3
    local = snap(150, 1)
    harness.wal.snapshots.save(*local)
    model.store(local)
    removed = harness.wal.compact(150)
    assert removed > 0
    assert harness.restart() == model.expected_boot()
    more = entries(201, 230, 1)
    harness.wal.save(None, more)
    model.save(None, more)
    assert harness.restart() == model.expected_boot()


def test_compaction_never_passes_the_newest_snapshot(harness: Harness) -> None:
    harness.open()
    for start in range(1, 200, 10):
        harness.wal.save(HardState(1, 1, 0), entries(start, start + 9, 1, b"p" * 20))
    assert harness.wal.compact(150) == 0  # no snapshot at all: nothing may go
    harness.wal.snapshots.save(*snap(30, 1))
    before = harness.wal.segment_count
    harness.wal.compact(190)
    boot = harness.restart()
    assert harness.wal.segment_count <= before
    assert (
        boot.entries
        == tuple(e for s in range(1, 200, 10) for e in entries(s, s + 9, 1, b"p" * 20))[30:]
    )


def test_save_ready_persists_then_compacts(harness: Harness) -> None:
    harness.open()
    for start in range(1, 100, 10):
        harness.wal.save_ready(
            Ready(hard_state=HardState(1, 1, start), entries=entries(start, start + 9, 1))
        )
    harness.wal.snapshots.save(*snap(60, 1))
    harness.wal.save_ready(Ready(compact_to=60))
    boot = harness.restart()
    assert boot.snapshot is not None and boot.snapshot[0].index == 60
    assert boot.entries == tuple(e for s in range(1, 100, 10) for e in entries(s, s + 9, 1))[60:]


@pytest.mark.parametrize(
    "bad",
    [entries(5, 6, 1), (Entry(0, 1, EntryKind.NORMAL, b""),)],
    ids=["gap", "index-zero"],
)
def test_entries_that_do_not_fit_the_log_are_refused(
    harness: Harness, bad: tuple[Entry, ...]
) -> None:
    harness.open()
    harness.wal.save(None, entries(1, 2, 1))
    with pytest.raises(ValueError, match="do not fit"):
        harness.wal.save(None, bad)
    harness.wal.save(None, entries(3, 3, 1))  # a refused batch does not break the WAL
    assert harness.restart().entries == entries(1, 3, 1)


def test_a_snapshot_on_disk_ahead_of_the_log_wins(harness: Harness) -> None:
    """A crash between saving a received snapshot and the batch that records it."""
    harness.open()
    harness.wal.save(HardState(2, 1, 3), entries(1, 8, 2))
    received = snap(5, 3)  # a different history from index 5 on
    harness.wal.snapshots.save(*received)
    boot = harness.restart()
    assert boot.snapshot == received
    assert boot.entries == ()  # the log's entries 6..8 belong to the replaced history
    assert boot.hard_state == HardState(3, None, 5)
    harness.wal.save(None, entries(6, 6, 3))
    assert harness.restart().entries == entries(6, 6, 3)


def test_a_snapshot_that_matches_the_log_keeps_the_entries_after_it(harness: Harness) -> None:
    harness.open()
    harness.wal.save(HardState(2, 1, 6), entries(1, 8, 2))
    harness.wal.snapshots.save(*snap(5, 2))
    boot = harness.restart()
    assert boot.entries == entries(6, 8, 2)
    assert boot.hard_state == HardState(2, 1, 6)
