"""Messages Raft peers exchange (one CBOR map per frame, opened by `PeerHello`).

Field names follow the Raft paper (§5) and thesis.  The sender of a message is not on the
wire: the transport knows it from the connection's `PeerHello` and hands the core
``(sender, message)``.  Two fields go beyond the paper's figure 2:

* ``AppendEntries.seq`` / ``AppendResponse.seq``: a per-leader round counter echoed by the
  follower, so the leader can tell which heartbeat round a reply confirms.  ReadIndex
  (thesis §6.4) and check-quorum (thesis §6.2) count replies to rounds that started after
  the request, not replies that were already in flight.
* ``RequestVote.leader_transfer``: set on the election a `TimeoutNow` starts (thesis
  §3.10), so voters skip the "I heard from a leader recently" check that otherwise
  protects a healthy leader from disruption (thesis §4.2.3).

Versions (`felix.proto.versions`, docs/architecture.md "Protocol versions"): the dialer's
`PeerHello` carries the range it speaks, the listener answers `HelloAck` with the
version both use from then on (or `HelloRefused`), and every later frame is encoded
and decoded at that version.  A plain new message or field of the baseline needs
nothing more than its declaration; one added later is ``message(..., since=v)`` or
``Annotated[T, Since(v)] = default``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Annotated, Final

from felix.proto.cbor import (
    IntRange,
    MaxItems,
    MaxLen,
    OmitDefault,
    Registry,
    Since,
    wire_array,
    wire_type,
)
from felix.proto.codes import ErrorCode
from felix.proto.versions import PROTOCOL_VERSION_NEXT

NODE_ID_MAX: Final = 2**63 - 1
ENTRIES_PER_MESSAGE_MAX: Final = 65_536
MEMBERS_MAX: Final = 64

NodeId = Annotated[int, IntRange(1, NODE_ID_MAX)]
"""Raft member ids are positive; ``None`` stands for "no node" (no vote, no leader)."""
ClusterId = Annotated[str, MaxLen(128)]


class EntryKind(enum.IntEnum):
    NORMAL = 0  # an opaque state-machine command
    NOOP = 1  # the entry a new leader appends to commit its term (§5.4.2, §8)
    CONFIG = 2  # a membership change (thesis §4.1), data is an encoded `ConfChange`


@wire_array
@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry; sent as ``[index, term, kind, data]`` to keep batches compact."""

    index: int
    term: int
    kind: EntryKind
    data: bytes


PeerAddressText = Annotated[str, MaxLen(300)]
"""``host:port`` of a member's peer port (empty: not known)."""


@wire_array
@dataclass(frozen=True, slots=True)
class MemberAddress:
    """Where a member's peer port is: part of the replicated configuration, so a member
    added at run time stays reachable after compaction and restarts (docs/architecture.md,
    "Membership")."""

    node: NodeId
    address: PeerAddressText


@wire_type
@dataclass(frozen=True, slots=True)
class ConfState:
    """Membership: voters count toward quorums, learners only replicate (thesis §4.2.1).

    ``addresses`` holds the peer address of members that have one (sorted by node).
    ``observers`` is the subset of ``learners`` that are permanent non-voting members
    (docs/architecture.md, "Observers"): never promoted.  Sent only when not empty, so
    a configuration without observers encodes as it did before the field existed, and
    such bytes (old WAL entries, snapshots) decode with none."""

    voters: Annotated[tuple[NodeId, ...], MaxItems(MEMBERS_MAX)]
    learners: Annotated[tuple[NodeId, ...], MaxItems(MEMBERS_MAX)]
    addresses: Annotated[tuple[MemberAddress, ...], MaxItems(MEMBERS_MAX)] = ()
    observers: Annotated[tuple[NodeId, ...], MaxItems(MEMBERS_MAX), OmitDefault()] = ()

    def members(self) -> frozenset[int]:
        return frozenset(self.voters) | frozenset(self.learners)

    def address_of(self, node: int) -> str:
        return next((m.address for m in self.addresses if m.node == node), "")


class ConfChangeKind(enum.IntEnum):
    ADD_LEARNER = 0
    PROMOTE = 1
    REMOVE = 2


@wire_type
@dataclass(frozen=True, slots=True)
class ConfChange:
    """The payload of a CONFIG entry: one single-server change (thesis §4.1).

    ``address`` (``host:port``, or empty) travels with an ADD_LEARNER so every member
    learns where to reach the new node, as etcd's member-add carries peer URLs.
    ``result`` is the whole configuration after the change, set by the leader: a server
    applying the entry takes it as is, so a node that joined with no configuration of its
    own learns the voters from the first CONFIG entry it receives (docs/architecture.md,
    "Membership"); an entry without it is applied as a delta.  ``observer`` marks an
    ADD_LEARNER of a permanent non-voting member (docs/architecture.md, "Observers")."""

    kind: ConfChangeKind
    node: NodeId
    address: PeerAddressText = ""
    result: ConfState | None = None
    observer: Annotated[bool, OmitDefault()] = False


@wire_type
@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """What a snapshot covers: the log up to ``index``/``term`` and the membership then.

    ``size`` and ``crc32`` describe the whole snapshot payload so a receiver can check a
    reassembled transfer before installing it.
    """

    index: int
    term: int
    conf: ConfState
    size: int
    crc32: Annotated[int, IntRange(0, 2**32 - 1)]


PEER = Registry("peer")


Version = Annotated[int, IntRange(1, 65535)]


@PEER.message("Hello")
@dataclass(frozen=True, slots=True)
class PeerHello:
    """First frame on every peer connection, from the dialer: who it is and the protocol
    versions it speaks.  The handshake messages are decoded before a version is agreed,
    so they never change (a new need gets a new message of a later version)."""

    cluster_id: ClusterId
    node_id: NodeId
    version_min: Version
    version_max: Version


@PEER.message("HelloAck")
@dataclass(frozen=True, slots=True)
class HelloAck:
    """The listener's only frame on a connection: the version every later frame on it
    is encoded in (the highest both ranges hold)."""

    protocol_version: Version


@PEER.message("HelloRefused")
@dataclass(frozen=True, slots=True)
class HelloRefused:
    """The listener refuses the connection (wrong cluster, unknown node, no common
    version) and says why before closing it, so the dialer can log the reason too."""

    reason: Annotated[str, MaxLen(1000)]


@PEER.message("RequestVote")
@dataclass(frozen=True, slots=True)
class RequestVote:
    """§5.2; with ``pre_vote`` the thesis §9.6 pre-vote that changes no state."""

    term: int
    candidate: NodeId
    last_log_index: int
    last_log_term: int
    pre_vote: bool
    leader_transfer: bool


@PEER.message("VoteResponse")
@dataclass(frozen=True, slots=True)
class VoteResponse:
    term: int
    granted: bool
    pre_vote: bool


@PEER.message("AppendEntries")
@dataclass(frozen=True, slots=True)
class AppendEntries:
    """§5.3; an empty ``entries`` is a heartbeat.

    ``next_probe`` is the synthetic field of test-only version 2 (`felix.proto.versions`):
    it exists so a v2 link carries a field a v1 link must leave out; nothing reads it."""

    term: int
    leader: NodeId
    prev_log_index: int
    prev_log_term: int
    entries: Annotated[tuple[Entry, ...], MaxItems(ENTRIES_PER_MESSAGE_MAX)]
    leader_commit: int
    seq: int
    next_probe: Annotated[int, Since(PROTOCOL_VERSION_NEXT)] = 0


@PEER.message("AppendResponse")
@dataclass(frozen=True, slots=True)
class AppendResponse:
    """§5.3.  On rejection ``conflict_term``/``conflict_index`` let the leader skip a whole
    term at a time (the fast back-off of §5.3's closing paragraphs)."""

    term: int
    success: bool
    match_index: int
    conflict_index: int
    conflict_term: int | None
    seq: int


@PEER.message("InstallSnapshot")
@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """§7: one chunk of a snapshot at byte ``offset``; ``done`` marks the last chunk."""

    term: int
    leader: NodeId
    meta: SnapshotMeta
    offset: int
    chunk: Annotated[bytes, MaxLen(16 * 1024 * 1024)]
    done: bool


@PEER.message("SnapshotResponse")
@dataclass(frozen=True, slots=True)
class SnapshotResponse:
    """The follower's progress on snapshot ``snapshot_index``: the next byte it expects
    (so a lost chunk is resent from there), and whether it has installed the snapshot."""

    term: int
    snapshot_index: int
    next_offset: int
    installed: bool


@PEER.message("TimeoutNow")
@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Thesis §3.10: the leader tells a caught-up target to start an election now."""

    term: int
    leader: NodeId


class ForwardKind(enum.IntEnum):
    WRITE = 0  # an encoded state-machine command to propose
    HEALTH = 1  # an encoded broker health report for the leader's session tracker
    READ = 2  # no data: the leader answers a ReadIndex point (thesis §6.4) as the index
    REBALANCE = 3  # no data: the leader runs a planner pass; index: the version after it


@PEER.message("Forward")
@dataclass(frozen=True, slots=True)
class Forward:
    """A follower hands a client's request to the leader over the authenticated peer
    link (the Raft core never sees it)."""

    request_id: int
    kind: ForwardKind
    data: Annotated[bytes, MaxLen(4 * 1024 * 1024)]


@PEER.message("ForwardResult")
@dataclass(frozen=True, slots=True)
class ForwardResult:
    """The leader's answer: the applied index, or an error code and detail."""

    request_id: int
    index: int
    error_code: ErrorCode | None  # None on success
    detail: Annotated[str, MaxLen(4096)]


@PEER.message("JoinRequest")
@dataclass(frozen=True, slots=True)
class JoinRequest:
    """A node that is not a member asks to be added as a learner (docs/architecture.md,
    "Membership"): sent to every initial member until it sees itself in a configuration;
    only the leader acts on it.  ``log_last_index`` lets the leader refuse a node that
    holds an old log (a removed member restarted) instead of silently readmitting it.
    ``observer``: the node runs with ``cluster.role = "observer"`` and asks to be added
    as a permanent non-voting member (docs/architecture.md, "Observers")."""

    node_id: NodeId
    address: PeerAddressText
    log_last_index: int
    observer: Annotated[bool, OmitDefault()] = False


RaftMessage = (
    RequestVote
    | VoteResponse
    | AppendEntries
    | AppendResponse
    | InstallSnapshot
    | SnapshotResponse
    | TimeoutNow
)
ForwardMessage = Forward | ForwardResult


@PEER.message("JoinReply")
@dataclass(frozen=True, slots=True)
class JoinReply:
    """Any node's answer to a `JoinRequest` from a peer it knows: how far its log goes.
    An initial member booting with an empty data dir asks first, so that it bootstraps
    the cluster only if none exists yet (docs/architecture.md, "Membership")."""

    term: int
    last_index: int


HandshakeMessage = PeerHello | HelloAck | HelloRefused
JoinMessage = JoinRequest | JoinReply
PeerMessage = HandshakeMessage | RaftMessage | ForwardMessage | JoinMessage
