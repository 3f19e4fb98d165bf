"""`felix recover --force-new-cluster` on real files (no processes): what it keeps, the
membership it writes, and what it refuses with nothing written.

The real-process quorum-loss scenario is tests/server/test_processes_recover.py.
"""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest

from felix.cli import main
from felix.metadata.commands import SetTenant, encode_command
from felix.metadata.state import MetadataState
from felix.proto.raft_messages import ConfChange, ConfChangeKind, ConfState, Entry, EntryKind
from felix.raft.core import RaftCore
from felix.raft.membership import encode_change
from felix.raft.types import HardState, RaftConfig
from felix.server.datadir import (
    RECOVERY_RECORD_NAME,
    DataDirLock,
    RecoveryRecord,
    fenced_peers,
    read_recovery_record,
)
from felix.server.metadata_sm import MetadataStateMachine
from felix.storage.segmented_wal import SyncWal
from felix.storage.snapshots import snapshot_meta

PEERS = "2=127.0.0.1:1,3=127.0.0.1:2"
THREE = ConfState((1, 2, 3), ())


def tenant_entry(index: int, term: int, name: str) -> Entry:
    return Entry(index, term, EntryKind.NORMAL, encode_command(SetTenant(name, f"v-{name}")))


def make_data_dir(
    path: Path,
    *,
    tenants: int,
    commit: int,
    term: int = 3,
    snapshot_at: int | None = None,
    conf: ConfState = THREE,
    tail: tuple[Entry, ...] = (),
    segment_bytes_max: int | None = None,
) -> list[Entry]:
    """A node's data dir as `felix serve` leaves it: a NOOP, then ``tenants`` set_tenant
    entries (then ``tail``), hard state commit ``commit`` (the rest is an uncommitted
    tail, or committed but not yet synced: a commit-only change is not fsynced), and a
    snapshot of the state at ``snapshot_at`` if asked."""
    entries = [Entry(1, term, EntryKind.NOOP, b"")]
    entries += [tenant_entry(i + 2, term, f"t{i}") for i in range(tenants)]
    entries += tail
    wal = (
        SyncWal(str(path))
        if segment_bytes_max is None
        else SyncWal(str(path), segment_bytes_max=segment_bytes_max)
    )
    wal.open(conf)
    for entry in entries:  # one record each, so small segments rotate between them
        wal.save(HardState(term, 1, min(commit, entry.index)), [entry])
    wal.save(HardState(term, 1, commit))
    if snapshot_at is not None:
        sm = MetadataStateMachine()
        for entry in entries[:snapshot_at]:
            sm.apply(entry)
        data = sm.snapshot_encoder()()
        wal.snapshots.save(snapshot_meta(snapshot_at, term, conf, data), data)
        wal.compact(snapshot_at)
    wal.close()
    return entries


def tree(path: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``path`` with its size and content hash (to prove nothing moved)."""
    if not path.exists():
        return {}
    return {
        str(p.relative_to(path)): (p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


def recover(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["recover", *args])
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys: pytest.CaptureFixture[str], data_dir: Path, *extra: str) -> str:
    """Recover must refuse ``data_dir`` with one line on stderr, writing nothing."""
    before = tree(data_dir)
    code, out, err = recover(
        capsys, "--force-new-cluster", "--node-id", "1", "--data-dir", str(data_dir), *extra
    )
    assert code == 2, (out, err)
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("felix recover: refusing: "), err
    assert tree(data_dir) == before
    return err


def boot_of(path: Path, conf: ConfState = THREE) -> tuple[SyncWal, object]:
    wal = SyncWal(str(path))
    return wal, wal.open(conf)


def test_keeps_every_entry_committed_or_not_and_makes_the_node_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The persisted commit index (4) lags the log (11): whatever the lost majority
    committed and acknowledged among entries 5..11 is kept, and the configuration on
    disk is {1} whatever the peers config says."""
    make_data_dir(tmp_path, tenants=10, commit=4, term=3)
    code, out, err = recover(
        capsys, "--force-new-cluster", "--node-id", "1", "--data-dir", str(tmp_path),
        "--peers", PEERS,
    )  # fmt: skip
    assert code == 0, err
    assert "up to index 11 (term 3)" in out and "entries 5..11 (7) are committed now" in out
    assert "term:       4 (was 3)" in out and "membership: voters 1 (was voters 1,2,3)" in out
    assert "fenced:     nodes 2, 3" in out

    wal = SyncWal(str(tmp_path))
    boot = wal.open(THREE)  # the static peers config still names 2 and 3: the disk wins
    wal.close()
    assert boot.snapshot is not None and boot.entries == ()
    meta, data = boot.snapshot
    assert (meta.index, meta.term, meta.conf) == (11, 4, ConfState((1,), ()))
    assert boot.hard_state == HardState(4, None, 11)
    state = MetadataState.restore(data)
    assert state.version == 11
    assert len(state.history) == 32 and state.history != ""  # a new lineage: brokers resync
    assert {name: t.display_name for name, t in state.tenants.items()} == {
        f"t{i}": f"v-t{i}" for i in range(10)
    }
    core = RaftCore(RaftConfig(node_id=1), random.Random(1), boot)
    assert core.conf == ConfState((1,), ()) and core.is_voter()
    assert (core.commit_index, core.last_index, core.term) == (11, 11, 4)
    assert read_recovery_record(tmp_path) == RecoveryRecord(1, 11, 4, (2, 3))


def test_a_snapshot_and_config_entries_are_replaced_by_one_voter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The membership comes from the snapshot and the CONFIG entries after it (thesis
    §4.1: a configuration is in effect once in the log, committed or not); after the
    recovery it is {1} alone, with nothing after the new snapshot to change it."""
    add = Entry(8, 3, EntryKind.CONFIG, encode_change(ConfChange(ConfChangeKind.ADD_LEARNER, 4)))
    tail = (add, tenant_entry(9, 3, "after"))
    make_data_dir(tmp_path, tenants=6, commit=8, snapshot_at=5, tail=tail)
    code, out, err = recover(
        capsys, "--force-new-cluster", "--node-id", "1", "--data-dir", str(tmp_path)
    )
    assert code == 0, err
    assert "was voters 1,2,3, learners 4" in out and "nodes 2, 3, 4" in out
    wal = SyncWal(str(tmp_path))
    boot = wal.open(ConfState((1,), ()))
    wal.close()
    assert boot.snapshot is not None and boot.entries == ()
    meta, data = boot.snapshot
    assert (meta.index, meta.conf) == (9, ConfState((1,), ()))
    assert "after" in MetadataState.restore(data).tenants
    record = read_recovery_record(tmp_path)
    assert record is not None and record.previous_members == (2, 3, 4)


def test_a_torn_tail_is_repaired_as_at_boot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kill -9 mid-write leaves a torn final record: never acknowledged, truncated."""
    make_data_dir(tmp_path, tenants=3, commit=4)
    segment = next((tmp_path / "wal").iterdir())
    with segment.open("ab") as f:
        f.write(b"\x00\x00\x01\x00torn")
    code, out, err = recover(
        capsys, "--force-new-cluster", "--node-id", "1", "--data-dir", str(tmp_path)
    )
    assert code == 0, err
    assert "up to index 4 (term 3)" in out


def test_dry_run_writes_nothing_and_a_second_run_has_nothing_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_data_dir(tmp_path, tenants=3, commit=4)
    before = tree(tmp_path)
    args = ["--force-new-cluster", "--node-id", "1", "--data-dir", str(tmp_path)]
    code, out, _ = recover(capsys, *args, "--dry-run")
    assert code == 0 and "dry run: nothing written" in out
    assert tree(tmp_path) == before
    assert recover(capsys, *args)[0] == 0
    after = tree(tmp_path)
    code, out, _ = recover(capsys, *args)
    assert code == 0 and "already a one-node cluster" in out
    assert tree(tmp_path) == after


@pytest.mark.parametrize("kind", ["missing", "empty", "other files", "wal without segments"])
def test_refuses_a_directory_that_is_not_a_felix_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    target = tmp_path / "dir"
    if kind != "missing":
        target.mkdir()
    if kind == "other files":
        (target / "notes.txt").write_text("hello\n")
        (target / "snap").mkdir()
    if kind == "wal without segments":
        (target / "wal").mkdir()
        (target / "wal" / "README").write_text("x")
    err = refused(capsys, target)
    assert "not a directory" in err if kind == "missing" else "not a Felix data dir" in err
    assert kind != "missing" or not target.exists()


@pytest.mark.parametrize("damage", ["flipped byte", "missing segment"])
def test_refuses_a_corrupt_wal_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    make_data_dir(tmp_path, tenants=20, commit=21)
    wal = SyncWal(str(tmp_path), segment_bytes_max=200)  # more segments, for the gap
    wal.open(THREE)
    for i in range(3):  # one batch record per save: each rotates past 200 bytes
        wal.save(None, [tenant_entry(22 + i, 3, f"more{i}")])
    wal.close()
    segments = sorted((tmp_path / "wal").iterdir())
    if damage == "flipped byte":
        blob = bytearray(segments[0].read_bytes())
        blob[len(blob) // 2] ^= 0x40  # inside a record, before the tail: not a crash
        segments[0].write_bytes(bytes(blob))
    else:
        assert len(segments) >= 3
        segments[1].unlink()
    err = refused(capsys, tmp_path)
    assert "does not recover cleanly" in err
    assert (segments[0].name if damage == "flipped byte" else "segment sequence jumps") in err


def _damage_the_snapshot(path: Path) -> Path:
    snap = next((path / "snap").glob("*.snap"))
    blob = bytearray(snap.read_bytes())
    blob[-6] ^= 0x01
    snap.write_bytes(bytes(blob))
    return snap


def test_refuses_a_corrupt_snapshot_the_log_cannot_replace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_data_dir(tmp_path, tenants=6, commit=7, snapshot_at=5, segment_bytes_max=120)
    snap = _damage_the_snapshot(tmp_path)
    err = refused(capsys, tmp_path)
    assert snap.name in err and "checksum" in err


def test_a_corrupt_snapshot_with_the_whole_log_recovers_from_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As boot does (snapshot fallback, docs/architecture.md §4): the log from entry 1
    replaces a damaged snapshot, which is left in place."""
    make_data_dir(tmp_path, tenants=6, commit=7, snapshot_at=5)
    snap = _damage_the_snapshot(tmp_path)
    damaged = snap.read_bytes()
    code, out, err = recover(
        capsys, "--force-new-cluster", "--node-id", "1", "--data-dir", str(tmp_path)
    )
    assert code == 0, err
    assert "up to index 7" in out and snap.read_bytes() == damaged


def test_refuses_a_node_id_that_is_not_a_voter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_data_dir(tmp_path, tenants=3, commit=4, snapshot_at=2)
    before = tree(tmp_path)
    code, _, err = recover(
        capsys, "--force-new-cluster", "--node-id", "4", "--data-dir", str(tmp_path)
    )
    assert code == 2 and "node 4 is not a voter" in err and err.count("\n") == 1
    assert tree(tmp_path) == before


def test_refuses_a_locked_data_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The lock a running node holds (tests/server/test_processes_recover.py takes it
    with a real `felix serve`)."""
    make_data_dir(tmp_path, tenants=3, commit=4)
    lock = DataDirLock.acquire(tmp_path)
    lock.write_pid()
    try:
        err = refused(capsys, tmp_path)
    finally:
        lock.release()
    assert "is in use by process" in err


def test_needs_the_flag_and_an_explicit_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = recover(capsys, "--node-id", "1", "--data-dir", str(tmp_path))
    assert code == 2 and "--force-new-cluster" in err
    code, _, err = recover(capsys, "--force-new-cluster", "--node-id", "1")
    assert code == 2 and "--data-dir" in err


def test_refuses_a_data_dir_without_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    SyncWal(str(tmp_path)).open(THREE)  # a node that started and never got an entry
    assert "nothing to recover" in refused(capsys, tmp_path)
    assert not (tmp_path / RECOVERY_RECORD_NAME).exists()


def test_fenced_peers_are_the_old_members_until_added_back() -> None:
    record = RecoveryRecord(1, 10, 4, (2, 3))
    assert fenced_peers(None, ConfState((1,), ()), [2, 3]) == set()
    assert fenced_peers(record, ConfState((1,), ()), [2, 3]) == {2, 3}
    assert fenced_peers(record, ConfState((1,), (2,)), [2, 3]) == {3}  # 2 added back
    assert fenced_peers(record, ConfState((1, 2, 3), ()), [2, 3]) == set()
    assert fenced_peers(record, ConfState((1,), ()), [2, 3, 5]) == {2, 3}  # 5: never one
    unknown = RecoveryRecord(1, 10, 4, None)  # the record did not know: the config's
    assert fenced_peers(unknown, ConfState((1,), ()), [2, 3]) == {2, 3}
