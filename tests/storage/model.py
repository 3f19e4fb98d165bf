"""A reference model of what the WAL + snapshot store must return at boot.

Deliberately simple and independent of the implementation: the whole logical log is a
dict, snapshots are a list, and `expected_boot` applies the Raft §7 rule directly.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

from felix.proto.raft_messages import ConfState, Entry, EntryKind, SnapshotMeta
from felix.raft.types import BootState, HardState
from felix.storage.snapshots import snapshot_meta

CONF = ConfState((1, 2, 3), ())


def entries(start: int, stop: int, term: int, data: bytes = b"x") -> tuple[Entry, ...]:
    """Entries ``start..stop`` (inclusive) of ``term``, each with distinct data."""
    return tuple(
        Entry(i, term, EntryKind.NORMAL, data + i.to_bytes(4, "big"))
        for i in range(start, stop + 1)
    )


def snap(index: int, term: int, payload: bytes = b"state") -> tuple[SnapshotMeta, bytes]:
    data = payload + index.to_bytes(8, "big")
    return snapshot_meta(index, term, CONF, data), data


@dataclass
class Model:
    hard_state: HardState = field(default_factory=HardState)
    log: dict[int, Entry] = field(default_factory=dict)
    base: tuple[int, int] = (0, 0)
    snapshots: list[tuple[SnapshotMeta, bytes]] = field(default_factory=list)

    def save(
        self,
        hard_state: HardState | None = None,
        new: Sequence[Entry] = (),
        snapshot: tuple[SnapshotMeta, bytes] | None = None,
    ) -> None:
        if snapshot is not None:
            self.store(snapshot)
            self.log = {}
            self.base = (snapshot[0].index, snapshot[0].term)
        if new:
            self.log = {i: e for i, e in self.log.items() if i < new[0].index}
            self.log.update((e.index, e) for e in new)
        if hard_state is not None:
            self.hard_state = hard_state

    def store(self, snapshot: tuple[SnapshotMeta, bytes]) -> None:
        self.snapshots = [s for s in self.snapshots if s[0].index != snapshot[0].index]
        self.snapshots.append(snapshot)
        self.snapshots.sort(key=lambda s: s[0].index)

    def last_index(self) -> int:
        return max(self.log, default=self.base[0])

    def copy(self) -> Model:
        return copy.deepcopy(self)

    def expected_boot(self) -> BootState:
        hs = self.hard_state
        if not self.snapshots:
            return BootState(hs, CONF, None, tuple(self.log[i] for i in sorted(self.log)))
        meta, data = self.snapshots[-1]
        if meta.index in self.log:
            conflict = self.log[meta.index].term != meta.term
        else:
            conflict = (meta.index, meta.term) != self.base
        kept = () if conflict else tuple(self.log[i] for i in sorted(self.log) if i > meta.index)
        commit = max(hs.commit, meta.index)
        if meta.term > hs.term:
            hs = HardState(meta.term, None, commit)
        else:
            hs = HardState(hs.term, hs.vote, commit)
        return BootState(hs, meta.conf, (meta, data), kept)
