"""Leadership transfer (thesis §3.10) and snapshots/compaction (§7)."""

from __future__ import annotations

from felix.proto.raft_messages import InstallSnapshot, SnapshotResponse, TimeoutNow
from felix.raft.ready import ProposalRefused
from felix.raft.types import Propose, Role, TransferLeader
from tests.raft.harness import Message, Network


def is_chunk(m: Message) -> bool:
    return isinstance(m.msg, InstallSnapshot)


# -- leadership transfer -------------------------------------------------------------


def test_transfer_to_lagging_follower_catches_it_up_first_3_10() -> None:
    """Thesis §3.10: the leader stops taking proposals, brings the target up to date,
    then sends TimeoutNow; the target wins the next term at once (no pre-vote, lease
    skipped)."""
    net = Network()
    net.elect(1)
    net.cut.add((1, 3))
    for i in range(5):
        net.propose(1, f"e{i}")
    net.deliver()
    assert net.core(3).last_index == 1
    net.heal()
    net.step(1, TransferLeader(3))
    assert not any(isinstance(m.msg, TimeoutNow) for m in net.queue)  # not caught up yet
    net.step(1, Propose(42, b"late"))
    assert net.nodes[1].refused == [ProposalRefused(42, 1, "leadership transfer in progress")]
    net.tick_deliver(1)
    assert net.leader() == 3 and net.core(3).term == 2
    assert net.applied_data(3) == [f"e{i}" for i in range(5)]
    assert any("TimeoutNow" in t for t in net.trace)


def test_transfer_to_caught_up_follower_is_immediate_3_10() -> None:
    net = Network()
    net.elect(1)
    net.step(1, TransferLeader(2))
    net.deliver()
    assert net.leader() == 2 and net.core(1).role is Role.FOLLOWER


def test_transfer_aborted_after_election_timeout_3_10() -> None:
    """Thesis §3.10: if the target does not take over within an election timeout, the
    leader aborts the transfer and accepts proposals again."""
    net = Network(election_ticks=10)
    net.elect(1)
    net.isolate(3)
    net.step(1, TransferLeader(3))
    assert net.core(1).transfer_target == 3
    net.tick_deliver(10, nids=[1, 2])
    assert net.core(1).transfer_target is None and net.leader() == 1
    net.propose(1, "after")
    net.deliver()
    assert net.applied_data(2) == ["after"]


def test_transfer_to_learner_or_self_is_ignored() -> None:
    net = Network(learners=(4,))
    net.elect(1)
    net.step(1, TransferLeader(4))
    net.step(1, TransferLeader(1))
    assert net.core(1).transfer_target is None


# -- snapshots -----------------------------------------------------------------------


def _lagging_behind_snapshot(chunk_bytes: int = 64) -> Network:
    net = Network(snapshot_chunk_bytes=chunk_bytes)
    net.elect(1)
    net.isolate(3)
    for i in range(20):
        net.propose(1, f"entry-{i}")
    net.deliver()
    net.nodes[1].take_snapshot()
    assert net.core(1).first_index == 22
    assert net.nodes[1].readies[-1].compact_to is None  # compact_to is in the next Ready
    net.process(1)
    net.heal()
    return net


def test_snapshot_sent_to_follower_behind_log_start_7() -> None:
    """§7: a follower whose next index was compacted away gets InstallSnapshot in
    snapshot_chunk_bytes chunks, installs it, then continues from the log."""
    net = _lagging_behind_snapshot()
    net.tick_deliver(3)
    chunks = [t for t in net.trace if "InstallSnapshot" in t]
    assert len(chunks) > 3
    c3 = net.core(3)
    assert c3.snapshot_meta is not None and c3.snapshot_meta.index == 21
    assert net.applied_data(3) == [f"entry-{i}" for i in range(20)]
    net.propose(1, "after")
    net.deliver()
    assert net.applied_data(3)[-1] == "after"
    net.assert_logs_match()


def test_lost_snapshot_chunk_resumes_from_follower_offset_7() -> None:
    """A lost chunk is resent from the offset the follower reports (SnapshotResponse
    next_offset), not from zero; duplicated chunks are harmless."""
    net = _lagging_behind_snapshot()
    net.tick([1])
    [c0] = net.deliver_except(is_chunk)
    assert c0.msg.offset == 0  # type: ignore[union-attr]
    net.deliver_one(c0)
    [c1] = net.deliver_except(is_chunk)
    assert c1.msg.offset == 64  # type: ignore[union-attr]
    # c1 is lost.  A heartbeat round with no chunk progress since the previous one
    # resends from the follower's offset, 64.
    net.tick([1])
    assert net.deliver_except(is_chunk) == []  # c1 might still be in flight
    net.tick([1])
    resent = net.deliver_except(is_chunk)
    assert [m.msg.offset for m in resent] == [64]  # type: ignore[union-attr]
    net.queue.extend(resent + resent + [c0])  # duplicated, and an old one replayed
    net.tick_deliver(3)
    assert net.applied_data(3) == [f"entry-{i}" for i in range(20)]


def test_reordered_chunk_gets_a_resume_offset_7() -> None:
    net = _lagging_behind_snapshot()
    net.tick([1])
    first = net.deliver_except(is_chunk)
    meta = first[0].msg.meta  # type: ignore[union-attr]
    # A chunk from the middle arrives before the beginning: "start at 0".
    net.deliver_one(Message(1, 3, InstallSnapshot(1, 1, meta, 128, b"zz", False)))
    answers = [m.msg for m in net.queue if isinstance(m.msg, SnapshotResponse)]
    assert answers and answers[-1].next_offset == 0 and not answers[-1].installed
    net.queue.extend(first)
    net.tick_deliver(3)
    c3 = net.core(3)
    assert c3.commit_index >= 21 and c3.snapshot_meta is not None


def test_corrupted_snapshot_is_refused_and_restarted_7() -> None:
    """A reassembled snapshot whose size or crc32 does not match its meta is discarded and
    the transfer starts over; nothing corrupt is installed."""
    net = _lagging_behind_snapshot(chunk_bytes=10_000)
    net.tick([1])
    [chunk] = net.deliver_except(is_chunk)
    msg = chunk.msg
    assert isinstance(msg, InstallSnapshot) and msg.done
    bad = InstallSnapshot(msg.term, msg.leader, msg.meta, 0, msg.chunk[:-1] + b"!", True)
    net.deliver_one(Message(1, 3, bad))
    assert net.core(3).snapshot_meta is None
    assert net.nodes[3].readies[-1].snapshot is None
    net.tick_deliver(3)
    assert net.applied_data(3) == [f"entry-{i}" for i in range(20)]


def test_stale_snapshot_is_ignored_7() -> None:
    """A snapshot at or below the follower's commit index changes nothing (acked as
    installed so the leader moves on)."""
    net = _lagging_behind_snapshot(chunk_bytes=10_000)
    net.tick_deliver(3)
    c3 = net.core(3)
    meta = c3.snapshot_meta
    assert meta is not None
    first_before = c3.first_index
    net.deliver_one(Message(1, 3, InstallSnapshot(1, 1, meta, 0, b"", True)))
    assert c3.first_index == first_before
    answers = [m.msg for m in net.queue if isinstance(m.msg, SnapshotResponse)]
    assert answers[-1].installed


def test_snapshot_then_crash_restart_of_leader() -> None:
    """Compaction survives a restart: the leader boots from snapshot + remaining log and
    still brings a lagging follower up via the snapshot."""
    net = _lagging_behind_snapshot(chunk_bytes=100)
    net.isolate(3)
    net.crash(1)
    net.restart(1)
    assert net.core(1).first_index == 22
    net.tick_deliver(40, nids=[1, 2])
    net.heal()
    net.tick_deliver(40)
    leader = net.leader()
    assert leader is not None
    assert net.applied_data(3) == [f"entry-{i}" for i in range(20)]
