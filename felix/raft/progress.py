"""What a leader knows about one follower's log, and how fast it may send to it.

Theory of operation
-------------------
A follower is in one of three states (the etcd-io/raft design, an engineering refinement
of §5.3's "decrement nextIndex and retry"):

* PROBE: we do not know where the follower's log matches ours.  Send one AppendEntries
  at ``next`` and wait for its answer (``probe_sent``); a rejection of that probe moves
  ``next`` back using the fast back-off hint, and an answer of a later heartbeat round
  than the probe's (``probe_seq``: the probe or its answer was lost) allows the next
  one.  Older answers -- stale or duplicated ones of an earlier burst -- allow nothing:
  if each of them released a probe, a network that duplicates messages (which Raft must
  tolerate, §2) would multiply the probes in flight with every round trip.
* REPLICATE: the follower matched; stream entries optimistically (``next`` runs ahead of
  ``match``) with at most ``inflight_msgs_max`` messages outstanding, so a slow follower
  cannot make the leader buffer without bound.
* SNAPSHOT: ``next`` fell behind the leader's log start; send the snapshot in chunks,
  resuming at the byte offset the follower says it expects.
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """Each AppendEntries in flight as (last index, round ``seq`` it was sent in), oldest
    first, bounded."""

    __slots__ = ("_sent", "capacity")

    def __init__(self, capacity: int) -> None:
        assert capacity > 0
        self.capacity = capacity
        self._sent: deque[tuple[int, int]] = deque()

    def __len__(self) -> int:
        return len(self._sent)

    def full(self) -> bool:
        return len(self._sent) >= self.capacity

    def add(self, last_index: int, seq: int = 0) -> None:
        assert not self.full(), "inflight window overrun"
        self._sent.append((last_index, seq))

    def free_to(self, index: int) -> None:
        """An ack up to ``index`` settles every message that ended at or before it."""
        q = self._sent
        while q and q[0][0] <= index:
            q.popleft()

    def oldest_seq(self) -> int | None:
        return self._sent[0][1] if self._sent else None

    def clear(self) -> None:
        self._sent.clear()


class Progress:
    __slots__ = (
        "inflights",
        "is_learner",
        "match",
        "match_seq",
        "next",
        "probe_sent",
        "probe_seq",
        "recent_active",
        "sent_commit",
        "snap_index",
        "snap_offset",
        "snap_progressed",
        "state",
    )

    def __init__(self, next_index: int, inflight_msgs_max: int, is_learner: bool) -> None:
        self.match = 0
        # The leader's heartbeat round when ``match`` last moved: a rejection answering
        # an AppendEntries of a later round was sent after the follower held ``match``.
        self.match_seq = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.probe_seq = 0  # the leader's round the outstanding probe was sent in
        self.inflights = Inflights(inflight_msgs_max)
        self.is_learner = is_learner
        self.recent_active = False  # heard from since the last check-quorum round
        self.snap_index = 0  # SNAPSHOT state: which snapshot, and the acked byte offset
        self.snap_offset = 0
        self.snap_progressed = False
        self.sent_commit = 0  # highest leader_commit sent to it

    def __repr__(self) -> str:
        return (
            f"Progress({self.state.value} match={self.match} next={self.next} "
            f"inflight={len(self.inflights)}{' learner' if self.is_learner else ''})"
        )

    def paused(self) -> bool:
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True  # SNAPSHOT: chunks are paced by SnapshotResponse, not by appends

    def become_probe(self) -> None:
        self.next = self.match + 1
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.inflights.clear()

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflights.clear()

    def become_snapshot(self, snap_index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.snap_index = snap_index
        self.snap_offset = 0
        self.snap_progressed = True
        self.probe_sent = False
        self.inflights.clear()

    def maybe_update(self, match: int, seq: int = 0) -> bool:
        """A success up to ``match``, learned in the leader's round ``seq``; True if it
        is news (not a stale or duplicate ack).  ``match`` never decreases here."""
        updated = False
        if match > self.match:
            self.match = match
            self.match_seq = seq
            updated = True
        if match + 1 > self.next:
            self.next = match + 1
        self.inflights.free_to(match)
        return updated

    def lost_match(self, match: int, seq: int) -> None:
        """The follower no longer holds what it acknowledged (its disk was wiped): the one
        way ``match`` decreases, and only on a rejection newer than the match
        (`felix.raft.leader` checks ``seq > match_seq``)."""
        assert match < self.match and seq > self.match_seq, (match, seq, self)
        self.match = match
        self.match_seq = seq

    def sent_entries(self, last_index: int, seq: int) -> None:
        """Record an AppendEntries carrying entries up to ``last_index``, sent in round
        ``seq``."""
        if self.state is ProgressState.REPLICATE:
            self.next = last_index + 1
            self.inflights.add(last_index, seq)
        else:
            self.probe_sent = True
            self.probe_seq = seq

    def answered_round(self, seq: int) -> None:
        """An answer of the leader's round ``seq`` arrived: in PROBE, one of a later round
        than the outstanding probe's means the probe or its answer was lost, so probe
        again -- at most once per round, however often the answer was duplicated."""
        if self.state is ProgressState.PROBE and seq > self.probe_seq:
            self.probe_sent = False
