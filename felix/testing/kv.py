"""A replicated key-value register: the state machine the Trio-tier tests (tier B,
`felix.testing.cluster`) and the node tests check for lost writes (test-only).

Commands are CBOR-encoded `KvCommand`s.  An entry that does not decode is applied as a
no-op with an error result on every node alike (apply must be deterministic and must
never crash the node).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from felix.proto.cbor import MaxLen, dumps, from_plain, safe_loads, to_plain, wire_array
from felix.proto.errors import ProtocolError
from felix.proto.raft_messages import Entry, EntryKind


@wire_array
@dataclass(frozen=True, slots=True)
class KvCommand:
    key: Annotated[str, MaxLen(1024)]
    value: bytes | None  # None deletes


@wire_array
@dataclass(frozen=True, slots=True)
class KvSnapshot:
    index: int
    items: dict[Annotated[str, MaxLen(1024)], bytes]


def encode_put(key: str, value: bytes | None) -> bytes:
    return dumps(to_plain(KvCommand(key, value)))


class KvStateMachine:
    def __init__(self) -> None:
        self.items: dict[str, bytes] = {}
        self.applied: list[tuple[int, int]] = []  # (index, term) of every entry, in order
        self.index = 0

    def apply(self, entry: Entry) -> bytes | ProtocolError | None:
        assert entry.index == self.index + 1, f"applied {entry.index} after {self.index}"
        self.index = entry.index
        self.applied.append((entry.index, entry.term))
        if entry.kind is not EntryKind.NORMAL:
            return None
        try:
            command = from_plain(KvCommand, safe_loads(entry.data, max_depth=2))
        except ProtocolError as exc:
            return exc
        previous = self.items.get(command.key)
        if command.value is None:
            self.items.pop(command.key, None)
        else:
            self.items[command.key] = command.value
        return previous

    def batch_applied(self) -> None:
        """Nothing to publish."""

    def snapshot_encoder(self) -> Callable[[], bytes]:
        frozen = KvSnapshot(self.index, dict(self.items))
        return lambda: dumps(to_plain(frozen))

    def restore(self, data: bytes, index: int) -> None:
        snapshot = from_plain(KvSnapshot, safe_loads(data, max_depth=3))
        self.items = dict(snapshot.items)
        self.index = index
        self.applied = []
