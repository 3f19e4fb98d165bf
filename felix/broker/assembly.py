"""Staging a snapshot as it arrives, and assembling multi-message deltas and snapshots.

PURE (no I/O, no clock, no randomness; ``tests/test_layering.py``).  `DeltaAssembler`
and `SnapshotAssembler` collect ``DeltaPart`` / ``Snapshot`` chunks and hand back a
whole delta / staged snapshot only at the end marker, so a big delta or snapshot is
applied atomically (docs/architecture.md §8).  A `SnapshotStage` builds the new view aside
(records, per-record hashes, typed tables, routing), chunk by chunk, so a malformed
record leaves the cache unchanged and the install is a handful of table swaps.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from felix.broker.records import (
    CONVERTERS,
    DIGEST_MASK,
    AssemblyError,
    CacheError,
    RecordError,
    RecordId,
    ShardId,
)
from felix.metadata.config import ConfigValue
from felix.metadata.digest import record_hash
from felix.metadata.model import (
    KIND_NODE,
    KIND_SHARD,
    KIND_STREAM,
    KIND_TENANT,
    Node,
    Shard,
    Stream,
    Tenant,
)
from felix.proto.client_messages import Change, Delta, DeltaPart, Record, SnapshotChunk


@dataclass(slots=True)
class StagedTables:
    """A staged view's tables, handed over once to the cache that installs them."""

    records: dict[RecordId, Record]
    hashes: dict[RecordId, int]
    nodes: dict[int, Node]
    streams: dict[str, Stream]
    shards: dict[ShardId, Shard]
    tenants: dict[str, Tenant]
    config: dict[str, ConfigValue]
    routing: dict[ShardId, str | None]
    led_by: dict[int, set[ShardId]]


class SnapshotStage:
    """A snapshot being received, not yet applied: each record is hashed once and
    sorted into fresh typed tables, routing and the leader index as its chunk arrives,
    so that work overlaps the transfer and each chunk's messages are freed right away.
    The cache is untouched until `MetadataCache.apply_snapshot` finds the digest of all
    the records equal to the snapshot's and installs the stage (once).

    Records may come in any order (a shard before its leader's node is routed when the
    node arrives); a value None is skipped; a record that comes twice is refused
    (`AssemblyError`), as is one that does not fit its kind's schema (`CacheError`);
    after an error the stage is only good for discarding.
    """

    def __init__(self) -> None:
        self.total = 0  # the digest of the records staged so far
        self._tables: StagedTables | None = StagedTables({}, {}, {}, {}, {}, {}, {}, {}, {})

    @property
    def records(self) -> Mapping[RecordId, Record]:
        return self._live().records

    def _live(self) -> StagedTables:
        if self._tables is None:
            raise CacheError("this snapshot stage was applied already")
        return self._tables

    def add(self, changes: Iterable[Change]) -> None:
        """Stage more of the snapshot's records (each checked and typed by the same
        `CONVERTERS` as a delta's).  A bulk build of long-lived objects: the Trio shell
        runs it with the GC paused (`felix.gc_pause.gc_paused`)."""
        t = self._live()
        records, hashes, shards, routing = t.records, t.hashes, t.shards, t.routing
        nodes, led_by = t.nodes, t.led_by
        converters = CONVERTERS
        convert_shard = converters[KIND_SHARD]
        total = self.total
        try:
            for change in changes:
                value = change.value
                if value is None:
                    continue
                kind, key = change.kind, change.key
                if kind == KIND_SHARD:
                    shard_id, shard = convert_shard(key, value)
                else:
                    convert = converters.get(kind) if type(kind) is str else None
                    if convert is None:
                        raise RecordError(kind, key, "unknown record kind")
                    table_key, typed = convert(key, value)
                ident = (kind, key)
                if ident in records:
                    raise AssemblyError(f"the snapshot holds {kind} {key!r} twice")
                record_digest = record_hash(kind, key, value)
                records[ident] = value
                hashes[ident] = record_digest
                total += record_digest
                if kind == KIND_SHARD:
                    shards[shard_id] = shard
                    leader = shard.leader
                    if leader is None:
                        routing[shard_id] = None
                        continue
                    leader_node = nodes.get(leader)
                    routing[shard_id] = leader_node.address if leader_node is not None else None
                    led = led_by.get(leader)
                    if led is None:
                        led = led_by[leader] = set()
                    led.add(shard_id)
                elif kind == KIND_NODE:
                    nodes[table_key] = typed
                    for led_shard in led_by.get(table_key, ()):
                        routing[led_shard] = typed.address  # its shards came first
                elif kind == KIND_STREAM:
                    t.streams[table_key] = typed
                elif kind == KIND_TENANT:
                    t.tenants[table_key] = typed
                else:
                    t.config[table_key] = typed.value
        finally:
            self.total = total & DIGEST_MASK

    def take(self) -> StagedTables:
        """The staged tables, once (the cache that installs them owns them)."""
        tables = self._live()
        self._tables = None
        return tables


class DeltaAssembler:
    """Collects the `DeltaPart`s of one delta; returns the whole `Delta` at ``last``."""

    def __init__(self) -> None:
        self._parts: list[DeltaPart] = []

    @property
    def pending(self) -> bool:
        return bool(self._parts)

    def reset(self) -> None:
        self._parts = []

    def add(self, part: DeltaPart) -> Delta | None:
        parts = self._parts
        first = parts[0] if parts else None
        if part.seq != len(parts) or (
            first is not None
            and (first.version, first.prev_version, first.digest)
            != (part.version, part.prev_version, part.digest)
        ):
            self.reset()
            raise AssemblyError(f"delta part {part.seq} of version {part.version} out of order")
        parts.append(part)
        if not part.last:
            return None
        self.reset()
        changes = tuple(change for p in parts for change in p.changes)
        return Delta(part.prev_version, part.version, part.digest, changes)


class SnapshotAssembler:
    """Stages `SnapshotChunk`s as they arrive (see `SnapshotStage`); returns (version,
    digest, stage) at ``last``, for `MetadataCache.apply_snapshot`."""

    def __init__(self) -> None:
        self._stage: SnapshotStage | None = None
        self._of: tuple[int, bytes] = (0, b"")  # (version, digest) of the first chunk
        self._next = 0

    @property
    def pending(self) -> bool:
        return self._stage is not None

    def reset(self) -> None:
        self._stage = None
        self._next = 0

    def add(self, chunk: SnapshotChunk) -> tuple[int, bytes, SnapshotStage] | None:
        stage = self._stage
        if chunk.seq != self._next or (
            stage is not None and self._of != (chunk.version, chunk.digest)
        ):
            self.reset()
            raise AssemblyError(f"snapshot chunk {chunk.seq} of {chunk.version} out of order")
        if stage is None:
            stage = self._stage = SnapshotStage()
            self._of = (chunk.version, chunk.digest)
        try:
            stage.add(chunk.records)
        except CacheError:
            self.reset()
            raise
        if not chunk.last:
            self._next += 1
            return None
        self.reset()
        return chunk.version, chunk.digest, stage
