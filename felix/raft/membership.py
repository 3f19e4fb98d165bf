"""Cluster membership: single-server changes (thesis ch. 4) and the configuration history.

Why single-server changes rather than joint consensus
----------------------------------------------------
Adding or removing one voter at a time guarantees that any majority of the old voters
and any majority of the new voters overlap (thesis §4.1), so no intermediate joint
configuration is needed: each change is one ordinary log entry, and there is never more
than one configuration to count quorums in.  A control plane of 3 or 5 nodes grows and
shrinks one node at a time anyway (join as a learner, promote when caught up, remove),
and the extra machinery of joint consensus (thesis §4.3) would buy nothing but risk.
The one subtlety — a leader must commit an entry of its own term before it may append a
change (the bug fix in the thesis errata / raft-dev 2015) — is enforced in leader.py.

A configuration takes effect as soon as its entry is in a server's log, committed or not
(thesis §4.1).  So every server keeps the configurations of the CONFIG entries still in
its log, and falls back to the previous one if such an entry is truncated away.

Every CONFIG entry the leader appends carries the whole resulting configuration
(``ConfChange.result``, as hashicorp/raft's configuration entries do), member addresses
included.  A server applies it as is, so what a node believes does not depend on the
configuration it booted with: a node that joins with none (docs/architecture.md,
"Membership") knows the voters from the first CONFIG entry it holds.

Observers (docs/architecture.md, "Observers") are learners marked permanent: an
ADD_LEARNER with ``observer`` puts the node in ``ConfState.observers`` too, and a PROMOTE
of one is refused here, on every node alike, whatever asked for it: an observer can only
leave (REMOVE), never vote.
"""

from __future__ import annotations

from felix.proto import cbor
from felix.proto.errors import ProtocolError
from felix.proto.raft_messages import ConfChange, ConfChangeKind, ConfState, MemberAddress

CONF_CHANGE_DEPTH_MAX = 6  # change > result > addresses > address > fields


def encode_change(change: ConfChange) -> bytes:
    return cbor.dumps(cbor.to_plain(change))


def decode_change(data: bytes) -> ConfChange:
    return cbor.from_plain(ConfChange, cbor.safe_loads(data, max_depth=CONF_CHANGE_DEPTH_MAX))


def check_change(conf: ConfState, change: ConfChange) -> str | None:
    """Why ``change`` cannot be applied to ``conf`` (None if it can)."""
    node = change.node
    if change.observer and change.kind is not ConfChangeKind.ADD_LEARNER:
        return f"{change.kind.name} of node {node} marked observer: only an ADD_LEARNER is"
    if change.kind is ConfChangeKind.ADD_LEARNER:
        if node in conf.voters or node in conf.learners:
            return f"node {node} is already a member"
    elif change.kind is ConfChangeKind.PROMOTE:
        if node in conf.observers:
            return f"node {node} is an observer: observers are never promoted"
        if node not in conf.learners:
            return f"node {node} is not a learner"
    elif change.kind is ConfChangeKind.REMOVE:
        if node not in conf.voters and node not in conf.learners:
            return f"node {node} is not a member"
        if conf.voters == (node,):
            return f"node {node} is the last voter"
    return None


def apply_change(conf: ConfState, change: ConfChange) -> ConfState:
    """The configuration after ``change``; an inapplicable change leaves it unchanged
    (a follower must follow its leader's log even if the leader erred)."""
    if check_change(conf, change) is not None:
        return conf
    node = change.node
    voters = tuple(v for v in conf.voters if v != node)
    learners = tuple(v for v in conf.learners if v != node)
    observers = tuple(v for v in conf.observers if v != node)
    if change.kind is ConfChangeKind.ADD_LEARNER:
        learners = (*learners, node)
        if change.observer:
            observers = (*observers, node)
    elif change.kind is ConfChangeKind.PROMOTE:
        voters = (*voters, node)
    addresses = {m.node: m.address for m in conf.addresses}
    if change.kind is ConfChangeKind.REMOVE:
        addresses.pop(node, None)
    elif change.kind is ConfChangeKind.ADD_LEARNER and change.address:
        addresses[node] = change.address
    return ConfState(voters, learners, _address_list(addresses), observers)


def with_result(conf: ConfState, change: ConfChange) -> ConfChange:
    """Leader only: ``change`` carrying the configuration it leads to from ``conf``."""
    return ConfChange(
        change.kind, change.node, change.address, apply_change(conf, change), change.observer
    )


def with_addresses(conf: ConfState, addresses: dict[int, str]) -> ConfState:
    """``conf`` with the given addresses of its members (others dropped; empty skipped)."""
    members = conf.members()
    kept = {n: a for n, a in addresses.items() if n in members and a}
    return ConfState(conf.voters, conf.learners, _address_list(kept), conf.observers)


def _address_list(addresses: dict[int, str]) -> tuple[MemberAddress, ...]:
    return tuple(MemberAddress(n, a) for n, a in sorted(addresses.items()) if a)


class ConfHistory:
    """The base configuration (from the snapshot or boot) plus one per CONFIG entry."""

    __slots__ = ("_changes", "base")

    def __init__(self, base: ConfState) -> None:
        self.base = base
        self._changes: list[tuple[int, ConfState]] = []

    @property
    def latest(self) -> ConfState:
        return self._changes[-1][1] if self._changes else self.base

    @property
    def latest_index(self) -> int:
        """Index of the CONFIG entry that set the latest configuration (0: none)."""
        return self._changes[-1][0] if self._changes else 0

    def append(self, index: int, data: bytes) -> ConfState:
        try:
            change = decode_change(data)
        except ProtocolError:
            return self.latest  # an undecodable change changes nothing, on every node alike
        conf = change.result if change.result is not None else apply_change(self.latest, change)
        self._changes.append((index, conf))
        return conf

    def truncate_from(self, index: int) -> None:
        """Forget configurations whose entries at ``index`` or later were truncated."""
        while self._changes and self._changes[-1][0] >= index:
            self._changes.pop()

    def at(self, index: int) -> ConfState:
        """The configuration in effect once the log up to ``index`` is applied."""
        conf = self.base
        for entry_index, c in self._changes:
            if entry_index > index:
                break
            conf = c
        return conf

    def compact(self, index: int) -> None:
        """The log up to ``index`` became a snapshot: fold those changes into the base."""
        self.base = self.at(index)
        self._changes = [(i, c) for i, c in self._changes if i > index]

    def reset(self, base: ConfState) -> None:
        self.base = base
        self._changes.clear()
