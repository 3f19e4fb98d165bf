"""The metadata model as the node's state machine, feeding the watch hub.

Every committed Raft entry advances the metadata version by one (commands, rejected
commands, NOOP and CONFIG entries alike), so versions equal Raft indexes on every node.
Deltas are collected while a Ready's committed entries are applied and published to the
hub once per batch, so the hub packs consecutive versions into few messages.

The graph is built once, in one direction (docs/architecture.md, "Object graph"): a
`MetadataStore` holds the current state; the `WatchHub` reads its view; the state
machine applies to it and publishes to the hub; the Raft node drives the state machine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from felix.gc_pause import gc_paused
from felix.metadata.state import ApplyResult, MetadataState
from felix.metadata.tokens import TokenRecord
from felix.proto.client_messages import Change, Delta
from felix.proto.raft_messages import Entry, EntryKind
from felix.server.outcome import Outcome


class MetadataStore:
    """The node's current metadata state.  Read by the watch hub, the session tracker
    and the client API; replaced only by `MetadataStateMachine` (apply and restore)."""

    def __init__(self, state: MetadataState | None = None) -> None:
        self.state = state or MetadataState()

    @property
    def version(self) -> int:
        return self.state.version

    def history(self) -> str:
        """The lineage of the applied state (docs/architecture.md §14)."""
        return self.state.history

    def tokens(self) -> Mapping[str, TokenRecord]:
        """The API tokens as of the applied state (private: never in `view`)."""
        return self.state.tokens

    def view(self) -> tuple[int, bytes, Sequence[Change]]:
        """(version, digest, records): a consistent full view for snapshots."""
        with gc_paused():  # a bulk build of long-lived objects: see `gc_paused`
            return self.state.version, self.state.digest, list(self.state.records())


class DeltaSink(Protocol):
    def publish(self, deltas: Sequence[Delta]) -> None:
        """Consecutive deltas, applied together (one Ready)."""
        ...

    def reset(self, version: int) -> None:
        """The state was replaced by a snapshot at ``version``: history is void."""
        ...


class MetadataStateMachine:
    def __init__(self, store: MetadataStore | None = None, sink: DeltaSink | None = None) -> None:
        self.store = store or MetadataStore()
        self.sink = sink
        self._batch: list[Delta] = []

    @property
    def state(self) -> MetadataState:
        return self.store.state

    @property
    def version(self) -> int:
        return self.store.state.version

    def apply(self, entry: Entry) -> ApplyResult:
        if entry.kind is EntryKind.NORMAL:
            result = self.store.state.apply(entry.index, entry.data)
        else:
            result = self.store.state.apply_noop(entry.index)
        self._batch.append(result.delta)
        return result

    def batch_applied(self) -> None:
        """End of one Ready's apply: publish its deltas together."""
        if self._batch:
            deltas, self._batch = self._batch, []
            if self.sink is not None:
                self.sink.publish(deltas)

    def snapshot_encoder(self) -> Callable[[], bytes]:
        """Freezes the view now (cheap table copies); the encoding runs off the loop."""
        return self.store.state.snapshot_encoder()

    def restore(self, data: bytes, index: int) -> None:
        state = MetadataState.restore(data)
        assert state.version == index, f"snapshot at {state.version}, meta {index}"
        self.store.state = state
        self._batch = []
        if self.sink is not None:
            self.sink.reset(index)


def metadata_outcome(index: int, result: Any) -> Outcome:
    """A committed metadata command that was rejected deterministically changed nothing:
    its proposer hears the command's error, at the index it committed at."""
    if isinstance(result, ApplyResult) and result.error is not None:
        return Outcome.failed(result.error.code, result.error.detail, index)
    return Outcome(index)
