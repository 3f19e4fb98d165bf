"""Crash at every storage operation; torn tails; bit rot; missing files.

Recovery must return a state that holds every batch whose ``save`` returned and nothing
that was never written: exactly the model after the acknowledged steps, or after the
step in flight too (its bytes may all have reached the disk before the power went).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from felix.raft.types import BootState, HardState
from felix.storage.errors import CorruptLogError, CorruptSnapshotError, WalFailedError
from felix.storage.files import MemoryFiles, SimulatedCrash, UnsyncedMode
from felix.storage.memory_wal import MemoryWal
from felix.storage.segment_format import SEGMENT_HEADER_BYTES, RecordScanner
from tests.storage.model import CONF, Model, entries, snap

SEGMENT_BYTES = 150


@dataclass(frozen=True)
class Step:
    """One scripted call; ``apply`` runs it on the WAL, ``models`` on the reference model
    (a list: the states the disk may be in if the call is interrupted, in order)."""

    name: str
    apply: Callable[[MemoryWal], object]
    models: Callable[[Model], list[Model]]


def _save(hs: HardState | None, new: tuple = (), snapshot: tuple | None = None) -> Step:  # type: ignore[type-arg]
    def models(model: Model) -> list[Model]:
        states = []
        if snapshot is not None:  # the snapshot file is durable before the batch
            only_snapshot = model.copy()
            only_snapshot.store(snapshot)
            states.append(only_snapshot)
        done = model.copy()
        done.save(hs, new, snapshot)
        return [*states, done]

    return Step("save", lambda wal: wal.save(hs, new, snapshot), models)


def _local_snapshot(index: int, term: int) -> Step:
    taken = snap(index, term, b"local")

    def models(model: Model) -> list[Model]:
        done = model.copy()
        done.store(taken)
        return [done]

    return Step("snapshot", lambda wal: wal.snapshots.save(*taken), models)


def _compact(index: int) -> Step:
    return Step("compact", lambda wal: wal.compact(index), lambda model: [model.copy()])


SCRIPT: list[Step] = [
    _save(HardState(1, 1, 0), entries(1, 4, 1)),
    _save(HardState(1, 1, 3), entries(5, 9, 1)),
    _save(HardState(2, None, 3), entries(7, 12, 2)),  # overwrite a conflicting tail
    _save(HardState(2, 2, 10), entries(13, 20, 2)),
    _local_snapshot(10, 2),
    _compact(10),
    _save(None, entries(21, 30, 2)),
    _save(HardState(3, 3, 12), entries(18, 22, 3)),  # overwrite across a rotation
    _save(HardState(4, None, 40), entries(41, 43, 4), snap(40, 4, b"leader")),
    _save(HardState(4, None, 42), entries(44, 50, 4)),
    _local_snapshot(45, 4),
    _compact(45),
    _save(HardState(5, 1, 45), entries(51, 52, 5)),
]


def _run(wal: MemoryWal, model: Model) -> tuple[Model, list[Model]]:
    """Run the script until it ends or the disk crashes: (acknowledged, possible states)."""
    try:
        wal.open(CONF)
    except SimulatedCrash:
        return model, [model]
    for step in SCRIPT:
        outcomes = step.models(model)
        try:
            step.apply(wal)
        except SimulatedCrash:
            return model, [model, *outcomes]
        model = outcomes[-1]
    return model, [model]


def _ops_in_full_run() -> int:
    disk = MemoryFiles()
    _run(MemoryWal(disk=disk, segment_bytes_max=SEGMENT_BYTES), Model())
    return disk.ops


OPS = _ops_in_full_run()


def _assert_one_of(boot: BootState, candidates: list[Model]) -> None:
    expected = [m.expected_boot() for m in candidates]
    assert boot in expected, f"recovered {boot}\nnot one of\n" + "\n".join(map(str, expected))


@pytest.mark.parametrize(
    ("unsynced", "torn_bytes"),
    [("lose", None), ("keep", None), ("torn", None), ("torn", 1), ("torn", 11), ("torn", 17)],
)
def test_crash_after_every_storage_operation(
    unsynced: UnsyncedMode, torn_bytes: int | None
) -> None:
    assert OPS > 40
    for crash_at in range(1, OPS + 1):
        disk = MemoryFiles(crash_at_op=crash_at)
        wal = MemoryWal(disk=disk, segment_bytes_max=SEGMENT_BYTES)
        _, candidates = _run(wal, Model())
        wal.crash(unsynced, torn_bytes=torn_bytes)
        boot = wal.open(CONF)
        _assert_one_of(boot, candidates)
        # The recovered WAL is writable and the next restart agrees with this one.
        after = boot.entries[-1].index + 1 if boot.entries else _next_index(boot)
        wal.save(HardState(9, None, 0), entries(after, after, 9))
        wal.crash("lose")
        again = wal.open(CONF)
        assert again.entries == (*boot.entries, *entries(after, after, 9))


def _next_index(boot: BootState) -> int:
    return boot.snapshot[0].index + 1 if boot.snapshot else 1


@pytest.mark.parametrize("torn_bytes", [1, 7, 13, 64])
def test_crash_during_recovery_is_recovered_too(torn_bytes: int) -> None:
    """A second crash while the first recovery repairs the tail."""
    for crash_at in range(1, OPS + 1, 3):
        disk = MemoryFiles(crash_at_op=crash_at)
        wal = MemoryWal(disk=disk, segment_bytes_max=SEGMENT_BYTES)
        _, candidates = _run(wal, Model())
        wal.crash("torn", torn_bytes=torn_bytes)
        for second in range(1, 6):
            disk.crash_at_op = disk.ops + second
            try:
                wal.open(CONF)
                break
            except SimulatedCrash:
                wal.crash("torn", torn_bytes=torn_bytes)
        wal.crash("lose")
        _assert_one_of(wal.open(CONF), candidates)


def test_short_writes_are_completed() -> None:
    disk = MemoryFiles(write_bytes_max=3)
    wal = MemoryWal(disk=disk, segment_bytes_max=SEGMENT_BYTES)
    model, _ = _run(wal, Model())
    wal.crash("lose")
    assert wal.open(CONF) == model.expected_boot()


# ---------------------------------------------------------------------------------------
# Damage to files at rest


def _written_wal() -> tuple[MemoryWal, list[str]]:
    wal = MemoryWal(segment_bytes_max=SEGMENT_BYTES)
    wal.open(CONF)
    for start in range(1, 60, 6):
        wal.save(HardState(1, 1, start), entries(start, start + 5, 1))
    paths = [f"{wal.wal_dir}/{n}" for n in wal.disk.listdir(wal.wal_dir)]
    assert len(paths) >= 3
    return wal, paths


def _record_offsets(wal: MemoryWal, path: str) -> list[int]:
    scanner = RecordScanner(wal.disk.read(path), SEGMENT_HEADER_BYTES)
    offsets = [offset for offset, _, _ in scanner]
    assert scanner.defect is None
    return offsets


def test_torn_final_record_is_truncated_at_every_byte_offset() -> None:
    wal, paths = _written_wal()
    last = paths[-1]
    offsets = _record_offsets(wal, last)
    start, end = offsets[-1], wal.disk.size(last)
    for cut in range(start, end):
        for zero_fill in (False, True):
            damaged, _ = _written_wal()
            damaged.disk.cut(last, cut)
            if zero_fill:
                damaged.disk.append(last, bytes(end - cut))
                damaged.disk.fsync(last)
            damaged.crash("lose")
            boot = damaged.open(CONF)
            assert boot.entries == entries(1, 54, 1), (cut, zero_fill)  # last batch dropped
            assert damaged.disk.size(last) == start


def test_a_flipped_bit_before_the_tail_refuses_to_start() -> None:
    _, paths = _written_wal()
    for path_index in (0, len(paths) - 1):
        wal, _ = _written_wal()
        path = paths[path_index]
        offsets = _record_offsets(wal, path)
        victim, following = offsets[-2], offsets[-1]
        for offset in range(victim, following):
            damaged, _ = _written_wal()
            damaged.disk.flip_bit(path, offset, bit=offset % 8)
            damaged.crash("lose")
            with pytest.raises(CorruptLogError) as info:
                damaged.open(CONF)
            assert info.value.path == path
            assert info.value.offset == victim
            assert "backup" in str(info.value)


def test_a_flipped_bit_in_the_last_record_of_an_older_segment_is_corruption() -> None:
    wal, paths = _written_wal()
    last_offset = _record_offsets(wal, paths[0])[-1]
    wal.disk.flip_bit(paths[0], wal.disk.size(paths[0]) - 6)
    wal.crash("lose")
    with pytest.raises(CorruptLogError) as info:
        wal.open(CONF)
    assert (info.value.path, info.value.offset) == (paths[0], last_offset)


def test_a_damaged_segment_header_is_corruption() -> None:
    wal, paths = _written_wal()
    wal.disk.flip_bit(paths[1], 10)
    wal.crash("lose")
    with pytest.raises(CorruptLogError, match="segment header checksum"):
        wal.open(CONF)


@pytest.mark.parametrize("which", ["middle", "first"])
def test_a_missing_segment_refuses_to_start(which: str) -> None:
    wal, paths = _written_wal()
    lost = paths[1] if which == "middle" else paths[0]
    wal.disk.lose(lost)
    wal.crash("lose")
    with pytest.raises(CorruptLogError, match="missing") as info:
        wal.open(CONF)
    assert "backup" in str(info.value)


def test_the_only_snapshot_cut_short_with_the_log_compacted_refuses_to_start() -> None:
    wal, _ = _written_wal()
    wal.snapshots.save(*snap(30, 1))
    wal.compact(30)
    name = wal.snapshots.names()[-1]
    path = f"{wal.snapshots.directory}/{name}"
    wal.disk.cut(path, wal.disk.size(path) - 3)
    wal.crash("lose")
    with pytest.raises(CorruptSnapshotError, match="cut short") as info:
        wal.open(CONF)
    assert info.value.path == path


def test_the_only_snapshot_with_a_flipped_bit_with_the_log_compacted_refuses_to_start() -> None:
    wal, _ = _written_wal()
    wal.snapshots.save(*snap(30, 1))
    assert wal.compact(30) > 0
    path = f"{wal.snapshots.directory}/{wal.snapshots.names()[-1]}"
    wal.disk.flip_bit(path, wal.disk.size(path) - 8)
    wal.crash("lose")
    with pytest.raises(CorruptSnapshotError, match="checksum"):
        wal.open(CONF)


def test_the_only_snapshot_damaged_with_the_log_whole_boots_from_the_log() -> None:
    wal, _ = _written_wal()
    wal.snapshots.save(*snap(30, 1))
    path = f"{wal.snapshots.directory}/{wal.snapshots.names()[-1]}"
    wal.disk.flip_bit(path, wal.disk.size(path) - 8)
    wal.crash("lose")
    boot = wal.open(CONF)
    assert boot.snapshot is None and boot.entries == tuple(
        e for start in range(1, 60, 6) for e in entries(start, start + 5, 1)
    )
    assert [d.path for d in wal.boot_report.damaged] == [path]
    assert wal.disk.exists(path)  # reported, never deleted


def test_snapshots_without_a_wal_refuse_to_start() -> None:
    wal, paths = _written_wal()
    wal.snapshots.save(*snap(30, 1))
    for path in paths:
        wal.disk.lose(path)
    wal.crash("lose")
    with pytest.raises(CorruptLogError, match="term and vote are lost"):
        wal.open(CONF)


def test_a_failed_fsync_is_fatal_and_never_retried() -> None:
    disk = MemoryFiles()
    wal = MemoryWal(disk=disk)
    wal.open(CONF)
    wal.save(HardState(1, 1, 0), entries(1, 2, 1))
    disk.fail_fsync_at_op = disk.ops + 2  # the append succeeds, its fsync fails
    with pytest.raises(OSError, match="simulated fsync failure"):
        wal.save(None, entries(3, 3, 1))
    with pytest.raises(WalFailedError, match="restart the node"):
        wal.save(None, entries(3, 3, 1))
    wal.crash("lose")
    assert wal.open(CONF).entries == entries(1, 2, 1)
