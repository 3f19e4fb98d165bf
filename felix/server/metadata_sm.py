"""The metadata model as the node's state machine, feeding the watch hub.

Every committed Raft entry advances the metadata version by one (commands, rejected
commands, NOOP and CONFIG entries alike), so versions equal Raft indexes on every node.
Deltas are collected while a Ready's committed entries are applied and published to the
hub once per batch, so the hub packs consecutive versions into few messages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from felix.metadata.state import ApplyResult, MetadataState
from felix.proto.cbor import gc_paused
from felix.proto.client_messages import Change, Delta
from felix.proto.raft_messages import Entry, EntryKind


class MetadataStateMachine:
    def __init__(self) -> None:
        self.state = MetadataState()
        self._batch: list[Delta] = []
        self.publish: Callable[[Sequence[Delta]], None] | None = None
        self.on_restore: Callable[[int], None] | None = None

    @property
    def version(self) -> int:
        return self.state.version

    def apply(self, entry: Entry) -> ApplyResult:
        if entry.kind is EntryKind.NORMAL:
            result = self.state.apply(entry.index, entry.data)
        else:
            result = self.state.apply_noop(entry.index)
        self._batch.append(result.delta)
        return result

    def batch_applied(self) -> None:
        """End of one Ready's apply: publish its deltas together."""
        if self._batch:
            deltas, self._batch = self._batch, []
            if self.publish is not None:
                self.publish(deltas)

    def snapshot_encoder(self) -> Callable[[], bytes]:
        """Freezes the view now (cheap table copies); the encoding runs off the loop."""
        return self.state.snapshot_encoder()

    def restore(self, data: bytes, index: int) -> None:
        self.state = MetadataState.restore(data)
        assert self.state.version == index, f"snapshot at {self.state.version}, meta {index}"
        self._batch = []
        if self.on_restore is not None:
            self.on_restore(index)

    def view(self) -> tuple[int, bytes, Sequence[Change]]:
        """(version, digest, records): a consistent full view for snapshots."""
        with gc_paused():  # a bulk build of long-lived objects: see `gc_paused`
            return self.state.version, self.state.digest, list(self.state.records())
