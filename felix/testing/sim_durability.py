"""What a simulated node's durable disk must show, checked against its `SimDisk` model.

Why a module: two rules tie a node to what is durable, and both are judged against the
model (`felix.testing.simdisk.SimDisk`) rather than the WAL under test:

* persist before send: a granted vote, an ack, an install ack, and a leader's or a
  candidate's message of a term all promise state that must already be durable when
  the message leaves (`check_send_promise`, the ``send_promise`` check);
* recovery: what the WAL recovers after a power loss is exactly the model's durable
  image (`recover`, the ``recovery`` check).

`felix.testing.sim_world` calls them; they hold no state.
"""

from __future__ import annotations

from felix.proto.raft_messages import (
    AppendEntries,
    AppendResponse,
    ConfState,
    InstallSnapshot,
    RequestVote,
    SnapshotResponse,
    TimeoutNow,
    VoteResponse,
)
from felix.raft.ready import Outbound
from felix.raft.types import BootState
from felix.storage.errors import StorageError
from felix.storage.memory_wal import MemoryWal
from felix.testing.checkers import ClusterChecker, InvariantViolation
from felix.testing.simdisk import SimDisk

__all__ = ["check_send_promise", "recover"]

# Messages whose term the sender must have made durable before sending them.
_TERM_PROMISES = (AppendEntries, InstallSnapshot, TimeoutNow, RequestVote)


def check_send_promise(
    checker: ClusterChecker, node_id: int, disk: SimDisk, item: Outbound
) -> None:
    """Votes and acks promise durable state (§5.1 figure 2): check the disk."""
    msg = item.message
    if isinstance(msg, VoteResponse) and msg.granted and not msg.pre_vote:
        hs = disk.hard_state
        durable = hs.term > msg.term or (hs.term == msg.term and hs.vote == item.to)
        checker.observe_send_promise(
            node_id, f"a vote for {item.to} in term {msg.term}", durable,
            lambda: f"its durable hard state {hs} records it",
        )  # fmt: skip
        checker.observe_vote_sent(node_id, msg.term, item.to)
    elif isinstance(msg, AppendResponse) and msg.success:
        durable = disk.last_index >= msg.match_index
        checker.observe_send_promise(
            node_id, f"an ack of index {msg.match_index}", durable,
            lambda: f"its durable log (last index {disk.last_index}) holds it",
        )  # fmt: skip
    elif isinstance(msg, SnapshotResponse) and msg.installed:
        durable = disk.last_index >= msg.snapshot_index
        checker.observe_send_promise(
            node_id, f"an install ack of snapshot {msg.snapshot_index}", durable,
            lambda: f"its durable snapshot and log (to {disk.last_index}) cover it",
        )  # fmt: skip
    elif isinstance(msg, _TERM_PROMISES) and not getattr(msg, "pre_vote", False):
        # A leader's messages and a candidate's requests act on a term (and vote)
        # that a crash must not forget: that term is durable before they leave.
        hs = disk.hard_state
        checker.observe_send_promise(
            node_id, f"{type(msg).__name__} of term {msg.term}", hs.term >= msg.term,
            lambda: f"its durable hard state {hs} reaches that term",
        )  # fmt: skip


def recover(
    checker: ClusterChecker, node_id: int, wal: MemoryWal, disk: SimDisk, conf: ConfState
) -> BootState:
    """Open the WAL (replay, repair a torn tail); it must give back the model's image."""
    try:
        boot = wal.open(conf)
    except StorageError as exc:
        raise InvariantViolation(
            "recovery", f"node {node_id} cannot recover its WAL: {exc}"
        ) from exc
    expected = disk.expected_boot(conf)
    if boot != expected:
        checker.fail("recovery", f"node {node_id}: {_boot_difference(boot, expected)}")
    return boot


def _boot_difference(boot: BootState, expected: BootState) -> str:
    """How a recovered `BootState` differs from the model's durable image."""
    problems = []
    if boot.hard_state != expected.hard_state:
        problems.append(f"hard state {boot.hard_state}, durable {expected.hard_state}")
    if boot.conf != expected.conf:
        problems.append(f"membership {boot.conf}, durable {expected.conf}")
    got = boot.snapshot[0] if boot.snapshot else None
    want = expected.snapshot[0] if expected.snapshot else None
    if got != want or (boot.snapshot and expected.snapshot and boot.snapshot != expected.snapshot):
        problems.append(f"snapshot {got}, durable {want}")
    if boot.entries != expected.entries:
        ours = [(e.index, e.term) for e in boot.entries]
        theirs = [(e.index, e.term) for e in expected.entries]
        pairs = zip(boot.entries, expected.entries, strict=False)
        diverge = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(ours), len(theirs)))
        problems.append(
            f"log of {len(ours)} entries {ours[diverge : diverge + 3]}... from position "
            f"{diverge}, durable {len(theirs)} entries {theirs[diverge : diverge + 3]}..."
        )
    return "recovered " + "; ".join(problems)
