"""`RaftCore`: the Raft state machine's state, its input dispatcher and its Ready batches.

Theory of operation
-------------------
The core is pure: ``step(input)`` mutates state and accumulates output; ``take_ready()``
hands the accumulated output to the driver as one `Ready`, whose field comments are the
ordering contract (persist before acks and votes go out, apply only what is committed).

Dispatch happens here; the rules of each role live in `follower` (answering a leader and
voting, which every role does), `candidate` (pre-vote and elections) and `leader`
(replication, commit, transfer, membership, ReadIndex).  Those modules are functions over
this object, so all state is in one place and every transition is visible here:
`become_follower`, `candidate.campaign`, `leader.become_leader`.

Term handling (§5.1, figure 2 "all servers"): any message with a higher term makes us a
follower of that term first — except the two cases thesis §9.6/§4.2.3 carve out: a
pre-vote request or a granted pre-vote answer never changes our term, and a vote request
while we are in a leader's lease is ignored unless it is a leadership transfer.  Any
message with a lower term is stale: requests get an answer carrying our term (so an old
leader or candidate steps down), answers are dropped.

A leader does not send while stepping: appends, heartbeats and commit notices are
generated in `take_ready` (`leader.flush`), so a burst of proposals between two Ready
batches becomes a few large AppendEntries rather than one per proposal.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

from felix.proto.raft_messages import (
    AppendEntries,
    AppendResponse,
    ConfState,
    Entry,
    EntryKind,
    InstallSnapshot,
    RaftMessage,
    RequestVote,
    SnapshotMeta,
    SnapshotResponse,
    TimeoutNow,
    VoteResponse,
)
from felix.raft import candidate, follower, leader
from felix.raft.log import RaftLog
from felix.raft.membership import ConfHistory
from felix.raft.progress import Progress
from felix.raft.ready import (
    Outbound,
    ProposalAccepted,
    ProposalRefused,
    ReadRefused,
    ReadState,
    Ready,
)
from felix.raft.types import (
    BootState,
    Campaign,
    HardState,
    HardStatePersisted,
    Input,
    Persisted,
    Propose,
    ProposeConfChange,
    RaftConfig,
    ReadIndex,
    Receive,
    Role,
    SnapshotTaken,
    Tick,
    TransferLeader,
)

if TYPE_CHECKING:
    import random

# Messages that only a leader of the message's term sends: receiving one of a higher term
# tells us who leads.
_FROM_LEADER = (AppendEntries, InstallSnapshot, TimeoutNow)


class RaftCore:
    def __init__(self, config: RaftConfig, rng: random.Random, boot: BootState) -> None:
        assert config.election_ticks > 0 and config.heartbeat_ticks > 0
        self.config = config
        self.rng = rng
        self.node_id = config.node_id

        hs = boot.hard_state
        self.term = hs.term
        self.vote: int | None = hs.vote
        self.role = Role.FOLLOWER
        self.leader_id: int | None = None
        self.log = RaftLog(boot.snapshot, boot.entries)
        self.confs = ConfHistory(boot.snapshot[0].conf if boot.snapshot else boot.conf)
        for e in boot.entries:
            if e.kind is EntryKind.CONFIG:
                self.confs.append(e.index, e.data)
        self.conf: ConfState = self.confs.latest
        self.commit_index = max(hs.commit, self.log.snap_index)
        assert self.commit_index <= self.log.last_index, "boot commit beyond the log"
        # Emitted for apply up to here.  A restart re-applies from the snapshot on.
        self.applied = self.log.snap_index

        self.election_elapsed_ticks = 0
        self.heartbeat_elapsed_ticks = 0
        self.election_timeout_ticks = 0  # randomized per election (§5.2)
        self.reset_election_timer()

        self.votes: dict[int, bool] = {}  # candidate / pre-candidate
        self.snap_recv: tuple[SnapshotMeta, bytearray] | None = None  # follower

        # Leader state, reset by leader.become_leader.
        self.progress: dict[int, Progress] = {}
        self.seq = 0  # heartbeat round counter (thesis §6.4 ReadIndex, §6.2 check-quorum)
        self.acked_seq: dict[int, int] = {}
        self.term_start_index = 0  # index of this leader's NOOP
        self.transfer_target: int | None = None
        self.transfer_elapsed_ticks = 0
        self.reads_deferred: list[int] = []
        self.reads_pending: list[tuple[int, int, int]] = []  # (request_id, index, seq)
        self.read_round_needed = False
        self.flush_needed = False

        # Output accumulated for the next Ready.
        self.send_now: list[Outbound] = []
        self.send_after_persist: list[Outbound] = []
        self.snapshot_out: tuple[SnapshotMeta, bytes] | None = None
        self.compact_to: int | None = None
        self.read_states: list[ReadState] = []
        self.proposed: list[ProposalAccepted] = []
        self.refused: list[ProposalRefused | ReadRefused] = []
        self._hard_state = HardState(hs.term, hs.vote, hs.commit)

    # -- introspection ---------------------------------------------------------------

    @property
    def first_index(self) -> int:
        return self.log.first_index

    @property
    def last_index(self) -> int:
        return self.log.last_index

    @property
    def last_term(self) -> int:
        return self.log.last_term

    @property
    def snapshot_meta(self) -> SnapshotMeta | None:
        return self.log.snapshot[0] if self.log.snapshot else None

    def conf_at(self, index: int) -> ConfState:
        """The membership in effect at log ``index`` (for a snapshot taken there)."""
        return self.confs.at(index)

    def match_indexes(self) -> dict[int, int]:
        """Leader only: how far each peer's log is known to match ours."""
        return {peer: pr.match for peer, pr in sorted(self.progress.items())}

    def entries(self, lo: int, hi: int) -> tuple[Entry, ...]:
        return tuple(self.log.slice(lo, hi))

    def is_voter(self) -> bool:
        return self.node_id in self.conf.voters

    def is_promotable(self) -> bool:
        """May this node start an election?  A voter may; so may a node whose removal is
        appended but not committed (thesis §4.2.2: it may still be needed to commit that
        removal, e.g. a removed leader that lost leadership holding the longest log).
        Quorums are still counted in the latest configuration only."""
        if self.node_id in self.conf.voters:
            return True
        return self.confs.latest_index > self.commit_index and self.node_id in (
            self.confs.at(self.commit_index).voters
        )

    def __repr__(self) -> str:
        return (
            f"RaftCore(id={self.node_id} {self.role.value} term={self.term} "
            f"lead={self.leader_id} commit={self.commit_index} last={self.last_index})"
        )

    # -- input -----------------------------------------------------------------------

    def step(self, inp: Input) -> None:
        if isinstance(inp, Receive):
            self._receive(inp.sender, inp.message)
        elif isinstance(inp, Tick):
            self._tick()
        elif isinstance(inp, Propose):
            if self.role is Role.LEADER:
                leader.propose(self, inp.request_id, inp.data)
            else:
                self.refused.append(ProposalRefused(inp.request_id, self.leader_id, "not leader"))
        elif isinstance(inp, Persisted):
            if self.log.mark_persisted(inp.index, inp.term) and self.role is Role.LEADER:
                leader.maybe_commit(self)
        elif isinstance(inp, HardStatePersisted):
            candidate.self_vote_persisted(self, inp.term, inp.vote)
        elif isinstance(inp, ReadIndex):
            if self.role is Role.LEADER:
                leader.read_index(self, inp.request_id)
            else:
                self.refused.append(ReadRefused(inp.request_id, self.leader_id, "not leader"))
        elif isinstance(inp, ProposeConfChange):
            if self.role is Role.LEADER:
                leader.propose_conf_change(self, inp.request_id, inp.change)
            else:
                self.refused.append(ProposalRefused(inp.request_id, self.leader_id, "not leader"))
        elif isinstance(inp, Campaign):
            if self.role is not Role.LEADER and self.is_promotable():
                candidate.campaign(self, transfer=False)
        elif isinstance(inp, TransferLeader):
            if self.role is Role.LEADER:
                leader.transfer(self, inp.target)
        elif isinstance(inp, SnapshotTaken):
            self._snapshot_taken(inp.index, inp.data)
        else:  # pragma: no cover - exhaustiveness
            raise TypeError(f"unknown input {inp!r}")

    def _receive(self, sender: int, m: RaftMessage) -> None:
        if m.term > self.term:
            if isinstance(m, RequestVote):
                if not m.leader_transfer and self._in_lease():
                    return  # thesis §4.2.3: a live leader's followers ignore disruptors
                if not m.pre_vote:
                    self.become_follower(m.term, None)
            elif isinstance(m, VoteResponse) and m.pre_vote and m.granted:
                pass  # a pre-vote grant carries the term we asked for (thesis §9.6)
            else:
                self.become_follower(m.term, sender if isinstance(m, _FROM_LEADER) else None)
        elif m.term < self.term:
            self._answer_stale(sender, m)
            return
        self._dispatch(sender, m)

    def _dispatch(self, sender: int, m: RaftMessage) -> None:
        role = self.role
        if isinstance(m, AppendEntries):
            if role is Role.LEADER:
                return  # two leaders in one term: only under sabotage; the checkers see it
            if role is not Role.FOLLOWER:
                self.become_follower(m.term, sender)  # §5.2: a leader of our term exists
            follower.handle_append(self, sender, m)
        elif isinstance(m, AppendResponse):
            if role is Role.LEADER:
                leader.handle_append_response(self, sender, m)
        elif isinstance(m, RequestVote):
            follower.handle_vote_request(self, sender, m)
        elif isinstance(m, VoteResponse):
            if role is Role.CANDIDATE or role is Role.PRE_CANDIDATE:
                candidate.handle_vote_response(self, sender, m)
        elif isinstance(m, InstallSnapshot):
            if role is Role.LEADER:
                return
            if role is not Role.FOLLOWER:
                self.become_follower(m.term, sender)
            follower.handle_snapshot(self, sender, m)
        elif isinstance(m, SnapshotResponse):
            if role is Role.LEADER:
                leader.handle_snapshot_response(self, sender, m)
        elif isinstance(m, TimeoutNow) and role is not Role.LEADER:
            follower.handle_timeout_now(self, sender)

    def _answer_stale(self, sender: int, m: RaftMessage) -> None:
        """§5.1: a request with a stale term is rejected with our term, which makes an
        old leader or candidate step down; a stale answer is dropped."""
        if isinstance(m, RequestVote):
            self.respond(sender, VoteResponse(self.term, False, m.pre_vote))
        elif isinstance(m, AppendEntries):
            # The sender may be leader of our term by the time this arrives, so the
            # answer must be harmless then: an honest back-off hint, and seq 0, which
            # confirms no ReadIndex round (its seq counter restarts after a crash).
            hint = self.log.last_index + 1
            reply = AppendResponse(self.term, False, m.prev_log_index, hint, None, 0)
            self.respond(sender, reply)
        elif isinstance(m, InstallSnapshot):
            self.respond(sender, SnapshotResponse(self.term, m.meta.index, 0, False))

    def _in_lease(self) -> bool:
        """Thesis §4.2.3/§6.2: we heard from a leader within the minimum election timeout."""
        return (
            self.config.check_quorum
            and self.leader_id is not None
            and self.election_elapsed_ticks < self.config.election_ticks
        )

    def _tick(self) -> None:
        if self.role is Role.LEADER:
            leader.tick(self)
            return
        self.election_elapsed_ticks += 1
        if self.election_elapsed_ticks >= self.election_timeout_ticks:
            self.reset_election_timer()
            if self.is_promotable():  # learners and removed nodes never campaign
                candidate.campaign(self, transfer=False)

    # -- transitions and shared helpers ----------------------------------------------

    def reset_election_timer(self) -> None:
        """§5.2: randomized election timeout in [election_ticks, 2 * election_ticks)."""
        self.election_elapsed_ticks = 0
        e = self.config.election_ticks
        self.election_timeout_ticks = self.rng.randrange(e, 2 * e)

    def set_term(self, term: int) -> None:
        assert term >= self.term, f"term would decrease from {self.term} to {term}"
        if term > self.term:
            self.term = term
            self.vote = None

    def become_follower(self, term: int, leader_id: int | None) -> None:
        self.set_term(term)
        if self.role is Role.LEADER:
            leader.step_down(self)
        self.role = Role.FOLLOWER
        self.leader_id = leader_id
        self.votes = {}
        self.reset_election_timer()

    def respond(self, to: int, message: RaftMessage) -> None:
        """Messages that promise durable state (votes, acks): after persist (§5.1 fig. 2)."""
        self.send_after_persist.append(Outbound(to, message))

    # -- rules a test may break (felix/testing/sabotage.py overrides these) -----------

    def own_match_index(self) -> int:
        """How far a leader counts its own log toward a commit quorum: what it has
        persisted, not what it has appended (thesis §10.2.1)."""
        return self.log.persisted_index

    def may_commit_by_counting(self, index: int) -> bool:
        """§5.4.2 (figure 8): a leader commits by counting replicas only an entry of its
        own term."""
        return self.log.term_at(index) == self.term

    def may_grant_vote(self, m: RequestVote) -> bool:
        """§5.2: one vote per term (the one already cast may be repeated; a node that
        follows a leader in this term has none to give); a pre-vote for a future term
        promises nothing, so it is granted on the log alone (thesis §9.6)."""
        return (
            self.vote == m.candidate
            or (self.vote is None and self.leader_id is None)
            or (m.pre_vote and m.term > self.term)
        )

    def send(self, to: int, message: RaftMessage) -> None:
        self.send_now.append(Outbound(to, message))

    def commit_to(self, index: int) -> None:
        assert index > self.commit_index, "commit index never decreases"
        assert index <= self.log.last_index, "commit index beyond the log"
        self.commit_index = index

    def append_as_leader(self, kind: EntryKind, data: bytes) -> Entry:
        e = Entry(self.log.last_index + 1, self.term, kind, data)
        self.log.append(e)
        self.flush_needed = True
        if kind is EntryKind.CONFIG:
            self.conf = self.confs.append(e.index, data)  # thesis §4.1: effective at once
            leader.on_conf_change(self)
        return e

    def append_from_leader(self, entries: tuple[Entry, ...]) -> None:
        """§5.3 receiver rules 3–4 for entries we do not hold yet, from ``entries[0]`` on."""
        start = entries[0].index
        assert start > self.commit_index, "a committed entry would be overwritten"
        if start <= self.log.last_index:
            self.confs.truncate_from(start)  # thesis §4.1: roll back truncated configs
        self.log.truncate_and_append(entries)
        for e in entries:
            if e.kind is EntryKind.CONFIG:
                self.confs.append(e.index, e.data)
        self.conf = self.confs.latest

    def restore_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        """§7: discard the whole log and start from a leader's snapshot."""
        assert meta.index > self.commit_index
        self.log.restore(meta, data)
        self.confs.reset(meta.conf)
        self.conf = meta.conf
        self.commit_index = meta.index
        self.applied = meta.index  # the snapshot itself is applied in Ready step 5
        self.snapshot_out = (meta, data)

    def _snapshot_taken(self, index: int, data: bytes) -> None:
        """The driver saved a snapshot up to ``index``: drop that log prefix (§7)."""
        if index <= self.log.snap_index:
            return  # older than what we have
        assert index <= self.applied, "snapshot covers entries never handed out to apply"
        term = self.log.term_at(index)
        assert term is not None
        meta = SnapshotMeta(index, term, self.confs.at(index), len(data), zlib.crc32(data))
        self.log.compact(index, meta, data)
        self.confs.compact(index)
        self.compact_to = index
        self.flush_needed = self.role is Role.LEADER

    # -- output ----------------------------------------------------------------------

    def has_ready(self) -> bool:
        return bool(
            self.send_now
            or self.send_after_persist
            or self.log.unsaved_from <= self.log.last_index
            or self.commit_index > self.applied
            or self.snapshot_out is not None
            or self.compact_to is not None
            or self.read_states
            or self.proposed
            or self.refused
            or (self.role is Role.LEADER and (self.flush_needed or self.read_round_needed))
            or self._hard_state_changed()
        )

    def _hard_state_changed(self) -> bool:
        hs = self._hard_state
        return hs.term != self.term or hs.vote != self.vote or hs.commit != self.commit_index

    def take_ready(self) -> Ready:
        if self.role is Role.LEADER:
            leader.flush(self)
        hard_state = None
        vote_changed = False
        if self._hard_state_changed():
            previous = self._hard_state
            hard_state = self._hard_state = HardState(self.term, self.vote, self.commit_index)
            vote_changed = (previous.term, previous.vote) != (hard_state.term, hard_state.vote)
        committed: tuple[Entry, ...] = ()
        if self.commit_index > self.applied:
            committed = tuple(self.log.slice(self.applied + 1, self.commit_index + 1))
            self.applied = self.commit_index
        entries = tuple(self.log.take_unsaved())
        ready = Ready(
            hard_state=hard_state,
            must_sync=bool(
                vote_changed
                or entries
                or self.snapshot_out is not None
                or self.compact_to is not None
            ),
            entries=entries,
            snapshot=self.snapshot_out,
            compact_to=self.compact_to,
            send_now=tuple(self.send_now),
            send_after_persist=tuple(self.send_after_persist),
            committed=committed,
            read_states=tuple(self.read_states),
            proposed=tuple(self.proposed),
            refused=tuple(self.refused),
        )
        self.snapshot_out = None
        self.compact_to = None
        self.send_now.clear()
        self.send_after_persist.clear()
        self.read_states.clear()
        self.proposed.clear()
        self.refused.clear()
        return ready
