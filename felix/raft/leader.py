"""The leader: replication, commit, heartbeats, check-quorum, transfer, membership, reads.

Theory of operation
-------------------
* Replication (§5.3) is driven from `flush`, called by `RaftCore.take_ready`: for each
  follower, as many AppendEntries as its `Progress` allows (one probe, or up to
  ``inflight_msgs_max`` batches capped by ``entries_per_msg_max``/``bytes_per_msg_max``),
  or the next snapshot chunk if it is behind our log start (§7).
* Commit (§5.3, §5.4.2): the majority-th highest match index among voters, and only if
  that entry is of the current term (figure 8).  Our own match is what we have
  *persisted*, not what we have appended (thesis §10.2.1): that is what lets the driver
  send AppendEntries in parallel with the leader's own fsync.
* Heartbeats every ``heartbeat_ticks`` open a new round ``seq``; a follower echoes it.
  ReadIndex (thesis §6.4) waits for a majority to echo a round that started after the
  read arrived.  Heartbeats carry ``prev = match`` so they always pass the consistency
  check, and a commit capped at ``match`` (a follower may not hold more).
* Check-quorum (thesis §6.2): every election timeout, a leader that has not heard from a
  majority of voters steps down, so a partitioned leader stops serving reads and writes.
* Loss detection: every AppendEntries carries the current round ``seq``.  When a follower
  in REPLICATE answers a *later* round without covering an AppendEntries still in flight,
  that message (or its answer) was lost: fall back to PROBE, which resends from ``match``.
  This is how a lost AppendEntries at the end of a burst is retransmitted within one
  heartbeat; under reordering it costs at most a duplicate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from felix.proto.raft_messages import (
    AppendEntries,
    AppendResponse,
    ConfChange,
    ConfChangeKind,
    EntryKind,
    InstallSnapshot,
    SnapshotResponse,
    TimeoutNow,
)
from felix.raft.membership import check_change, encode_change, with_result
from felix.raft.progress import Progress, ProgressState
from felix.raft.quorum import committed_index, has_quorum
from felix.raft.ready import ProposalAccepted, ProposalRefused, ReadRefused, ReadState
from felix.raft.types import Role

if TYPE_CHECKING:
    from felix.raft.core import RaftCore


def become_leader(core: RaftCore) -> None:
    core.role = Role.LEADER
    core.leader_id = core.node_id
    core.votes = {}
    core.election_elapsed_ticks = 0
    core.heartbeat_elapsed_ticks = 0
    core.progress = {}
    core.acked_seq = {}
    core.transfer_target = None
    core.reads_deferred = []
    core.reads_pending = []
    core.read_round_needed = False
    # A leadership opens a round of its own: its first AppendEntries already carry a
    # seq no earlier message of ours carried, and never 0 (a stale answer's seq).
    core.seq += 1
    _sync_progress(core)
    # §8 / §5.4.2: commit an entry of our own term, which commits everything before it.
    core.term_start_index = core.append_as_leader(EntryKind.NOOP, b"").index
    maybe_commit(core)


def step_down(core: RaftCore) -> None:
    """Leaving the leader role: pending reads can no longer be confirmed."""
    for rid in core.reads_deferred:
        core.refused.append(ReadRefused(rid, None, "leadership lost"))
    for rid, _index, _seq in core.reads_pending:
        core.refused.append(ReadRefused(rid, None, "leadership lost"))
    core.reads_deferred = []
    core.reads_pending = []
    core.read_round_needed = False
    core.progress = {}
    core.acked_seq = {}
    core.transfer_target = None
    core.flush_needed = False


def _sync_progress(core: RaftCore) -> None:
    """One Progress per member but us: new members start probing at our log end.

    A node being removed keeps its Progress (it is replicated to, but never counted)
    until the removal commits, so it learns of its removal and stops campaigning instead
    of disrupting the cluster (thesis §4.2.3)."""
    conf = core.conf
    committed_conf = core.confs.at(core.commit_index)
    members = set(conf.voters) | set(conf.learners)
    members |= set(committed_conf.voters) | set(committed_conf.learners)
    members.discard(core.node_id)
    for node in list(core.progress):
        if node not in members:
            del core.progress[node]
            core.acked_seq.pop(node, None)
    learners = set(conf.learners)
    for node in sorted(members):
        pr = core.progress.get(node)
        if pr is None:
            pr = Progress(core.log.last_index + 1, core.config.inflight_msgs_max, False)
            core.progress[node] = pr
            core.acked_seq[node] = 0
        pr.is_learner = node in learners


# -- ticks ---------------------------------------------------------------------------


def tick(core: RaftCore) -> None:
    core.heartbeat_elapsed_ticks += 1
    core.election_elapsed_ticks += 1
    if core.transfer_target is not None:
        core.transfer_elapsed_ticks += 1
        if core.transfer_elapsed_ticks >= core.config.election_ticks:
            core.transfer_target = None  # thesis §3.10: abort after an election timeout
    if core.election_elapsed_ticks >= core.config.election_ticks:
        core.election_elapsed_ticks = 0
        if core.config.check_quorum and not _quorum_active(core):
            core.become_follower(core.term, None)  # thesis §6.2
            return
    if core.heartbeat_elapsed_ticks >= core.config.heartbeat_ticks:
        core.heartbeat_elapsed_ticks = 0
        _broadcast_heartbeat(core)


def _quorum_active(core: RaftCore) -> bool:
    active = {core.node_id}
    for node, pr in core.progress.items():
        if pr.recent_active:
            active.add(node)
        pr.recent_active = False
    return has_quorum(core.conf.voters, active)


def _broadcast_heartbeat(core: RaftCore) -> None:
    core.seq += 1
    core.read_round_needed = False
    for node, pr in core.progress.items():
        _send_heartbeat(core, node, pr)
        if pr.state is ProgressState.SNAPSHOT:
            if not pr.snap_progressed:
                _send_chunk(core, node, pr)  # the chunk or its answer was lost: resend
            pr.snap_progressed = False
    core.flush_needed = True


def _send_heartbeat(core: RaftCore, node: int, pr: Progress, prev: int | None = None) -> None:
    """An empty AppendEntries at ``prev`` (default: what the follower acknowledged)."""
    if prev is None:
        prev = pr.match
    prev_term = core.log.term_at(prev)
    if prev_term is None:  # compacted away: index 0 always matches
        prev, prev_term = 0, 0
    commit = min(core.commit_index, prev)
    message = AppendEntries(core.term, core.node_id, prev, prev_term, (), commit, core.seq)
    core.send(node, message)
    if commit > pr.sent_commit:
        pr.sent_commit = commit


# -- sending -------------------------------------------------------------------------


def flush(core: RaftCore) -> None:
    """Send whatever each follower may receive now (called from take_ready)."""
    if core.read_round_needed:
        _broadcast_heartbeat(core)
    if not core.flush_needed:
        return
    core.flush_needed = False
    commit = core.commit_index
    for node, pr in core.progress.items():
        _send_appends(core, node, pr)
        if pr.state is ProgressState.SNAPSHOT:
            continue
        # Tell it the new commit index promptly, up to what it holds.  In REPLICATE that
        # includes entries sent but not yet acknowledged: they travel ahead of this
        # notice on the same connection, so a follower still writing them to disk
        # applies them as soon as its write returns instead of a round trip later (the
        # slowest follower's brokers gain most).  A follower that lost them rejects the
        # notice, and the usual back-off resends them.  Its answer is an ack and leaves
        # only once its log is durable, like every ack.
        held = pr.next - 1 if pr.state is ProgressState.REPLICATE else pr.match
        if pr.sent_commit < min(commit, held):
            _send_heartbeat(core, node, pr, held)


def _send_appends(core: RaftCore, node: int, pr: Progress) -> None:
    log = core.log
    cfg = core.config
    while not pr.paused():
        if pr.next <= log.snap_index:
            _start_snapshot(core, node, pr)  # §7: what it needs is compacted away
            return
        last = log.last_index
        if pr.next > last and pr.state is ProgressState.REPLICATE:
            return
        prev = pr.next - 1
        prev_term = log.term_at(prev)
        assert prev_term is not None
        if pr.next <= last:
            batch = tuple(log.slice_capped(pr.next, cfg.entries_per_msg_max, cfg.bytes_per_msg_max))
        else:
            batch = ()  # an empty probe still finds where the logs match
        last_sent = prev + len(batch)
        commit = min(core.commit_index, last_sent)
        message = AppendEntries(core.term, core.node_id, prev, prev_term, batch, commit, core.seq)
        core.send(node, message)
        if commit > pr.sent_commit:
            pr.sent_commit = commit
        pr.sent_entries(last_sent, core.seq)


def _start_snapshot(core: RaftCore, node: int, pr: Progress) -> None:
    snapshot = core.log.snapshot
    assert snapshot is not None, "log compacted without a snapshot"
    pr.become_snapshot(snapshot[0].index)
    _send_chunk(core, node, pr)


def _send_chunk(core: RaftCore, node: int, pr: Progress) -> None:
    snapshot = core.log.snapshot
    assert snapshot is not None
    meta, data = snapshot
    if meta.index != pr.snap_index:  # we took a newer snapshot meanwhile: send that
        pr.become_snapshot(meta.index)
    offset = min(pr.snap_offset, len(data))
    chunk = data[offset : offset + core.config.snapshot_chunk_bytes]
    done = offset + len(chunk) >= len(data)
    core.send(node, InstallSnapshot(core.term, core.node_id, meta, offset, chunk, done))


# -- answers -------------------------------------------------------------------------


def handle_append_response(core: RaftCore, sender: int, m: AppendResponse) -> None:
    pr = core.progress.get(sender)
    if pr is None:
        return
    pr.recent_active = True
    if m.seq > core.acked_seq.get(sender, 0):
        core.acked_seq[sender] = m.seq
        if core.reads_pending:
            _release_reads(core)
    pr.answered_round(m.seq)  # a lost probe is resent once per heartbeat round
    if m.success:
        _on_append_success(core, sender, pr, m.match_index)
        oldest = pr.inflights.oldest_seq()
        if pr.state is ProgressState.REPLICATE and oldest is not None and oldest < m.seq:
            pr.become_probe()  # a later round was answered, an earlier append was not
    else:
        _on_append_reject(core, pr, m)
    core.flush_needed = True


def _on_append_success(core: RaftCore, sender: int, pr: Progress, match: int) -> None:
    updated = pr.maybe_update(match, core.seq)
    if pr.state is ProgressState.SNAPSHOT and pr.match >= pr.snap_index:
        pr.become_probe()  # installed: find where its log continues ours
    if pr.state is ProgressState.PROBE and (updated or match >= pr.next - 1):
        # The probe matched (or news of a match arrived): stream (§5.3).  Not news but
        # at the probe's point is an empty probe a caught-up follower answered; staying
        # in PROBE would hold its next entry back until the next heartbeat round.
        pr.become_replicate()
    if not updated:
        return
    if not pr.is_learner:
        maybe_commit(core)
    if core.transfer_target == sender and pr.match == core.log.last_index:
        core.send(sender, TimeoutNow(core.term, core.node_id))  # thesis §3.10


def _on_append_reject(core: RaftCore, pr: Progress, m: AppendResponse) -> None:
    """Fast back-off (§5.3): skip the follower's whole conflicting term at once.

    A rejection at or below ``match`` is normally stale: it was sent before the ack that
    taught us the match, and overtaken by it (§5.3: matchIndex only increases).  Only a
    rejection answering an AppendEntries of a round that started after we learned the
    match (``seq > match_seq``: sent after that ack arrived, so received after it was
    sent) proves the follower lost what it acknowledged -- its disk was wiped, outside
    Raft's fault model, but it must still catch up: forget the match and probe again."""
    rejected = m.match_index
    if pr.state is ProgressState.SNAPSHOT:
        return
    if rejected <= pr.match:
        if m.seq <= pr.match_seq or m.conflict_index > pr.match:
            return  # stale: we have since learned it matches further
        pr.lost_match(max(m.conflict_index - 1, 0), core.seq)
    if pr.state is ProgressState.PROBE and rejected != pr.next - 1:
        return  # an answer to an older probe
    hint = m.conflict_index
    if m.conflict_term is not None:
        ours = core.log.last_index_of_term(m.conflict_term)
        if ours is not None:
            hint = ours + 1
    pr.become_probe()
    pr.next = max(min(hint, rejected), pr.match + 1)


def handle_snapshot_response(core: RaftCore, sender: int, m: SnapshotResponse) -> None:
    pr = core.progress.get(sender)
    if pr is None:
        return
    pr.recent_active = True
    core.flush_needed = True
    if m.installed:
        _on_append_success(core, sender, pr, m.snapshot_index)
        return
    if pr.state is not ProgressState.SNAPSHOT or m.snapshot_index != pr.snap_index:
        return
    if m.next_offset > pr.snap_offset:
        pr.snap_offset = m.next_offset
        pr.snap_progressed = True
        _send_chunk(core, sender, pr)
    else:
        # No progress (a duplicate, a gap, or the follower started over): resume from
        # where it says, at the next heartbeat — never one send per answer, or
        # duplicated answers would multiply chunks.
        pr.snap_offset = m.next_offset


# -- commit --------------------------------------------------------------------------


def maybe_commit(core: RaftCore) -> None:
    """§5.3/§5.4.2: commit the highest index a majority of voters holds, if it is ours."""
    own = core.own_match_index()
    progress = core.progress
    matches = []
    for v in core.conf.voters:
        if v == core.node_id:
            matches.append(own)
        else:
            pr = progress.get(v)
            matches.append(pr.match if pr is not None else 0)
    n = committed_index(matches)
    if n <= core.commit_index:
        return
    # Figure 8: only an entry of the current term is committed by counting replicas.
    if not core.may_commit_by_counting(n):
        return
    core.commit_to(n)
    core.flush_needed = True
    _after_commit(core)


def _after_commit(core: RaftCore) -> None:
    if core.confs.latest_index and len(core.progress) > _other_members(core):
        _sync_progress(core)  # a removal may have committed: stop replicating there
    if core.reads_deferred and core.commit_index >= core.term_start_index:
        deferred, core.reads_deferred = core.reads_deferred, []
        for rid in deferred:
            _start_read(core, rid)
    if core.node_id not in core.conf.voters and core.confs.latest_index <= core.commit_index:
        # Thesis §4.2.2: a leader removed from the configuration leads until that
        # configuration commits, then steps down.
        core.become_follower(core.term, None)


def _other_members(core: RaftCore) -> int:
    conf = core.conf
    return len(conf.voters) + len(conf.learners) - (core.node_id in conf.voters)


# -- client requests -----------------------------------------------------------------


def propose(core: RaftCore, request_id: int, data: bytes) -> None:
    if core.transfer_target is not None:
        reason = "leadership transfer in progress"
        core.refused.append(ProposalRefused(request_id, core.node_id, reason))
        return
    e = core.append_as_leader(EntryKind.NORMAL, data)
    core.proposed.append(ProposalAccepted(request_id, e.index, e.term))


def propose_conf_change(core: RaftCore, request_id: int, change: ConfChange) -> None:
    reason = _conf_change_refusal(core, change)
    if reason is not None:
        core.refused.append(ProposalRefused(request_id, core.node_id, reason))
        return
    e = core.append_as_leader(EntryKind.CONFIG, encode_change(with_result(core.conf, change)))
    core.proposed.append(ProposalAccepted(request_id, e.index, e.term))


def _conf_change_refusal(core: RaftCore, change: ConfChange) -> str | None:
    if core.transfer_target is not None:
        return "leadership transfer in progress"
    if core.commit_index < core.term_start_index:
        # Thesis §4.1 (bug fix, 2015): no change before an entry of this term commits.
        return "leader has not yet committed an entry of its term"
    if core.confs.latest_index > core.commit_index:
        return f"membership change at index {core.confs.latest_index} not yet committed"
    reason = check_change(core.conf, change)
    if reason is not None:
        return reason
    if change.kind is ConfChangeKind.PROMOTE:
        pr = core.progress.get(change.node)
        lag_max = core.config.promote_lag_entries_max
        if pr is None or pr.match + lag_max < core.log.last_index:
            match = pr.match if pr is not None else 0
            return (
                f"learner {change.node} is not caught up: match {match}, "
                f"last index {core.log.last_index}, allowed lag {lag_max}"
            )
    return None


def on_conf_change(core: RaftCore) -> None:
    """A CONFIG entry was appended: it is in effect now (thesis §4.1)."""
    _sync_progress(core)
    if core.transfer_target is not None and core.transfer_target not in core.conf.voters:
        core.transfer_target = None
    maybe_commit(core)  # removing a lagging voter may let the commit index move


def transfer(core: RaftCore, target: int) -> None:
    """Thesis §3.10: stop taking proposals, catch ``target`` up, then TimeoutNow."""
    if target == core.node_id or target not in core.conf.voters:
        return
    if core.transfer_target == target:
        return
    core.transfer_target = target
    core.transfer_elapsed_ticks = 0
    pr = core.progress[target]
    if pr.match == core.log.last_index:
        core.send(target, TimeoutNow(core.term, core.node_id))
    core.flush_needed = True


# -- ReadIndex (thesis §6.4) ---------------------------------------------------------


def read_index(core: RaftCore, request_id: int) -> None:
    if core.commit_index < core.term_start_index:
        # Our commit index may lag the true one until an entry of our term commits.
        core.reads_deferred.append(request_id)
        return
    _start_read(core, request_id)


def _start_read(core: RaftCore, request_id: int) -> None:
    if core.conf.voters == (core.node_id,):
        core.read_states.append(ReadState(request_id, core.commit_index))
        return
    # Confirmed by a majority echoing a round that starts after now: the next one.
    core.reads_pending.append((request_id, core.commit_index, core.seq + 1))
    core.read_round_needed = True


def _release_reads(core: RaftCore) -> None:
    voters = core.conf.voters
    released = 0
    for rid, index, seq in core.reads_pending:
        acked = {core.node_id}
        acked.update(node for node, s in core.acked_seq.items() if s >= seq)
        if not has_quorum(voters, acked):
            break
        core.read_states.append(ReadState(rid, index))
        released += 1
    if released:
        del core.reads_pending[:released]
