"""Answering a leader (AppendEntries, InstallSnapshot, TimeoutNow) and voting.

Every answer that vouches for durable state — an ack that entries match, a granted vote,
an installed snapshot — goes through `RaftCore.respond`, i.e. into
``Ready.send_after_persist`` (§5.1, figure 2: "respond to RPCs only after updating stable
storage").  Only snapshot chunk progress, which promises nothing, goes out at once.

Wire conventions for `AppendResponse` beyond the paper:

* on success ``match_index`` is the last index known to match the leader's log;
* on rejection ``match_index`` is the ``prev_log_index`` that was rejected (so the leader
  can tell a stale rejection from a fresh one), and ``conflict_index``/``conflict_term``
  are the fast back-off hint (§5.3, closing paragraphs);
* ``seq`` echoes the AppendEntries' round counter (thesis §6.4).
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

from felix.proto.raft_messages import (
    AppendEntries,
    AppendResponse,
    InstallSnapshot,
    RequestVote,
    SnapshotResponse,
    VoteResponse,
)
from felix.raft import candidate

if TYPE_CHECKING:
    from felix.raft.core import RaftCore


def handle_append(core: RaftCore, sender: int, m: AppendEntries) -> None:
    """§5.3 AppendEntries receiver rules; called with ``m.term == core.term``."""
    core.leader_id = sender
    core.election_elapsed_ticks = 0
    prev = m.prev_log_index
    entries = m.entries
    commit = core.commit_index
    if prev < commit:
        # Our committed prefix is in every later leader's log (§5.4.3, leader
        # completeness), so entries up to our commit match without a check; skip them.
        skip = min(commit - prev, len(entries))
        entries = entries[skip:]
        prev += skip
    elif core.log.term_at(prev) != m.prev_log_term:
        conflict_index, conflict_term = core.log.conflict_hint(prev)
        reply = AppendResponse(core.term, False, prev, conflict_index, conflict_term, m.seq)
        core.respond(sender, reply)
        return
    last_new = prev + len(entries)
    if entries:
        pos = core.log.find_conflict(entries)
        if pos < len(entries):
            core.append_from_leader(entries[pos:] if pos else entries)
    # §5.3 receiver rule 5: commit up to min(leaderCommit, index of last new entry).
    new_commit = min(m.leader_commit, last_new)
    if new_commit > core.commit_index:
        core.commit_to(new_commit)
    match = max(last_new, core.commit_index)
    core.respond(sender, AppendResponse(core.term, True, match, 0, None, m.seq))


def handle_vote_request(core: RaftCore, sender: int, m: RequestVote) -> None:
    """§5.2/§5.4.1 vote granting; thesis §9.6 for pre-votes.  Terms are already settled
    by the dispatcher: ``m.term >= core.term``, and higher only for a pre-vote."""
    log_ok = core.log.is_up_to_date(m.last_log_index, m.last_log_term)
    if not (log_ok and core.may_grant_vote(m)):
        core.respond(sender, VoteResponse(core.term, False, m.pre_vote))
        return
    if not m.pre_vote:
        core.vote = m.candidate  # durable before the answer leaves (respond)
        core.reset_election_timer()
    core.respond(sender, VoteResponse(m.term, True, m.pre_vote))


def handle_timeout_now(core: RaftCore, sender: int) -> None:
    """Thesis §3.10: the leader says we are caught up; start an election at once."""
    if core.is_promotable():
        candidate.campaign(core, transfer=True)


def handle_snapshot(core: RaftCore, sender: int, m: InstallSnapshot) -> None:
    """§7 InstallSnapshot receiver, chunked: reassemble by offset, check, install."""
    core.leader_id = sender
    core.election_elapsed_ticks = 0
    meta = m.meta
    if meta.index <= core.commit_index:
        # Stale: we already hold (committed) everything it covers.
        core.snap_recv = None
        core.respond(sender, SnapshotResponse(core.term, meta.index, meta.size, True))
        return
    recv = core.snap_recv
    if recv is None or recv[0] != meta:
        if m.offset != 0:
            core.send(sender, SnapshotResponse(core.term, meta.index, 0, False))
            return
        recv = core.snap_recv = (meta, bytearray())
    buf = recv[1]
    if m.offset != len(buf):  # duplicate or gap: say where we are
        core.send(sender, SnapshotResponse(core.term, meta.index, len(buf), False))
        return
    buf += m.chunk
    if not m.done:
        core.send(sender, SnapshotResponse(core.term, meta.index, len(buf), False))
        return
    core.snap_recv = None
    if len(buf) != meta.size or zlib.crc32(buf) != meta.crc32:
        core.send(sender, SnapshotResponse(core.term, meta.index, 0, False))  # start over
        return
    if core.log.term_at(meta.index) == meta.term:
        core.commit_to(meta.index)  # §7: we hold that entry; keep the log after it
    else:
        core.restore_snapshot(meta, bytes(buf))
    core.respond(sender, SnapshotResponse(core.term, meta.index, meta.size, True))
