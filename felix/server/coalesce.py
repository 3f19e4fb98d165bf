"""The net effect of consecutive deltas: what a lagging subscriber gets instead of every
version it missed (docs/architecture.md §7, "Watch fan-out").

PURE (no I/O, no clock).  Folding deltas ``a -> b -> ... -> z`` keeps, per record
``(kind, key)``, only its latest change (a delete stays a delete: the subscriber may
hold the record), with ``prev_version`` of the first delta and ``version`` and
``digest`` of the last.  Applying that one delta on top of ``a`` gives the view at
``z``: every record's final value is its last change, and the digest is a function of
the view alone (an order-independent sum of per-record hashes, `felix.metadata.digest`),
so the newest version's digest is the net delta's too.  Held memory grows with the
records touched, not with the versions folded.
"""

from __future__ import annotations

from collections.abc import Iterable

from felix.proto.client_messages import Change, Delta

DELTA_OVERHEAD_BYTES = 32  # versions and framing of one delta (`delta_size`)
CHANGE_OVERHEAD_BYTES = 16


def change_size(change: Change) -> int:
    """A cheap estimate of one change's encoded size (the hub's `delta_size` per change)."""
    total = CHANGE_OVERHEAD_BYTES + len(change.kind) + len(change.key)
    if change.value:
        total += sum(8 + len(k) + value_size(v) for k, v in change.value.items())
    return total


def value_size(value: object) -> int:
    if isinstance(value, (str, bytes)):
        return len(value) + 2
    if isinstance(value, tuple):
        return sum(value_size(v) for v in value) + 2
    return 9


class NetDelta:
    """Consecutive deltas folded into one, as they arrive; `delta` builds the result."""

    __slots__ = ("_changes", "changes_bytes", "digest", "prev_version", "version")

    def __init__(self, first: Delta) -> None:
        self.prev_version = first.prev_version
        self.version = first.prev_version
        self.digest = first.digest
        self.changes_bytes = 0  # estimated encoded size of the net changes
        self._changes: dict[tuple[str, str], Change] = {}
        self.add(first)

    @property
    def versions(self) -> int:
        """How many versions are folded in."""
        return self.version - self.prev_version

    @property
    def size_bytes(self) -> int:
        """Estimated encoded size of the net delta (the held-bytes bound counts this)."""
        return DELTA_OVERHEAD_BYTES + len(self.digest) + self.changes_bytes

    @property
    def records(self) -> int:
        """Distinct records changed."""
        return len(self._changes)

    def add(self, delta: Delta) -> None:
        """Fold in the next delta; ValueError (nothing folded) if it does not follow."""
        if delta.prev_version != self.version or delta.version <= delta.prev_version:
            raise ValueError(
                f"delta {delta.prev_version}->{delta.version} does not follow version"
                f" {self.version}"
            )
        changes = self._changes
        size = self.changes_bytes
        for change in delta.changes:
            ident = (change.kind, change.key)
            old = changes.get(ident)  # (the order of first changes: any order gives one view)
            if old is not None:
                size -= change_size(old)
            changes[ident] = change
            size += change_size(change)
        self.changes_bytes = size
        self.version, self.digest = delta.version, delta.digest

    def extend(self, deltas: Iterable[Delta]) -> None:
        for delta in deltas:
            self.add(delta)

    def delta(self) -> Delta:
        """The one delta ``prev_version -> version`` with the net changes."""
        return Delta(self.prev_version, self.version, self.digest, tuple(self._changes.values()))


def coalesce(deltas: Iterable[Delta]) -> Delta:
    """The net effect of consecutive ``deltas`` as one delta; ValueError if they are
    empty or do not chain (each ``prev_version`` the previous one's ``version``)."""
    it = iter(deltas)
    first = next(it, None)
    if first is None:
        raise ValueError("nothing to coalesce")
    net = NetDelta(first)
    net.extend(it)
    return net.delta()
