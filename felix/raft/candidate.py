"""Elections: pre-vote (thesis §9.6), then a real vote (§5.2).

A pre-candidate asks "would you vote for me at term+1?" without changing any state, and
only a yes from a majority lets it bump its term and campaign for real.  So a node that
was cut off (and, without pre-vote, would come back with an inflated term and depose a
healthy leader) cannot disrupt anything: its pre-votes are refused by followers that
still hear from the leader (thesis §4.2.3) and its term never moves.

A leadership transfer's election skips the pre-vote (the leader asked for it) and marks
its requests ``leader_transfer`` so voters skip the lease check too (thesis §3.10).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from felix.proto.raft_messages import RequestVote, VoteResponse
from felix.raft import leader
from felix.raft.quorum import VoteResult, vote_result
from felix.raft.types import Role

if TYPE_CHECKING:
    from felix.raft.core import RaftCore


def campaign(core: RaftCore, transfer: bool) -> None:
    if core.config.pre_vote and not transfer:
        _become_pre_candidate(core)
    else:
        _become_candidate(core, transfer)


def _become_pre_candidate(core: RaftCore) -> None:
    if core.role is Role.LEADER:
        leader.step_down(core)
    core.role = Role.PRE_CANDIDATE
    core.leader_id = None
    core.votes = {core.node_id: True}
    core.reset_election_timer()
    request = RequestVote(
        core.term + 1, core.node_id, core.log.last_index, core.log.last_term, True, False
    )
    for voter in core.conf.voters:
        if voter != core.node_id:
            core.send(voter, request)  # changes nothing here, so nothing to persist first
    _tally(core)


def _become_candidate(core: RaftCore, transfer: bool) -> None:
    if core.role is Role.LEADER:
        leader.step_down(core)
    core.set_term(core.term + 1)
    core.vote = core.node_id  # §5.2: vote for self
    core.role = Role.CANDIDATE
    core.leader_id = None
    # Our own vote counts only once it is durable (`self_vote_persisted`): a node must
    # not act on a term or vote a crash could forget (§5.1 figure 2).
    core.votes = {}
    core.reset_election_timer()
    request = RequestVote(
        core.term, core.node_id, core.log.last_index, core.log.last_term, False, transfer
    )
    for voter in core.conf.voters:
        if voter != core.node_id:
            # Figure 2: the new term and our own vote are durable before anyone is asked.
            core.respond(voter, request)
    _tally(core)


def self_vote_persisted(core: RaftCore, term: int, vote: int | None) -> None:
    """The driver made (``term``, ``vote``) durable: if that is our vote for ourselves in
    the election we are running, it counts now (`felix.raft.types.HardStatePersisted`).

    Counting it at once would let a single voter become leader, and send AppendEntries
    of its new term in ``Ready.send_now``, before that term is on disk; after a crash it
    would reuse the term and give a learner a second, different entry at the same index
    and term (tests/raft/test_election.py, the single-voter-with-learner scenario)."""
    if core.role is not Role.CANDIDATE or term != core.term or vote != core.node_id:
        return
    if core.node_id not in core.votes:
        core.votes[core.node_id] = True
        _tally(core)


def handle_vote_response(core: RaftCore, sender: int, m: VoteResponse) -> None:
    if core.role is Role.PRE_CANDIDATE:
        if not m.pre_vote:
            return
        expected = core.term + 1 if m.granted else core.term
        if m.term != expected:
            return  # an answer to an older campaign
    elif m.pre_vote or m.term != core.term:
        return
    if sender not in core.votes:  # the first answer from each voter counts
        core.votes[sender] = m.granted
    _tally(core)


def _tally(core: RaftCore) -> None:
    result = vote_result(core.conf.voters, core.votes)
    if result is VoteResult.WON:
        if core.role is Role.PRE_CANDIDATE:
            _become_candidate(core, transfer=False)
        else:
            leader.become_leader(core)
    elif result is VoteResult.LOST:
        core.become_follower(core.term, None)
