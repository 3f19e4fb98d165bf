"""The real boot path on real files: a node whose newest snapshot is damaged starts from
the previous one plus the log and ends at the same metadata state as an undamaged copy.

One metadata `RaftNode` (a one-voter cluster) writes through the production WAL and
snapshot store in ``tmp_path`` (`SyncWal` on the real disk, inline under MockClock),
taking a snapshot every 20 entries.  Its data directory is copied, the newest snapshot
of one copy damaged, and both are booted the way `felix.server.app.run_node` boots: open
the WAL, build the metadata parts, restore the boot snapshot in the `RaftNode`, run until
the log is applied.  Version and digest must be equal, and equal to the ones the first
run ended at.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from felix.metadata import commands as cmds
from felix.metadata.state import MetadataState
from felix.proto.raft_messages import ConfState
from felix.raft.types import RaftConfig, Role
from felix.server.graph import MetadataParts
from felix.server.metadata_sm import metadata_outcome
from felix.server.raft_node import NodeSettings, RaftNode
from felix.storage.segmented_wal import SNAP_DIR, SegmentedWal, SyncWal
from felix.storage.snapshots import HEADER_BYTES
from felix.testing.cluster import TICK_S
from felix.transport.base import Deliver, PeerTransport
from felix.transport.memory import MemoryNetwork, MemoryTransport
from tests.storage.test_snapshot_fallback import truncate, write_node

CONF = ConfState((1,), ())
SETTINGS = NodeSettings(tick_s=TICK_S, snapshot_entries=20, snapshot_in_thread=False)
WRITES = 110


@dataclass
class Node:
    node: RaftNode
    parts: MetadataParts
    wal: SegmentedWal

    @property
    def state(self) -> MetadataState:
        return self.parts.store.state


def build(directory: Path) -> Node:
    """What `run_node` builds: the WAL opened first, then the parts and the node."""
    core = SyncWal(str(directory), segment_bytes_max=2048, snapshots_keep=3)
    boot = core.open(CONF)
    wal = SegmentedWal(core, offload=False)
    parts = MetadataParts.build()
    network = MemoryNetwork(0)

    def transport(deliver: Deliver) -> PeerTransport:
        return MemoryTransport(network, 1, {1}, deliver)

    node = RaftNode(
        RaftConfig(node_id=1),
        boot,
        wal,
        transport,
        parts.state_machine,
        settings=SETTINGS,
        rng=random.Random(1),
        outcome_of=metadata_outcome,
    )
    return Node(node, parts, wal)


async def until(node: RaftNode, done: object) -> None:
    """Wait, Ready by Ready, until ``done()`` holds (bounded in virtual time)."""
    assert callable(done)
    with trio.fail_after(60):
        while not done():
            await node.wait_changed()


async def run(node: Node, writes: int) -> None:
    """Run until leader and everything in the log is applied; ``writes`` more commands;
    then wait for the snapshot in flight and stop."""
    raft = node.node
    async with trio.open_nursery() as nursery:
        await nursery.start(raft.run)
        await until(raft, lambda: raft.core.role is Role.LEADER)
        for i in range(writes):
            cmd = cmds.RegisterNode(i % 9 + 1, f"10.0.0.{i % 9 + 1}:{9000 + i}", rack=f"r{i % 3}")
            await raft.propose(cmds.encode_command(cmd), timeout_s=5)
        await until(
            raft,
            lambda: raft.applied_index == raft.core.last_index and not raft._snapshotting,
        )
        nursery.cancel_scope.cancel()
    await node.wal.aclose()


def flip_data_bit(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2 + HEADER_BYTES // 2] ^= 0x04
    path.write_bytes(bytes(blob))


DAMAGE = {
    "truncated": lambda path: path.write_bytes(path.read_bytes()[:-5]),
    "flipped-bit": flip_data_bit,
    "missing": lambda path: path.unlink(),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
async def test_a_node_boots_past_a_damaged_newest_snapshot_to_the_same_state(
    autojump_clock: trio.abc.Clock, tmp_path: Path, damage: str
) -> None:
    first = build(tmp_path / "node")
    await run(first, WRITES)
    live = (first.node.applied_index, first.state.digest)
    snapshots = sorted((tmp_path / "node" / SNAP_DIR).glob("*.snap"))
    assert len(snapshots) == 3
    indexes = [int(p.name[:16], 16) for p in snapshots]
    shutil.copytree(tmp_path / "node", tmp_path / "undamaged")
    DAMAGE[damage](snapshots[-1])

    undamaged, damaged = build(tmp_path / "undamaged"), build(tmp_path / "node")
    assert undamaged.node.status().snapshot_index == indexes[-1]
    assert damaged.node.status().snapshot_index == indexes[-2]  # the previous one
    assert damaged.node.applied_index == indexes[-2] == damaged.state.version
    report = damaged.wal.core.boot_report
    if damage != "missing":
        assert [d.path for d in report.damaged] == [str(snapshots[-1])] and report.fell_back
        assert snapshots[-1].exists()  # left in place
    await run(undamaged, 0)
    await run(damaged, 0)
    # Both re-applied the log (and one NOOP of the new term each): the same state.
    assert damaged.node.applied_index == undamaged.node.applied_index == live[0] + 1
    assert damaged.state.digest == undamaged.state.digest == live[1]
    assert damaged.state.version == undamaged.state.version


def test_felix_serve_refuses_naming_every_damaged_file(tmp_path: Path) -> None:
    """Every snapshot damaged, the log compacted past them: `felix serve` exits 2 with one
    message naming each file, its problem and what to do (no traceback)."""
    written = write_node(tmp_path / "node")
    snapshots = written.snapshots()
    for path in snapshots[:-1]:
        truncate(path)
    flip_data_bit(snapshots[-1])
    felix = Path(sys.executable).parent / "felix"
    argv = [str(felix), "serve", "--insecure", "--node-id", "1"]
    result = subprocess.run(
        [*argv, "--data-dir", str(written.directory)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    refusal = [line for line in result.stderr.splitlines() if "refusing to start" in line]
    assert len(refusal) == 1 and "Traceback" not in result.stderr
    for path in snapshots:
        assert str(path) in refusal[0]
    assert "cut short" in refusal[0] and "checksum mismatch" in refusal[0]
    assert "restore this node's data directory from a backup" in refusal[0]
    assert all(path.exists() for path in snapshots)
