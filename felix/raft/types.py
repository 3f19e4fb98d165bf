"""Value types at the Raft core's boundary: its inputs, its configuration, its hard state.

The core is driven like etcd-io/raft: the driver calls ``core.step(input)`` any number of
times, then ``core.take_ready()`` to collect one `felix.raft.ready.Ready` batch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from felix.proto.raft_messages import (
    ConfChange,
    ConfState,
    Entry,
    EntryKind,
    RaftMessage,
    SnapshotMeta,
)

__all__ = [
    "BootState",
    "Campaign",
    "ConfChange",
    "ConfState",
    "Entry",
    "EntryKind",
    "HardState",
    "HardStatePersisted",
    "Input",
    "Persisted",
    "Propose",
    "ProposeConfChange",
    "RaftConfig",
    "ReadIndex",
    "Receive",
    "Role",
    "SnapshotMeta",
    "SnapshotTaken",
    "Tick",
    "TransferLeader",
]


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before a node answers anyone (§5.1, figure 2 "persistent
    state"): the current term and the vote cast in it; ``commit`` is persisted too so a
    restart can re-apply without waiting for a leader."""

    term: int = 0
    vote: int | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class BootState:
    """What a node starts from: the WAL's replay (or an empty state on first boot).

    ``conf`` is the bootstrap membership; a snapshot's ``meta.conf`` and CONFIG entries
    in ``entries`` override it (a server uses the latest configuration in its log,
    committed or not: thesis §4.1).  ``entries`` follow the snapshot without gaps.
    """

    hard_state: HardState
    conf: ConfState
    snapshot: tuple[SnapshotMeta, bytes] | None = None
    entries: tuple[Entry, ...] = ()


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Timings are in ticks; the driver decides how long a tick is."""

    node_id: int
    # The defaults are felix.config.RaftTimings' (a server passes its own anyway).
    election_ticks: int = 8  # randomized per election in [n, 2n) (§5.2)
    heartbeat_ticks: int = 2
    pre_vote: bool = True  # thesis §9.6
    check_quorum: bool = True  # thesis §6.2
    inflight_msgs_max: int = 64  # AppendEntries in flight per peer in replicate state
    entries_per_msg_max: int = 1024
    bytes_per_msg_max: int = 1 << 20
    snapshot_chunk_bytes: int = 256 * 1024
    # A learner is promoted only if its match index is within this many entries of the
    # leader's last index (thesis §4.2.1: a new voter must be caught up first).
    promote_lag_entries_max: int = 64


@dataclass(frozen=True, slots=True)
class Tick:
    """One unit of logical time passed."""


@dataclass(frozen=True, slots=True)
class Receive:
    """A message from peer ``sender`` (the transport knows who, from the handshake)."""

    sender: int
    message: RaftMessage


@dataclass(frozen=True, slots=True)
class Propose:
    """Append ``data`` as a NORMAL entry.  Refused on a non-leader (see `Ready.refused`)."""

    request_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ProposeConfChange:
    """One single-server membership change (thesis §4.1)."""

    request_id: int
    change: ConfChange


@dataclass(frozen=True, slots=True)
class ReadIndex:
    """Ask for a linearizable read point (thesis §6.4); answered in `Ready.read_states`."""

    request_id: int


@dataclass(frozen=True, slots=True)
class Persisted:
    """Everything in earlier Ready batches up to log ``index`` of ``term`` is durable.

    The leader counts itself toward a quorum only up to what it has persisted, which is
    what lets it send AppendEntries in parallel with its own fsync (thesis §10.2.1).
    """

    index: int
    term: int


@dataclass(frozen=True, slots=True)
class HardStatePersisted:
    """The hard state (``term``, ``vote``) of an earlier Ready batch is durable.

    The driver steps this after every durable write of a batch whose ``hard_state`` is
    set and ``must_sync`` is true (`felix.raft.driver.ReadyDriver.finish` does).  A
    candidate counts its own vote only from then on (§5.1 figure 2: persistent state is
    updated on stable storage before responding; thesis §10.2.1 applies the same rule to
    a leader's own entries): otherwise a single voter would win, and send AppendEntries
    of a term that a crash can forget, in the very batch that starts its election.
    """

    term: int
    vote: int | None


@dataclass(frozen=True, slots=True)
class Campaign:
    """Start an election now (tests, bootstrap)."""


@dataclass(frozen=True, slots=True)
class TransferLeader:
    """Hand leadership to ``target`` (thesis §3.10)."""

    target: int


@dataclass(frozen=True, slots=True)
class SnapshotTaken:
    """The driver durably saved a state-machine snapshot covering the log up to ``index``
    (``data`` is its payload).  The core may drop the log prefix up to ``index`` and sends
    ``data`` in chunks to followers that are behind its log start."""

    index: int
    data: bytes


Input = (
    Tick
    | Receive
    | Propose
    | ProposeConfChange
    | ReadIndex
    | Persisted
    | HardStatePersisted
    | Campaign
    | TransferLeader
    | SnapshotTaken
)
