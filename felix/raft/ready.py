"""`Ready`: everything the core wants done, as one batch, with its ordering contract.

One driver applies it, for the server and the simulation alike (`felix.raft.driver`), in
this order:

1. ``send_now``: may go out immediately, in parallel with step 2.  Only messages whose
   safety does not depend on this batch being durable go here: a leader's AppendEntries,
   heartbeats, InstallSnapshot chunks and TimeoutNow (thesis §10.2.1 — the leader may
   replicate before its own fsync; it counts itself only after `Persisted`).
2. If ``must_sync``, persist, in one durable write (group commit): ``snapshot`` (if any;
   it replaces the log up to its index — and, since the core installs a received snapshot
   only when its log does not hold the snapshot's last entry, the durable entries after
   it too), then ``entries`` (the log is first truncated from ``entries[0].index`` on,
   then they are appended), then ``hard_state``.  Then ``compact_to`` may drop the
   durable log prefix up to and including that index.  ``must_sync`` is False only when
   the batch holds nothing to persist but a higher commit index: the driver may then
   skip the write (like etcd-io/raft's ``MustSync``).  The commit index is not needed
   for safety — a restarted node learns it again from a leader — and syncing it would
   add an fsync to every commit on every node.
3. Step ``Persisted(index, term)`` of the last entry written (if any) back into the core,
   then, if ``hard_state`` was written, ``HardStatePersisted(term, vote)``: a candidate
   counts its own vote only once its term and vote are durable (§5.1 figure 2; without
   it a single voter would lead, and send AppendEntries, in a term its disk does not
   record).
4. ``send_after_persist``: votes, vote requests and acks — they promise that what they
   describe is on disk (§5.1 figure 2: "respond after updating stable storage").
5. Apply ``snapshot`` (if any) to the state machine, then ``committed`` in order.  These
   are committed and durable; apply strictly in order, never an entry not listed here.
   After a restart the core re-emits every committed entry after its boot snapshot (the
   driver restores the state machine from that snapshot, then applies these).
6. Answer ``read_states`` once the state machine has applied their index; resolve
   ``proposed``/``refused`` requests.
"""

from __future__ import annotations

from dataclasses import dataclass

from felix.proto.raft_messages import Entry, RaftMessage, SnapshotMeta
from felix.raft.types import HardState


@dataclass(frozen=True, slots=True)
class Outbound:
    to: int
    message: RaftMessage


@dataclass(frozen=True, slots=True)
class ProposalAccepted:
    """The request was appended at (``index``, ``term``); it succeeded iff the entry
    applied at ``index`` later has this ``term``."""

    request_id: int
    index: int
    term: int


@dataclass(frozen=True, slots=True)
class ProposalRefused:
    """Not appended: this node is not the leader (``leader_hint`` is who is, if known),
    a transfer is in progress, or a membership change is still pending (``reason``)."""

    request_id: int
    leader_hint: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class ReadState:
    """ReadIndex answer: a read is linearizable once applied index >= ``index``."""

    request_id: int
    index: int


@dataclass(frozen=True, slots=True)
class Ready:
    hard_state: HardState | None = None  # None: unchanged since the last Ready
    # Step 2 is required: entries, a snapshot, a compaction, or a new term or vote.  False
    # when the only news in ``hard_state`` is the commit index (no write is needed).
    must_sync: bool = False
    entries: tuple[Entry, ...] = ()  # to persist (suffix overwrite from entries[0].index)
    snapshot: tuple[SnapshotMeta, bytes] | None = None  # received from a leader: persist, apply
    compact_to: int | None = None  # the durable log prefix up to here may be dropped
    send_now: tuple[Outbound, ...] = ()
    send_after_persist: tuple[Outbound, ...] = ()
    committed: tuple[Entry, ...] = ()  # to apply, in order, after persisting this batch
    read_states: tuple[ReadState, ...] = ()
    proposed: tuple[ProposalAccepted, ...] = ()
    refused: tuple[ProposalRefused | ReadRefused, ...] = ()

    def is_empty(self) -> bool:
        return not (
            self.hard_state
            or self.entries
            or self.snapshot
            or self.compact_to is not None
            or self.send_now
            or self.send_after_persist
            or self.committed
            or self.read_states
            or self.proposed
            or self.refused
        )


@dataclass(frozen=True, slots=True)
class ReadRefused:
    """A ReadIndex request this node cannot answer (not leader, or leadership lost)."""

    request_id: int
    leader_hint: int | None
    reason: str
