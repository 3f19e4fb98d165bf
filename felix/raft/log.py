"""The in-memory Raft log: the entries since the last snapshot, plus that snapshot.

Theory of operation
-------------------
Entries live in one Python list; ``_entries[i]`` has index ``snap_index + 1 + i``, so
every lookup and slice is index arithmetic, never a search or a copy of the whole log.
Index ``snap_index`` itself is still answerable (its term is ``snap_term``): that is
what the consistency check of the first entry after a snapshot needs (§7).

Besides the entries, the log tracks two watermarks the core needs for its Ready
contract (see `felix.raft.ready`):

* ``unsaved_from``: the lowest index changed since the last `take_unsaved` call; the
  next Ready persists ``[unsaved_from, last_index]`` as a suffix overwrite.
* ``persisted_index``: how far the log is known durable on this node (from
  `felix.raft.types.Persisted`).  A leader counts itself toward a quorum only up to
  here (thesis §10.2.1).  Truncation pulls it back.
"""

from __future__ import annotations

from felix.proto.raft_messages import Entry, SnapshotMeta


class RaftLog:
    __slots__ = (
        "_entries",
        "persisted_index",
        "snap_index",
        "snap_term",
        "snapshot",
        "unsaved_from",
    )

    def __init__(
        self,
        snapshot: tuple[SnapshotMeta, bytes] | None = None,
        entries: tuple[Entry, ...] = (),
    ) -> None:
        self.snapshot = snapshot
        self.snap_index = snapshot[0].index if snapshot else 0
        self.snap_term = snapshot[0].term if snapshot else 0
        self._entries: list[Entry] = []
        if entries:
            assert entries[0].index == self.snap_index + 1, "boot entries must follow the snapshot"
            for i, e in enumerate(entries):
                assert e.index == self.snap_index + 1 + i, "boot entries must be contiguous"
            self._entries.extend(entries)
        # Everything handed in at boot came from the WAL, so it is durable already.
        self.unsaved_from = self.last_index + 1
        self.persisted_index = self.last_index

    # -- queries -------------------------------------------------------------------

    @property
    def first_index(self) -> int:
        return self.snap_index + 1

    @property
    def last_index(self) -> int:
        return self.snap_index + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self.snap_term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at ``index``; None if compacted away or not there yet."""
        offset = index - self.snap_index
        if offset == 0:
            return self.snap_term
        if 0 < offset <= len(self._entries):
            return self._entries[offset - 1].term
        return None

    def entry(self, index: int) -> Entry:
        return self._entries[index - self.snap_index - 1]

    def slice(self, lo: int, hi: int) -> list[Entry]:
        """Entries ``[lo, hi)``; ``lo`` must not be compacted."""
        assert lo > self.snap_index, f"slice from {lo} but log starts at {self.first_index}"
        base = self.snap_index + 1
        return self._entries[lo - base : hi - base]

    def slice_capped(self, lo: int, count_max: int, bytes_max: int) -> list[Entry]:
        """Up to ``count_max`` entries from ``lo`` whose data totals at most ``bytes_max``
        (but always at least one entry if there is one, so a huge entry still moves)."""
        batch = self.slice(lo, lo + count_max)
        total = 0
        for i, e in enumerate(batch):
            total += len(e.data)
            if total > bytes_max and i > 0:
                return batch[:i]
        return batch

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: a candidate's log is at least as up-to-date as ours."""
        mine = self.last_term
        return last_term > mine or (last_term == mine and last_index >= self.last_index)

    def conflict_hint(self, prev_index: int) -> tuple[int, int | None]:
        """Fast back-off hint for a rejected AppendEntries at ``prev_index`` (§5.3, closing
        paragraphs): (first index of our term at prev_index, that term), or (our last
        index + 1, None) if our log is shorter."""
        term = self.term_at(prev_index)
        if term is None:
            return min(prev_index, self.last_index + 1), None
        index = prev_index
        while index - 1 > self.snap_index and self.entry(index - 1).term == term:
            index -= 1
        return index, term

    def last_index_of_term(self, term: int) -> int | None:
        """The last index holding ``term`` (the leader's side of the fast back-off)."""
        for i in range(len(self._entries) - 1, -1, -1):
            t = self._entries[i].term
            if t == term:
                return self.snap_index + 1 + i
            if t < term:
                return None
        return self.snap_index if self.snap_term == term else None

    # -- mutation ------------------------------------------------------------------

    def append(self, entry: Entry) -> None:
        assert entry.index == self.last_index + 1
        self._entries.append(entry)

    def find_conflict(self, entries: tuple[Entry, ...] | list[Entry]) -> int:
        """Position in ``entries`` of the first one we do not already hold (same index
        and term); ``len(entries)`` if we hold them all (§5.3 receiver rules 3–4)."""
        for pos, e in enumerate(entries):
            if self.term_at(e.index) != e.term:
                return pos
        return len(entries)

    def truncate_and_append(self, entries: tuple[Entry, ...] | list[Entry]) -> None:
        """Drop everything from ``entries[0].index`` on, then append ``entries``."""
        start = entries[0].index
        assert self.snap_index < start <= self.last_index + 1
        del self._entries[start - self.snap_index - 1 :]
        self._entries.extend(entries)
        if start < self.unsaved_from:
            self.unsaved_from = start
        if start <= self.persisted_index:
            self.persisted_index = start - 1

    def take_unsaved(self) -> list[Entry]:
        """Entries the next Ready must persist; resets the watermark."""
        lo = self.unsaved_from
        last = self.last_index
        self.unsaved_from = last + 1
        if lo > last:
            return []
        return self.slice(lo, last + 1)

    def mark_persisted(self, index: int, term: int) -> bool:
        """Record that ``index`` of ``term`` is durable; False if that is stale news (the
        entry has since been overwritten) or nothing new."""
        if index <= self.persisted_index or self.term_at(index) != term:
            return False
        if index >= self.unsaved_from:
            return False  # not even handed out yet: cannot be durable
        self.persisted_index = index
        return True

    def compact(self, index: int, meta: SnapshotMeta, data: bytes) -> None:
        """Drop entries up to ``index`` (which stays answerable through snap_term)."""
        assert self.snap_index < index <= self.last_index
        assert meta.index == index
        self.snap_term = meta.term
        del self._entries[: index - self.snap_index]
        self.snap_index = index
        self.snapshot = (meta, data)

    def restore(self, meta: SnapshotMeta, data: bytes) -> None:
        """Replace the whole log by a snapshot received from the leader (§7)."""
        self._entries.clear()
        self.snap_index = meta.index
        self.snap_term = meta.term
        self.snapshot = (meta, data)
        self.unsaved_from = meta.index + 1
        self.persisted_index = meta.index
