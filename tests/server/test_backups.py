"""Scheduled backups (docs/architecture.md §14): the leader writes one every
``backup.interval_s`` (MockClock), keeps the newest ``keep``, writes nothing as a
follower; a crash at every single file operation of a round leaves every earlier
backup loadable and never a damaged file under a backup's name; the next round cleans
up and succeeds.  On real processes: only the leader writes, and /metrics says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing

from felix.config import BackupConfig
from felix.metadata.commands import SetTenant
from felix.raft.types import Role
from felix.server.backups import BackupScheduler, backup_name
from felix.server.metadata_sm import MetadataStore
from felix.storage.backup import BackupError, load_backup
from felix.storage.files import MemoryFiles, SimulatedCrash, UnsyncedMode
from felix.testing.processes import ProcessCluster

DIR = "/backups"


@dataclass
class _Core:
    role: Role = Role.LEADER


@dataclass
class _Node:
    """What the scheduler reads of a `RaftNode`: whether it leads."""

    core: _Core = field(default_factory=_Core)


def scheduler(files: MemoryFiles, keep: int = 3, interval_s: int = 60) -> BackupScheduler:
    store = MetadataStore()
    return BackupScheduler(
        _Node(), store, BackupConfig(interval_s, DIR, keep), "c1",  # type: ignore[arg-type]
        files=files, encode_in_thread=False, wall_ms=lambda: 0,
    )  # fmt: skip


def advance(s: BackupScheduler, n: int) -> None:
    """One more applied entry: the next backup is of a new version."""
    state = s.store.state
    state.apply_command(state.version + 1, SetTenant(f"t{n}"))


def loadable(files: MemoryFiles, s: BackupScheduler) -> dict[str, int]:
    """Backup name -> version, for every file under a backup's name (each must load)."""
    out = {}
    for name in s.names():
        meta, state = load_backup(f"{DIR}/{name}", files)
        assert name == backup_name("c1", meta.version) and state.version == meta.version
        out[name] = meta.version
    return out


async def test_the_leader_writes_one_every_interval_and_keeps_the_newest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    files = MemoryFiles()
    s = scheduler(files, keep=3, interval_s=60)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(s.run)
        await trio.sleep(30)  # changes land half an interval away from each backup
        for n in range(1, 6):
            advance(s, n)
            await trio.sleep(60)  # virtual time: one interval per round
        s.node.core.role = Role.FOLLOWER  # type: ignore[attr-defined]
        advance(s, 99)
        await trio.sleep(180)  # a follower writes nothing
        nursery.cancel_scope.cancel()
    assert s.stats.written == 5 and s.stats.failed == 0
    assert sorted(loadable(files, s).values()) == [3, 4, 5]
    assert not [n for n in files.listdir(DIR) if n.endswith(".tmp")]


def ops_of_one_round() -> int:
    files = MemoryFiles()
    s = scheduler(files)
    for n in range(1, 4):
        advance(s, n)
        trio.run(s.backup_now)
    before = files.ops
    advance(s, 4)
    trio.run(s.backup_now)
    return files.ops - before


@pytest.mark.parametrize("unsynced", ["lose", "keep", "torn"])
def test_a_crash_at_every_operation_of_a_round_loses_no_earlier_backup(
    unsynced: UnsyncedMode,
) -> None:
    ops = ops_of_one_round()
    assert ops >= 6  # create, append, fsync, rename, fsync_dir, remove (prune), ...
    for crash_at in range(1, ops + 1):
        files = MemoryFiles()
        s = scheduler(files, keep=3)
        for n in range(1, 4):
            advance(s, n)
            trio.run(s.backup_now)
        before = loadable(files, s)
        advance(s, 4)
        files.crash_at_op = files.ops + crash_at
        with pytest.raises(SimulatedCrash):
            trio.run(s.backup_now)
        files.crash(unsynced)
        after = loadable(files, s)  # every file under a backup's name loads
        new = backup_name("c1", 4)
        # Nothing earlier is lost, unless the new one is whole (then pruning may begin).
        assert set(before) <= set(after) or new in after, (crash_at, before, after)
        advance(s, 5)
        assert trio.run(s.backup_now) is not None  # the next round cleans up and works
        names = loadable(files, s)
        assert len(names) == 3 and max(names.values()) == 5
        assert not [n for n in files.listdir(DIR) if n.endswith(".tmp")]


def test_a_damaged_backup_never_loads() -> None:
    files = MemoryFiles()
    s = scheduler(files)
    advance(s, 1)
    path = trio.run(s.backup_now)
    assert path is not None
    data = bytearray(files.read(path))
    data[-9] ^= 0x01
    files.create(path + ".bad")
    files.append(path + ".bad", bytes(data))
    with pytest.raises(BackupError, match="checksum"):
        load_backup(path + ".bad", files)


def test_only_the_leader_of_a_real_cluster_writes_backups(tmp_path: Path) -> None:
    procs = ProcessCluster(tmp_path)
    for n, node in procs.nodes.items():
        node.args += ["--set", "backup.interval_s=1", "--set", f"backup.dir={tmp_path}/bk-{n}"]
    try:
        procs.start_all()
        leader = procs.wait_for_leader()
        procs.put("k", "v")
        deadline = time.monotonic() + 30
        while not list((tmp_path / f"bk-{leader}").glob("*.fxbk")):
            assert time.monotonic() < deadline, "no backup from the leader"
            time.sleep(0.1)  # polling for a file to appear, bounded
        (path,) = list((tmp_path / f"bk-{leader}").glob("*.fxbk"))[:1]
        meta, _ = load_backup(str(path))
        assert meta.cluster_id == procs.cluster_id
        _, metrics = procs.nodes[leader].get_text("/metrics")
        assert "felix_backups_written_total" in metrics
        written = [line for line in metrics.splitlines() if line.startswith("felix_backups_w")]
        assert float(written[0].split()[-1]) >= 1
        if procs.wait_for_leader() == leader:  # no leader change since: followers wrote none
            for n in procs.nodes:
                if n != leader:
                    assert not list((tmp_path / f"bk-{n}").glob("*.fxbk"))
    finally:
        procs.stop_all()
