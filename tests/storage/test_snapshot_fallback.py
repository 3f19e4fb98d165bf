"""Snapshot fallback on real files: a damaged newest snapshot is reported, left in place,
and the node boots from the previous one plus the log, to the same metadata digest; only
when no snapshot + log chain exists does it refuse, naming the files.

Each data directory is written by the production `SyncWal` and `SnapshotStore` on the
real disk (``tmp_path``), with real metadata commands applied to a real `MetadataState`
and snapshots taken from it, compacted the way the Raft core asks (``compact_to`` = the
snapshot just taken).  "Same state" is checked by booting, restoring the boot snapshot
and applying the committed entries after it, then comparing version and digest with an
undamaged copy of the same directory and with the state the writer ended at.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from felix.metadata import commands as cmds
from felix.metadata.state import MetadataState
from felix.proto.raft_messages import Entry, EntryKind
from felix.raft.types import HardState
from felix.storage.errors import CorruptLogError, NoUsableSnapshotError
from felix.storage.recovery import list_segments
from felix.storage.segmented_wal import SNAP_DIR, SyncWal
from felix.storage.snapshots import HEADER_BYTES, snapshot_meta
from tests.storage.model import CONF

KEEP = 3
SNAPSHOT_EVERY = 25
SEGMENT_BYTES = 1500  # a few hundred entries' worth: compaction deletes segments
TOTAL = 170  # six snapshots taken (25..150), the newest three kept, 20 entries after them


def command(index: int) -> bytes:
    """A real metadata command; every one succeeds and changes the digest."""
    cmd: cmds.Command
    if index % 3 == 0:
        cmd = cmds.SetTenant(f"tenant{index % 7}", display_name=f"v{index}")
    else:
        node = index % 11 + 1
        cmd = cmds.RegisterNode(node, f"10.0.0.{node}:{9000 + index}", rack=f"r{index % 3}")
    return cmds.encode_command(cmd)


@dataclass
class Written:
    directory: Path
    version: int
    digest: bytes

    @property
    def snap_dir(self) -> Path:
        return self.directory / SNAP_DIR

    def snapshots(self) -> list[Path]:
        """Snapshot files, oldest first."""
        return sorted(self.snap_dir.glob("*.snap"))


def open_wal(directory: Path, keep: int = KEEP, segment_bytes: int = SEGMENT_BYTES) -> SyncWal:
    return SyncWal(str(directory), segment_bytes_max=segment_bytes, snapshots_keep=keep)


def write_node(
    directory: Path,
    *,
    total: int = TOTAL,
    received_at: int | None = None,
    keep: int = KEEP,
    segment_bytes: int = SEGMENT_BYTES,
) -> Written:
    """A node's data dir: one entry per batch, a snapshot every `SNAPSHOT_EVERY` entries
    followed by the compaction the core asks for.  With ``received_at``, the snapshot at
    that index arrives from a leader instead (InstallSnapshot: saved, then a marker that
    restarts the log after it), with a new term from there on."""
    wal = open_wal(directory, keep, segment_bytes)
    wal.open(CONF)
    state = MetadataState()
    term = 1
    for index in range(1, total + 1):
        data = command(index)
        if index == received_at:
            leader = MetadataState.restore(state.snapshot_encoder()())
            leader.apply(index, data)  # the leader's state: this entry included
            blob = leader.snapshot_encoder()()
            term = 2
            received = snapshot_meta(index, term, CONF, blob)
            wal.save(HardState(term, None, index), (), (received, blob))
            state = leader
            continue
        wal.save(HardState(term, 1, index - 1), [Entry(index, term, EntryKind.NORMAL, data)])
        state.apply(index, data)
        if index % SNAPSHOT_EVERY == 0:
            blob = state.snapshot_encoder()()
            wal.snapshots.save(snapshot_meta(index, term, CONF, blob), blob)
            wal.compact(index)  # the core's compact_to after SnapshotTaken
    wal.save(HardState(term, 1, total))
    wal.close()
    return Written(directory, state.version, state.digest)


@dataclass
class Booted:
    wal: SyncWal
    state: MetadataState
    snapshot_index: int | None


def boot(directory: Path) -> Booted:
    """Open the WAL as a node does, then apply what the core would apply at start."""
    wal = open_wal(directory)
    start = wal.open(CONF)
    state = MetadataState.restore(start.snapshot[1]) if start.snapshot else MetadataState()
    for entry in start.entries:
        if entry.index <= start.hard_state.commit:
            state.apply(entry.index, entry.data)
    wal.close()
    return Booted(wal, state, start.snapshot[0].index if start.snapshot else None)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


def truncate_to_header(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: HEADER_BYTES - 3])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def flip_data_bit(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2 + HEADER_BYTES // 2] ^= 0x10
    path.write_bytes(bytes(blob))


def flip_header_bit(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[HEADER_BYTES + 3] ^= 0x01  # inside the meta CBOR: the header checksum catches it
    path.write_bytes(bytes(blob))


def flip_trailer_bit(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0x80
    path.write_bytes(bytes(blob))


def delete(path: Path) -> None:
    path.unlink()


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": truncate,
    "truncated-in-header": truncate_to_header,
    "empty": empty,
    "flipped-bit-data": flip_data_bit,
    "flipped-bit-header": flip_header_bit,
    "flipped-bit-trailer": flip_trailer_bit,
    "missing": delete,
}
PROBLEMS = {
    "truncated": "cut short",
    "truncated-in-header": "cut short",
    "empty": "cut short",
    "flipped-bit-data": "data checksum mismatch",
    "flipped-bit-header": "header checksum mismatch",
    "flipped-bit-trailer": "data checksum mismatch",
}


@pytest.fixture
def written(tmp_path: Path) -> Written:
    return write_node(tmp_path / "node")


def undamaged_copy(written: Written, tmp_path: Path) -> Written:
    target = tmp_path / "undamaged"
    shutil.copytree(written.directory, target)
    return Written(target, written.version, written.digest)


def test_every_kept_snapshot_can_be_joined_with_the_log(written: Written) -> None:
    """The compaction bound: the log still holds every entry after the oldest kept
    snapshot, and no more than a segment before it."""
    names = [p.name for p in written.snapshots()]
    assert [int(n[:16], 16) for n in names] == [100, 125, 150]
    segments = list_segments(open_wal(written.directory).files, str(written.directory / "wal"))
    assert segments[0].first_index <= 100 + 1  # the oldest kept snapshot joins the log
    assert segments[0].seq > 0  # older segments were deleted
    assert len(segments) >= 2 and segments[1].first_index > 100 + 1  # deleted up to it


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_newest_snapshot_falls_back_to_the_previous_one_plus_the_log(
    written: Written, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    reference = boot(undamaged_copy(written, tmp_path).directory)
    assert reference.snapshot_index == 150
    assert (reference.state.version, reference.state.digest) == (written.version, written.digest)

    newest = written.snapshots()[-1]
    DAMAGE[damage](newest)
    damaged_bytes = newest.read_bytes() if newest.exists() else None
    with caplog.at_level(logging.ERROR, logger="felix.storage"):
        booted = boot(written.directory)

    assert booted.snapshot_index == 125  # the previous snapshot ...
    assert booted.state.version == written.version  # ... plus the log: the same state
    assert booted.state.digest == reference.state.digest == written.digest
    report = booted.wal.boot_report
    assert report.snapshot == written.snapshots()[-2 if damaged_bytes is not None else -1].name
    if damaged_bytes is None:  # a deleted file leaves no trace: the previous one is newest
        assert report.damaged == () and not report.fell_back
        return
    assert newest.read_bytes() == damaged_bytes  # left in place, untouched
    assert report.fell_back and report.newest == newest.name
    assert [d.path for d in report.damaged] == [str(newest)]
    assert PROBLEMS[damage] in report.damaged[0].problem
    assert report.damaged[0].offset is not None
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(
        str(newest) in line and PROBLEMS[damage] in line and "byte offset" in line
        for line in logged
    ), logged
    assert any("booting from snapshot" in line and newest.name in line for line in logged)


def test_the_newest_two_damaged_falls_back_to_the_oldest_plus_the_log(
    written: Written,
) -> None:
    flip_data_bit(written.snapshots()[-1])
    truncate(written.snapshots()[-2])
    booted = boot(written.directory)
    assert booted.snapshot_index == 100
    assert (booted.state.version, booted.state.digest) == (written.version, written.digest)
    assert len(booted.wal.boot_report.damaged) == 2


def test_a_damaged_older_snapshot_is_reported_though_the_newest_is_used(
    written: Written,
) -> None:
    oldest = written.snapshots()[0]
    flip_data_bit(oldest)
    booted = boot(written.directory)
    assert booted.snapshot_index == 150 and not booted.wal.boot_report.fell_back
    assert [d.path for d in booted.wal.boot_report.damaged] == [str(oldest)]
    assert booted.state.digest == written.digest


def test_after_a_fallback_the_node_keeps_working_and_the_damaged_file_stays(
    written: Written,
) -> None:
    """The node carries on from the fallback: it writes, takes the next snapshot (the
    damaged file is still there until ordinary rotation), and boots again cleanly."""
    newest = written.snapshots()[-1]
    flip_data_bit(newest)
    wal = open_wal(written.directory)
    start = wal.open(CONF)
    assert start.snapshot is not None and start.snapshot[0].index == 125
    state = MetadataState.restore(start.snapshot[1])
    for entry in start.entries:
        state.apply(entry.index, entry.data)
    for index in range(TOTAL + 1, 176):
        data = command(index)
        wal.save(HardState(1, 1, index - 1), [Entry(index, 1, EntryKind.NORMAL, data)])
        state.apply(index, data)
    blob = state.snapshot_encoder()()
    wal.snapshots.save(snapshot_meta(175, 1, CONF, blob), blob)
    wal.compact(175)
    wal.save(HardState(1, 1, 175))
    wal.close()
    assert newest.exists()  # the damaged one is kept among the newest three
    booted = boot(written.directory)
    assert booted.snapshot_index == 175
    assert [d.path for d in booted.wal.boot_report.damaged] == [str(newest)]
    assert booted.state.digest == state.digest


def test_every_snapshot_damaged_with_the_log_compacted_refuses_naming_the_files(
    written: Written,
) -> None:
    files = written.snapshots()
    truncate(files[0])
    flip_header_bit(files[1])
    flip_data_bit(files[2])
    before = {p: p.read_bytes() for p in written.directory.rglob("*") if p.is_file()}
    with pytest.raises(NoUsableSnapshotError) as info:
        boot(written.directory)
    message = str(info.value)
    for path in files:
        assert str(path) in message
    assert "cut short" in message and "checksum mismatch" in message
    assert "compacted" in message and "left in place" in message and "backup" in message
    assert [d.path for d in info.value.damaged] == [str(p) for p in reversed(files)]
    assert info.value.path == str(files[2])
    after = {p: p.read_bytes() for p in written.directory.rglob("*") if p.is_file()}
    assert after == before  # a refusal changes nothing on disk


def test_every_snapshot_damaged_with_the_whole_log_boots_from_the_log_alone(
    tmp_path: Path,
) -> None:
    """Before compaction deleted a segment, the log alone is a chain."""
    written = write_node(tmp_path / "node", total=60, segment_bytes=1 << 20)  # snaps 25, 50
    first = list_segments(open_wal(written.directory).files, str(written.directory / "wal"))
    assert first[0].first_index == 1
    for path in written.snapshots():
        flip_data_bit(path)
    booted = boot(written.directory)
    assert booted.snapshot_index is None
    assert (booted.state.version, booted.state.digest) == (written.version, written.digest)
    assert booted.wal.boot_report.fell_back and len(booted.wal.boot_report.damaged) == 2


def test_a_fallback_to_a_snapshot_received_from_the_leader(tmp_path: Path) -> None:
    """Snapshots 125 (local), 130 (received: the log restarts after it) and 150 (local):
    a damaged 150 falls back to 130 plus the log."""
    written = write_node(tmp_path / "node", received_at=130)
    names = [p.name for p in written.snapshots()]
    assert [int(n[:16], 16) for n in names] == [125, 130, 150]
    flip_data_bit(written.snapshots()[-1])
    booted = boot(written.directory)
    assert booted.snapshot_index == 130
    assert (booted.state.version, booted.state.digest) == (written.version, written.digest)


def test_no_chain_past_a_snapshot_received_from_the_leader_is_reported(tmp_path: Path) -> None:
    """With 150 and the received 130 damaged, 125 is intact but the log restarts after
    130, so nothing joins: the refusal says so."""
    written = write_node(tmp_path / "node", received_at=130)
    oldest, received, newest = written.snapshots()
    flip_data_bit(newest)
    truncate(received)
    with pytest.raises(NoUsableSnapshotError) as info:
        boot(written.directory)
    message = str(info.value)
    assert str(newest) in message and str(received) in message
    assert "restarts after snapshot 130" in message and "received from the leader" in message
    assert f"{oldest} is intact but the log does not continue it" in message


def test_a_missing_received_snapshot_the_log_restarts_after_is_named(tmp_path: Path) -> None:
    written = write_node(tmp_path / "node", received_at=130)
    _, received, newest = written.snapshots()
    flip_data_bit(newest)
    received.unlink()
    with pytest.raises(NoUsableSnapshotError, match="restarts after snapshot 130") as info:
        boot(written.directory)
    assert f"{received} is missing" in str(info.value)


def test_two_newest_missing_falls_back_to_the_oldest(written: Written) -> None:
    for path in written.snapshots()[1:]:
        path.unlink()
    booted = boot(written.directory)
    assert booted.snapshot_index == 100
    assert (booted.state.version, booted.state.digest) == (written.version, written.digest)


def test_an_intact_snapshot_the_log_does_not_continue_is_a_log_error(tmp_path: Path) -> None:
    """No damage, but the only snapshot is older than the log's first entry (with
    ``keep = 1`` the log is compacted up to the newest, and that one was deleted): not a
    fallback case but a missing file, refused as before."""
    kept3 = write_node(tmp_path / "kept3")
    kept1 = write_node(tmp_path / "kept1", keep=1)
    assert [p.name for p in kept1.snapshots()] == [kept3.snapshots()[-1].name]
    kept1.snapshots()[-1].unlink()
    with pytest.raises(CorruptLogError, match="holds no snapshot covering them"):
        boot(kept1.directory)
    shutil.copy(kept3.snapshots()[0], kept1.snap_dir)  # the same bytes: same commands
    with pytest.raises(CorruptLogError, match="older than the log's first entry"):
        boot(kept1.directory)
