"""This node's ownership of shards, the events that move it, and their buffer.

PURE (no I/O, no clock, no randomness; ``tests/test_layering.py``).  *Ownership* of a
shard by a node is its role there (`ShardRole.LEADER`, `ShardRole.REPLICA`,
`ShardRole.CATCHING_UP` for a new replica still copying, or not owned) plus,
while leading, the leader epoch (docs/architecture.md §8).  `OwnershipEvent`s move one
ownership map to the next (`ownership_diff` for two whole views); `OwnershipLedger`
buffers events for a slow consumer, coalescing them per shard.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from felix.broker.records import ShardId


class ShardRole(enum.StrEnum):
    """This broker's role on one shard (a dataplane role, unrelated to a Raft node's role)."""

    LEADER = "leader"
    REPLICA = "replica"
    CATCHING_UP = "catching_up"  # a new replica copying the shard; it reports when ready


@dataclass(frozen=True, slots=True)
class Ownership:
    """This node's role on one shard; ``leader_epoch`` is the shard's epoch."""

    role: ShardRole
    leader_epoch: int

    def same_as(self, other: Ownership | None) -> bool:
        """Equal for the broker's purposes: same role and, when leading, same epoch (a
        leader whose epoch moved lost the shard in between and must re-establish it)."""
        if other is None or other.role is not self.role:
            return False
        return self.role is not ShardRole.LEADER or other.leader_epoch == self.leader_epoch


@dataclass(frozen=True, slots=True)
class OwnershipEvent:
    """This broker's role on ``shard`` changed from ``previous`` to ``role``.

    ``role`` None: stop owning the shard; ``previous`` None: start owning it.
    ``previous == role == LEADER``: still leader, but under a new ``leader_epoch``.
    ``version`` is the metadata version at which the new role holds.
    """

    shard: ShardId
    previous: ShardRole | None
    role: ShardRole | None
    leader_epoch: int
    version: int

    @property
    def started(self) -> bool:
        return self.previous is None and self.role is not None

    @property
    def stopped(self) -> bool:
        return self.role is None


def ownership_event(
    shard: ShardId, old: Ownership | None, new: Ownership | None, version: int
) -> OwnershipEvent:
    epoch = new.leader_epoch if new is not None else (old.leader_epoch if old else 0)
    return OwnershipEvent(
        shard, old.role if old else None, new.role if new else None, epoch, version
    )


def same_ownership(old: Ownership | None, new: Ownership | None) -> bool:
    return new.same_as(old) if new is not None else old is None


def ownership_diff(
    old: Mapping[ShardId, Ownership], new: Mapping[ShardId, Ownership], version: int
) -> tuple[OwnershipEvent, ...]:
    """The events that move ownership ``old`` to ``new``, in shard order."""
    if not old:
        return tuple(
            OwnershipEvent(shard, None, new[shard].role, new[shard].leader_epoch, version)
            for shard in sorted(new)
        )
    return tuple(
        ownership_event(shard, old.get(shard), new.get(shard), version)
        for shard in sorted(old.keys() | new.keys())
        if not same_ownership(old.get(shard), new.get(shard))
    )


class OwnershipLedger:
    """Ownership events not yet taken by the consumer, coalesced per shard.

    The ledger knows what the consumer was last told per shard (``delivered``, starting
    from ``baseline``), so a slow consumer gets, per shard, one event from what it knows
    to what is true now, in the order the shards first changed; a change that was undone
    before it was taken (start then stop; leader, replica, leader again in the same
    epoch) disappears, and nothing else is dropped.  Memory is bounded by the number of
    shards with a pending change.
    """

    def __init__(self, baseline: Mapping[ShardId, Ownership] | None = None) -> None:
        self.delivered: dict[ShardId, Ownership] = dict(baseline or {})
        self._pending: dict[ShardId, OwnershipEvent] = {}  # insertion-ordered
        self.coalesced = 0

    def __len__(self) -> int:
        return len(self._pending)

    def push(self, events: Iterable[OwnershipEvent]) -> None:
        pending = self._pending
        for event in events:
            shard = event.shard
            if shard not in pending:
                pending[shard] = event
                continue
            self.coalesced += 1
            known = self.delivered.get(shard)
            now = None if event.role is None else Ownership(event.role, event.leader_epoch)
            if same_ownership(known, now):
                del pending[shard]  # undone before it was taken
            else:
                pending[shard] = ownership_event(
                    shard, known, now, event.version
                )  # keeps its place

    def pop(self) -> OwnershipEvent | None:
        """The oldest pending event (it counts as delivered), or None."""
        pending = self._pending
        if not pending:
            return None
        event = pending.pop(next(iter(pending)))
        self._deliver(event)
        return event

    def _deliver(self, event: OwnershipEvent) -> None:
        if event.role is None:
            self.delivered.pop(event.shard, None)
        else:
            self.delivered[event.shard] = Ownership(event.role, event.leader_epoch)

    def take(self) -> list[OwnershipEvent]:
        """Every pending event, oldest first; they count as delivered."""
        events = list(self._pending.values())
        self._pending.clear()
        for event in events:
            self._deliver(event)
        return events

    def __iter__(self) -> Iterator[OwnershipEvent]:
        return iter(list(self._pending.values()))
