"""Membership changes (thesis ch. 4, single-server) and ReadIndex (thesis §6.4)."""

from __future__ import annotations

from felix.proto.raft_messages import (
    AppendEntries,
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    RequestVote,
)
from felix.raft.membership import encode_change
from felix.raft.ready import ProposalAccepted, ReadRefused, ReadState
from felix.raft.types import Campaign, ProposeConfChange, ReadIndex, Receive, Role
from tests.raft.harness import Network

ADD, PROMOTE, REMOVE = ConfChangeKind.ADD_LEARNER, ConfChangeKind.PROMOTE, ConfChangeKind.REMOVE


def change(net: Network, nid: int, kind: ConfChangeKind, node: int, rid: int = 1) -> None:
    net.step(nid, ProposeConfChange(rid, ConfChange(kind, node)))


def last_refusal(net: Network, nid: int) -> str:
    return net.nodes[nid].refused[-1].reason


# -- membership ------------------------------------------------------------------------


def test_add_learner_replicates_but_never_counts_4_2_1() -> None:
    """Thesis §4.2.1: a learner receives the log but never counts toward a commit quorum."""
    net = Network(extra=(4,))
    net.elect(1)
    change(net, 1, ADD, 4)
    net.tick_deliver(3)
    assert all(net.core(n).conf == ConfState((1, 2, 3), (4,)) for n in (1, 2, 3, 4))
    net.propose(1, "a")
    net.deliver()
    assert net.applied_data(4) == ["a"]
    net.partition({1, 4}, {2, 3})
    net.propose(1, "b")
    net.tick_deliver(3)
    assert net.core(4).last_index == net.core(1).last_index  # replicated to the learner
    assert net.core(1).commit_index < net.core(1).last_index  # but 1 + learner commit nothing


def test_learner_never_votes_or_campaigns_4_2_1() -> None:
    """A learner's clock never starts an election, and candidates do not ask it."""
    net = Network(learners=(4,), pre_vote=False)
    net.isolate(1)
    net.tick_deliver(100, nids=[4])
    assert net.core(4).role is Role.FOLLOWER and net.core(4).term == 0
    net.heal()
    net.step(2, Campaign())
    asked = {m.to for m in net.queue if isinstance(m.msg, RequestVote)}
    assert asked == {1, 3}


def test_learner_promotion_refused_while_lagging_then_accepted_4_2_1() -> None:
    """Thesis §4.2.1: promote only a caught-up learner (match within
    promote_lag_entries_max of the leader's last index); refuse otherwise, saying why."""
    net = Network(extra=(4,), promote_lag_entries_max=10)
    net.elect(1)
    change(net, 1, ADD, 4)
    net.tick_deliver(2)
    net.isolate(4)
    for i in range(30):
        net.propose(1, f"e{i}")
    net.deliver()
    change(net, 1, PROMOTE, 4, rid=2)
    assert "not caught up" in last_refusal(net, 1)
    net.heal()
    net.tick_deliver(3)
    change(net, 1, PROMOTE, 4, rid=3)
    assert net.nodes[1].proposed[-1] == ProposalAccepted(3, net.core(1).last_index, 1)
    net.tick_deliver(2)
    assert all(net.core(n).conf == ConfState((1, 2, 3, 4), ()) for n in (1, 2, 3, 4))
    # Now 4 counts: with 2 and 3 cut off, 1 + 4 are not a majority of four voters...
    net.partition({1, 4}, {2, 3})
    net.propose(1, "x")
    net.deliver()
    assert net.applied_data(4)[-1] != "x"
    net.heal()
    net.tick_deliver(3)
    assert net.applied_data(4)[-1] == "x"


def test_removing_a_follower_4_1() -> None:
    """Thesis §4.1: the leader stops replicating to a removed follower and counts quorums in
    the new configuration (2 voters: both needed)."""
    net = Network()
    net.elect(1)
    change(net, 1, REMOVE, 3)
    net.tick_deliver(2)
    assert net.core(1).conf == ConfState((1, 2), ())
    assert 3 not in net.core(1).progress
    net.propose(1, "a")
    net.deliver()
    assert net.applied_data(2) == ["a"] and net.applied_data(3) == []
    # 3 never hears of its removal (the leader stops sending at once, thesis §4.2.2), so
    # it times out; its pre-votes are ignored by nodes in the leader's lease (§4.2.3).
    net.tick_deliver(50)
    assert net.leader() == 1 and net.core(1).term == 1 and net.core(3).term == 1


def test_removing_the_leader_4_2_2() -> None:
    """Thesis §4.2.2: a leader removing itself keeps leading (without counting itself)
    until the change commits, then steps down; the rest elect a leader."""
    net = Network()
    net.elect(1)
    net.nodes[1].hold_persisted = True  # its own copy must not matter any more
    change(net, 1, REMOVE, 1)
    assert net.core(1).role is Role.LEADER and net.core(1).conf.voters == (2, 3)
    net.deliver()
    assert net.core(1).role is Role.FOLLOWER
    net.tick_deliver(60)
    leader = net.leader()
    assert leader in (2, 3)
    net.propose(leader, "after")
    net.deliver()
    assert net.applied_data(2) == ["after"] and net.core(1).role is Role.FOLLOWER


def test_one_membership_change_at_a_time_4_1() -> None:
    """Thesis §4.1: a new change is refused while one is uncommitted."""
    net = Network(extra=(4, 5))
    net.elect(1)
    change(net, 1, ADD, 4, rid=1)
    change(net, 1, ADD, 5, rid=2)
    assert "not yet committed" in last_refusal(net, 1)
    net.deliver()
    change(net, 1, ADD, 5, rid=3)
    assert net.nodes[1].proposed[-1].request_id == 3


def test_no_membership_change_before_leader_commits_its_term_4_1() -> None:
    """Thesis §4.1 bug fix: a new leader may not append a change before an entry of its
    own term (its NOOP) has committed."""
    net = Network(extra=(4,))
    net.step(1, Campaign())
    net.deliver(keep=lambda m: not isinstance(m.msg, AppendEntries))
    assert net.core(1).role is Role.LEADER and net.core(1).commit_index == 0
    change(net, 1, ADD, 4)
    assert "not yet committed an entry of its term" in last_refusal(net, 1)


def test_uncommitted_config_rolled_back_when_truncated_4_1() -> None:
    """Thesis §4.1: a configuration is in effect as soon as it is appended, and rolled back
    if a new leader truncates its entry."""
    net = Network(extra=(4,))
    net.elect(1)
    c2 = net.core(2)
    config_entry = Entry(2, 1, EntryKind.CONFIG, encode_change(ConfChange(ADD, 4)))
    c2.step(Receive(1, AppendEntries(1, 1, 1, 1, (config_entry,), 1, 5)))
    assert c2.conf == ConfState((1, 2, 3), (4,))  # uncommitted, already in effect
    other = Entry(2, 2, EntryKind.NOOP, b"")
    c2.step(Receive(3, AppendEntries(2, 3, 1, 1, (other,), 1, 1)))
    assert c2.conf == ConfState((1, 2, 3), ()) and c2.last_term == 2
    ready = c2.take_ready()
    assert ready.entries[0].index == 2  # the truncation reaches the disk as an overwrite


# -- ReadIndex -------------------------------------------------------------------------


def test_read_index_needs_a_heartbeat_quorum_6_4() -> None:
    """Thesis §6.4: the leader answers only after a majority acks a heartbeat round that
    started after the request; a leader cut off from everyone cannot answer."""
    net = Network()
    net.elect(1)
    net.propose(1, "a")
    net.deliver()
    net.isolate(1)
    net.step(1, ReadIndex(7))
    net.deliver()
    assert net.nodes[1].read_states == []
    net.heal()
    net.tick_deliver(1)
    assert net.nodes[1].read_states == [ReadState(7, 2)]


def test_read_index_ignores_acks_of_older_rounds_6_4() -> None:
    """Acks already in flight when the read arrived do not confirm it."""
    net = Network()
    net.elect(1)
    net.tick([1])
    old_round = net.take()  # heartbeats of the round before the read
    net.step(1, ReadIndex(1))
    new_round = net.take()
    for m in old_round:
        net.deliver_one(m)
    net.deliver()
    assert net.nodes[1].read_states == []
    for m in new_round:
        net.deliver_one(m)
    net.deliver()
    assert net.nodes[1].read_states == [ReadState(1, 1)]


def test_read_index_deferred_until_leader_commits_its_term_6_4() -> None:
    """Thesis §6.4 step 1: before an entry of its term commits, a new leader's commit index
    may be stale, so reads wait."""
    net = Network()
    net.step(1, Campaign())
    held = net.deliver_except(lambda m: isinstance(m.msg, AppendEntries))
    assert net.core(1).role is Role.LEADER
    net.step(1, ReadIndex(5))
    assert net.nodes[1].read_states == [] and not net.nodes[1].refused
    net.queue.extend(held)
    net.deliver()
    net.tick_deliver(1)
    assert net.nodes[1].read_states == [ReadState(5, 1)]


def test_read_index_refused_on_follower_with_hint_6_4() -> None:
    net = Network()
    net.elect(1)
    net.step(2, ReadIndex(3))
    assert net.nodes[2].refused == [ReadRefused(3, 1, "not leader")]


def test_read_index_single_voter_answers_immediately_6_4() -> None:
    net = Network(voters=(1,))
    net.elect(1)
    net.step(1, ReadIndex(1))
    assert net.nodes[1].read_states == [ReadState(1, 1)]


def test_pending_reads_refused_when_leadership_lost_6_4() -> None:
    net = Network(election_ticks=5)
    net.elect(1)
    net.isolate(1)
    net.step(1, ReadIndex(9))
    net.tick_deliver(10, nids=[1])
    assert net.core(1).role is Role.FOLLOWER
    assert net.nodes[1].refused == [ReadRefused(9, None, "leadership lost")]
