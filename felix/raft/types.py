"""Small value types shared by the Raft core, storage and the simulation."""

from __future__ import annotations

from dataclasses import dataclass

from felix.proto.raft_messages import ConfState, Entry, EntryKind, SnapshotMeta

__all__ = ["ConfState", "Entry", "EntryKind", "HardState", "SnapshotMeta"]


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before a node answers anyone (§5.1, figure 2 "persistent
    state"): the current term and the vote cast in it; ``commit`` is persisted too so a
    restart can re-apply without waiting for a leader."""

    term: int = 0
    vote: int | None = None
    commit: int = 0
