"""Elections: §5.1–5.2 basics, pre-vote (thesis §9.6), check-quorum (thesis §6.2), lease
(thesis §4.2.3), stale terms, and votes that are durable before they are sent."""

from __future__ import annotations

import random

from felix.proto.raft_messages import (
    AppendEntries,
    AppendResponse,
    ConfState,
    RequestVote,
    VoteResponse,
)
from felix.raft.core import RaftCore
from felix.raft.types import (
    BootState,
    Campaign,
    HardState,
    HardStatePersisted,
    Propose,
    RaftConfig,
    Receive,
    Role,
    Tick,
)
from tests.raft.harness import Network


def bare_core(nid: int = 1, voters: tuple[int, ...] = (1, 2, 3), **cfg: object) -> RaftCore:
    conf = ConfState(voters, ())
    config = RaftConfig(node_id=nid, **cfg)  # type: ignore[arg-type]
    return RaftCore(config, random.Random(nid), BootState(HardState(), conf))


def test_follower_times_out_and_wins_election_5_2() -> None:
    """§5.2: a follower that hears nothing for an election timeout becomes a candidate,
    votes for itself in a new term, and wins with a majority."""
    net = Network(pre_vote=False)
    net.tick_deliver(25, nids=[1])  # only node 1's clock runs
    c = net.core(1)
    assert c.role is Role.LEADER and c.term == 1 and c.vote == 1
    assert all(net.core(n).leader_id == 1 for n in (2, 3))


def test_election_timeout_is_randomized_in_range_5_2() -> None:
    """§5.2: randomized timeouts in [election_ticks, 2*election_ticks)."""
    seen = set()
    for seed in range(40):
        core = RaftCore(
            RaftConfig(node_id=1, election_ticks=10, pre_vote=False),
            random.Random(seed),
            BootState(HardState(), ConfState((1, 2, 3), ())),
        )
        ticks = 0
        while core.role is Role.FOLLOWER:
            core.step(Tick())
            ticks += 1
        seen.add(ticks)
    assert min(seen) >= 10 and max(seen) <= 19 and len(seen) > 3


def test_candidate_steps_down_on_higher_term_5_1() -> None:
    """§5.1: a candidate or leader that sees a higher term reverts to follower."""
    c = bare_core(pre_vote=False)
    c.step(Campaign())
    assert c.role is Role.CANDIDATE and c.term == 1
    c.step(Receive(2, AppendEntries(3, 2, 0, 0, (), 0, 1)))
    assert (c.role, c.term, c.leader_id, c.vote) == (Role.FOLLOWER, 3, 2, None)


def test_voter_rejects_candidate_with_stale_log_5_4_1() -> None:
    """§5.4.1: votes go only to candidates whose log is at least as up-to-date."""
    net = Network(pre_vote=False, check_quorum=False)
    net.elect(1)
    net.partition({1, 2}, {3})
    net.propose(1, "a")
    net.deliver()
    net.heal()
    net.campaign(3)  # 3 lacks "a": 1 and 2 refuse
    assert net.core(3).role is not Role.LEADER
    net.tick_deliver(60)
    assert net.leader() in (1, 2)
    assert net.applied_data(3) == ["a"]


def test_dueling_candidates_split_vote_then_randomized_timeouts_resolve_5_2() -> None:
    """§5.2 (etcd TestDuelingCandidates): two candidates in one term split a 4-node
    cluster's votes, nobody wins; randomized timeouts make one of them win later."""
    net = Network(voters=(1, 2, 3, 4), pre_vote=False)
    net.partition({1, 2}, {3, 4})
    net.step(1, Campaign())
    net.step(3, Campaign())
    net.deliver()
    assert net.core(1).role is Role.CANDIDATE and net.core(3).role is Role.CANDIDATE
    assert net.core(1).term == net.core(3).term == 1
    net.heal()
    net.tick_deliver(60)
    leader = net.leader()
    assert leader is not None and net.core(leader).term >= 2
    assert sum(net.core(n).role is Role.LEADER for n in net.nodes) == 1


def test_dueling_candidates_stale_log_candidate_cannot_win() -> None:
    """etcd TestDuelingCandidates: 3 campaigns while cut off from 1 and loses; after the
    heal its higher term deposes the leader (no pre-vote/check-quorum), but its shorter
    log cannot win, so an up-to-date node leads again and nothing committed is lost."""
    net = Network(pre_vote=False, check_quorum=False)
    net.cut |= {(1, 3), (3, 1)}
    net.elect(1)
    net.propose(1, "a")
    net.deliver()
    net.campaign(3)
    assert net.core(3).role is Role.CANDIDATE
    net.heal()
    net.campaign(3)
    assert net.core(3).role is Role.FOLLOWER and net.core(1).role is Role.FOLLOWER
    net.tick_deliver(60)
    assert net.leader() in (1, 2)
    assert net.applied_data(3) == ["a"]


def test_prevote_stops_rejoining_partitioned_node_from_disrupting_leader_9_6() -> None:
    """Thesis §9.6 + §4.2.3 (etcd TestDisruptiveFollowerPreVote): a node cut off for a
    long time keeps its term (its pre-votes fail), and on rejoining its pre-votes are
    ignored by followers that hear from the leader: the leader keeps its term."""
    net = Network()
    net.elect(1)
    net.isolate(3)
    net.tick_deliver(100)
    assert net.core(3).term == 1 and net.core(3).role is Role.PRE_CANDIDATE
    net.heal()
    net.step(3, Campaign())
    net.deliver()
    net.tick_deliver(5)
    assert net.leader() == 1 and net.core(1).term == 1
    assert net.core(3).role is Role.FOLLOWER and net.core(3).leader_id == 1


def test_without_prevote_a_rejoining_node_disrupts_the_leader() -> None:
    """The contrast case (§9.6's motivation): without pre-vote and lease the isolated
    node's inflated term deposes a healthy leader."""
    net = Network(pre_vote=False, check_quorum=False)
    net.elect(1)
    net.isolate(3)
    net.tick_deliver(100)
    assert net.core(3).term > 3
    net.heal()
    net.tick_deliver(3)
    assert net.core(1).term > 1  # deposed


def test_check_quorum_leader_steps_down_when_isolated_6_2() -> None:
    """Thesis §6.2: a leader that hears from no majority for a whole election timeout
    steps down (within two timeouts of the isolation: the round in progress had heard
    from its followers); the majority side elects a new leader."""
    net = Network(election_ticks=10)
    net.elect(1)
    net.isolate(1)
    net.tick_deliver(10, nids=[1])
    assert net.core(1).role is Role.LEADER
    net.tick_deliver(10, nids=[1])
    assert net.core(1).role is Role.FOLLOWER and net.core(1).leader_id is None
    net.tick_deliver(40)
    assert net.leader() in (2, 3)


def test_leader_with_active_quorum_stays_6_2() -> None:
    """Thesis §6.2: followers' answers keep the leader in place."""
    net = Network(election_ticks=10)
    net.elect(1)
    net.tick_deliver(100)
    assert net.leader() == 1 and net.core(1).term == 1


def test_follower_in_lease_ignores_vote_requests_4_2_3() -> None:
    """Thesis §4.2.3: a follower that heard from a leader within the minimum election
    timeout ignores a RequestVote of a higher term (no answer, no term change)."""
    net = Network()
    net.elect(1)
    c2 = net.core(2)
    c2.step(Receive(3, RequestVote(5, 3, 100, 5, False, False)))
    assert c2.term == 1 and not c2.has_ready()
    c2.step(Receive(3, RequestVote(5, 3, 100, 5, False, True)))  # leadership transfer
    assert c2.term == 5 and c2.vote == 3


def test_old_term_messages_are_ignored_or_rejected() -> None:
    """§5.1 (etcd TestOldMessages): a request from an old term is rejected with the current
    term, an answer from an old term is dropped; the log is untouched."""
    net = Network()
    net.elect(1)
    net.isolate(1)
    net.tick_deliver(60, nids=[2, 3])
    new = net.leader()
    assert new in (2, 3)
    old_term = 1
    follower = 5 - new
    c = net.core(follower)
    before = c.entries(1, c.last_index + 1)
    c.step(Receive(1, AppendEntries(old_term, 1, 0, 0, (), 99, 7)))
    ready = c.take_ready()
    [out] = ready.send_after_persist
    assert isinstance(out.message, AppendResponse) and not out.message.success
    assert out.message.term == c.term and c.entries(1, c.last_index + 1) == before
    lc = net.core(new)
    lc.step(Receive(follower, AppendResponse(old_term, True, 10_000, 0, None, 999)))
    lc.step(Receive(follower, VoteResponse(old_term, True, False)))
    assert lc.commit_index < 10_000 and lc.role is Role.LEADER


def test_vote_persisted_before_it_is_sent_5_1() -> None:
    """§5.1 figure 2: the candidate's own vote and the voter's granted vote are in the
    Ready's hard state, and the messages relying on them are in send_after_persist."""
    cand = bare_core(1, pre_vote=False)
    cand.step(Campaign())
    r = cand.take_ready()
    assert r.hard_state == HardState(term=1, vote=1, commit=0)
    assert not r.send_now and {o.to for o in r.send_after_persist} == {2, 3}
    voter = bare_core(2, pre_vote=False)
    voter.step(Receive(1, r.send_after_persist[0].message))
    r2 = voter.take_ready()
    assert r2.hard_state == HardState(term=1, vote=1, commit=0)
    [out] = r2.send_after_persist
    assert out.message == VoteResponse(1, True, False) and not r2.send_now


def test_prevote_changes_no_state_9_6() -> None:
    """Thesis §9.6: a pre-candidate does not bump its term or vote, and a voter granting a
    pre-vote does not record a vote."""
    c = bare_core(1)
    c.step(Campaign())
    assert c.role is Role.PRE_CANDIDATE and c.term == 0 and c.vote is None
    r = c.take_ready()
    req = r.send_now[0].message
    assert isinstance(req, RequestVote) and req.pre_vote and req.term == 1
    v = bare_core(2)
    v.step(Receive(1, req))
    assert v.term == 0 and v.vote is None
    c.step(Receive(2, v.take_ready().send_after_persist[0].message))
    role_after: Role = c.role  # (mypy narrowed c.role above; the step changed it)
    assert role_after is Role.CANDIDATE and c.term == 1 and c.vote == 1


def test_single_voter_elects_itself_once_its_vote_is_durable() -> None:
    """§5.1 figure 2: a single voter's own vote is its whole quorum, so it counts only
    once the batch holding (term, vote) is durable (`HardStatePersisted`)."""
    c = bare_core(1, voters=(1,))
    c.step(Campaign())
    assert c.role is Role.CANDIDATE and c.term == 1 and c.vote == 1
    r = c.take_ready()
    assert r.must_sync and r.hard_state == HardState(1, 1, 0)
    assert not r.send_now and not r.entries
    c.step(HardStatePersisted(0, None))  # an older write: not this vote
    assert c.role is Role.CANDIDATE
    c.step(HardStatePersisted(1, 1))
    role_after: Role = c.role  # (mypy narrowed c.role above; the step changed it)
    assert role_after is Role.LEADER and c.term == 1


def test_single_voter_with_learner_sends_nothing_of_a_term_not_durable_5_1() -> None:
    """§5.1 figure 2: nothing that depends on a term or vote goes out before they are
    durable.  One voter and one learner: an election and a proposal A in one batch; the
    voter crashes before that batch's write completes and comes back at term 0.  If it
    had led term 1 at once, A@2 (term 1) would already be at the learner; re-elected in
    term 1 it commits B@2 (term 1), the learner's A@2 passes as a match, and the two
    nodes apply different entries at index 2."""
    net = Network(voters=(1,), learners=(2,))
    core = net.core(1)
    core.step(Campaign())
    core.step(Propose(1, b"A"))
    net.crash_during_write(1)
    net.deliver()  # whatever went out in send_now reaches the learner
    net.restart(1)
    assert net.core(1).term == 0  # the lost batch held term 1
    net.elect(1)
    assert net.core(1).term == 1
    net.propose(1, "B")
    net.deliver()
    net.tick_deliver(3)
    assert net.applied_data(1) == ["B"]
    assert net.applied_data(2) == ["B"], net.nodes[2].applied
    net.assert_logs_match()


def test_restart_from_bootstate_keeps_term_and_vote() -> None:
    """§5.1: currentTerm and votedFor survive a crash, so a node never votes twice in a
    term."""
    net = Network(pre_vote=False)
    net.elect(1)
    net.crash(2)
    net.restart(2)
    c2 = net.core(2)
    assert (c2.term, c2.vote) == (1, 1)
    c2.step(Receive(3, RequestVote(1, 3, 99, 1, False, False)))
    [out] = c2.take_ready().send_after_persist
    assert out.message == VoteResponse(1, False, False)
