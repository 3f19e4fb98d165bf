"""The broker's local copy of the metadata: records, typed tables, routing and ownership.

Theory of operation
-------------------
PURE (no I/O, no clock, no randomness; ``tests/test_layering.py``): the client feeds it
what the control plane sends and reads back what changed.

* Every record, in a snapshot or a delta, goes through the same check and typed
  conversion (`CONVERTERS`, one per kind of the record model, `felix.metadata.model`;
  docs/architecture.md §8): exactly the model's fields, each of its declared type (ints
  never negative, a node state one of `NodeState`), a key equal to the one the fields
  imply, a known kind.  A record that fails raises `RecordError` (a `CacheError`)
  naming the record and the problem (`felix.broker.records`).
* ``apply_snapshot`` replaces the whole view, but only after recomputing the snapshot's
  digest from its records and finding it equal to the one sent (else
  `DigestMismatch` and the cache is unchanged).  The new view is built aside first, in
  a `SnapshotStage` (records, per-record hashes, typed tables, routing), chunk by chunk
  as a snapshot arrives, so a malformed record also leaves the cache unchanged and the
  install itself is a handful of table swaps.
* ``apply_delta`` applies one `Delta` only on top of the cache's own version
  (`GapError` otherwise) and to a higher version, in two steps.  First, aside, every
  change is checked and typed and (unless ``verify_deltas=False``) hashed, and the
  running digest updated (O(1) per change: the hash of every record is kept, so only
  the new value is hashed) and compared with the delta's (`DigestMismatch`).  Then the
  records, hashes, typed tables, routing table and this node's ownership are updated
  from the typed changes by code that cannot fail: O(changes) per delta, and a delta is
  applied entirely or not at all.  With ``verify_deltas=False`` the per-record hashing
  (about half the apply cost) is skipped, the delta's digest is taken on trust and only
  a full `recompute_digest` (the client's periodic audit) checks it.
* `DeltaAssembler` and `SnapshotAssembler` collect ``DeltaPart`` / ``Snapshot`` chunks
  and hand back a whole delta / staged snapshot only at the end marker, so a big delta
  or snapshot is applied atomically (`felix.broker.assembly`, with `SnapshotStage`).

Every apply is one synchronous call, so a reader in the same Trio thread never sees a
half-applied delta: the records, the typed tables, the routing table and the ownership
map move together from one version to the next.

*Ownership* of a shard by ``node_id`` is its role there (`ShardRole.LEADER`, `ShardRole.REPLICA`,
or not owned) plus, while leading, the leader epoch.  Every apply returns the
`OwnershipEvent`s that move the previous ownership map to the new one: per changed
shard record for a delta, and the full diff of old view vs new view for a snapshot, so
a resync neither repeats an event the broker already saw nor loses one it missed.
`OwnershipLedger` buffers events for a slow consumer, coalescing them per shard
(`felix.broker.ownership`).  Every name of those three modules that callers use is
importable from here too.

Records handed out (``records``, ``Change.value``) are shared, not copied: read only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from felix.broker.assembly import (
    DeltaAssembler,
    SnapshotAssembler,
    SnapshotStage,
)
from felix.broker.ownership import (
    Ownership,
    OwnershipEvent,
    OwnershipLedger,
    ShardRole,
    ownership_diff,
    ownership_event,
    same_ownership,
)
from felix.broker.records import (
    CONVERTERS,
    DIGEST_MASK,
    AssemblyError,
    CacheError,
    Converter,
    DigestMismatch,
    GapError,
    RecordError,
    RecordId,
    ShardId,
    stage_changes,
    trusted_digest,
)
from felix.metadata.config import ConfigValue
from felix.metadata.digest import digest_bytes, record_hash
from felix.metadata.model import (
    KIND_CONFIG,
    KIND_NODE,
    KIND_SHARD,
    KIND_STREAM,
    KIND_TENANT,
    Node,
    Shard,
    Stream,
    Tenant,
)
from felix.proto.cbor import dataclass_slot_setters
from felix.proto.client_messages import Change, Delta, Record

__all__ = [
    "CONVERTERS",
    "AssemblyError",
    "CacheError",
    "CacheUpdate",
    "Converter",
    "DeltaAssembler",
    "DigestMismatch",
    "GapError",
    "MetadataCache",
    "Ownership",
    "OwnershipEvent",
    "OwnershipLedger",
    "RecordError",
    "RecordId",
    "ShardId",
    "ShardRole",
    "SnapshotAssembler",
    "SnapshotStage",
]

_NO_SHARDS: Final[tuple[ShardId, ...]] = ()
_NO_EVENTS: Final[tuple[OwnershipEvent, ...]] = ()


@dataclass(frozen=True, slots=True)
class CacheUpdate:
    """What one apply changed: the new version, this node's ownership events, and the
    routing-table entries that changed (added, moved or removed)."""

    version: int
    changes: tuple[Change, ...]
    ownership: tuple[OwnershipEvent, ...]
    routes: tuple[ShardId, ...]
    replaced: bool = False  # a snapshot replaced the whole view


_UPDATE_SETTERS: Final = dataclass_slot_setters(
    CacheUpdate, ("version", "changes", "ownership", "routes", "replaced")
)


def _delta_update(
    version: int,
    changes: tuple[Change, ...],
    ownership: tuple[OwnershipEvent, ...],
    routes: tuple[ShardId, ...],
) -> CacheUpdate:
    """``CacheUpdate(version, changes, ownership, routes)`` without the frozen
    dataclass's per-field ``object.__setattr__`` (one per delta, on the hot path)."""
    if _UPDATE_SETTERS is None:  # pragma: no cover - a plain frozen dataclass
        return CacheUpdate(version, changes, ownership, routes)
    update = object.__new__(CacheUpdate)
    set_version, set_changes, set_ownership, set_routes, set_replaced = _UPDATE_SETTERS
    set_version(update, version)
    set_changes(update, changes)
    set_ownership(update, ownership)
    set_routes(update, routes)
    set_replaced(update, False)
    return update


class MetadataCache:
    """The local view; see the module docstring.  ``node_id`` selects whose ownership
    is tracked (None: nobody's)."""

    def __init__(self, node_id: int | None = None, *, verify_deltas: bool = True) -> None:
        self.node_id = node_id
        self.verify_deltas = verify_deltas
        self.version: int | None = None  # None until the first snapshot
        self.history = ""  # the lineage of the view (docs/architecture.md §14)
        self.digest = 0
        self.records: dict[RecordId, Record] = {}
        self._hashes: dict[RecordId, int] = {}
        self.hashes_valid = True  # False after unverified deltas: audit with a recompute
        self.nodes: dict[int, Node] = {}
        self.streams: dict[str, Stream] = {}
        self.shards: dict[ShardId, Shard] = {}
        self.tenants: dict[str, Tenant] = {}
        self.config: dict[str, ConfigValue] = {}
        self.routing: dict[ShardId, str | None] = {}
        self.owned: dict[ShardId, Ownership] = {}
        self._led_by: dict[int, set[ShardId]] = {}  # node id -> shards it leads
        # No reference cycle through self (e.g. bound methods): a dropped cache, with
        # its whole view, is freed at once rather than by a later full GC pass.
        self._events: list[OwnershipEvent] = []

    # --- reading ------------------------------------------------------------------------

    @property
    def digest_bytes(self) -> bytes:
        return digest_bytes(self.digest)

    def leader_address(self, stream: str, index: int) -> str | None:
        return self.routing.get((stream, index))

    def node(self, node_id: int | None = None) -> Node | None:
        """A node's record; by default this cache's own node."""
        wanted = self.node_id if node_id is None else node_id
        return None if wanted is None else self.nodes.get(wanted)

    def shards_of(self, stream: str) -> list[Shard]:
        found = self.streams.get(stream)
        if found is None:
            return []
        return [s for i in range(found.shards) if (s := self.shards.get((stream, i)))]

    def recompute_digest(self) -> int:
        """The digest from scratch (every record rehashed): the local copy's self-check."""
        total = 0
        for (kind, key), value in self.records.items():
            total += record_hash(kind, key, value)
        return total & DIGEST_MASK

    def audit(self, idents: Iterable[RecordId]) -> list[RecordId]:
        """Rehash the given records (still present) and return those whose stored hash
        disagrees: a record changed in place behind the cache's back.  Cheap to run in
        slices between deltas, since a delta updates record and hash together.  Only
        while ``hashes_valid``; otherwise compare `recompute_digest` with ``digest``."""
        if not self.hashes_valid:
            raise CacheError("per-record hashes are off (unverified deltas)")
        bad: list[RecordId] = []
        records, hashes = self.records, self._hashes
        for ident in idents:
            value = records.get(ident)
            if value is not None and record_hash(ident[0], ident[1], value) != hashes[ident]:
                bad.append(ident)
        return bad

    def hashes_consistent(self) -> bool:
        """The running digest equals the sum of the stored per-record hashes."""
        if not self.hashes_valid:
            return self.recompute_digest() == self.digest
        return sum(self._hashes.values()) & DIGEST_MASK == self.digest

    # --- applying -----------------------------------------------------------------------

    def apply_snapshot(
        self,
        version: int,
        digest: bytes,
        records: Iterable[Change] | SnapshotStage,
        history: str = "",
    ) -> CacheUpdate:
        """Replace the view with ``records`` (or a `SnapshotStage` built from them as
        they arrived) of lineage ``history``; raises `DigestMismatch` (cache unchanged)
        if they do not hash to ``digest``, or `CacheError` (cache unchanged) if a record
        is malformed."""
        if isinstance(records, SnapshotStage):
            stage = records
        else:
            stage = SnapshotStage()
            stage.add(records)
        if digest_bytes(stage.total) != digest:
            raise DigestMismatch(version, digest, digest_bytes(stage.total))
        return self._install(version, stage, history)

    def _install(self, version: int, stage: SnapshotStage, history: str) -> CacheUpdate:
        tables = stage.take()
        owned = self._owned_in(tables.shards)
        routes = _changed_routes(self.routing, tables.routing)
        events = ownership_diff(self.owned, owned, version)
        # Nothing below raises: the whole view moves at once.  The public tables keep
        # their identity (read-only proxies of them are handed out).
        _replace(self.records, tables.records)
        _replace(self.nodes, tables.nodes)
        _replace(self.streams, tables.streams)
        _replace(self.shards, tables.shards)
        _replace(self.tenants, tables.tenants)
        _replace(self.config, tables.config)
        _replace(self.routing, tables.routing)
        _replace(self.owned, owned)
        self._hashes = tables.hashes
        self._led_by = tables.led_by
        self.hashes_valid = True
        self.digest, self.version, self.history = stage.total, version, history
        self._events.clear()
        return CacheUpdate(version, (), events, routes, replaced=True)

    def _owned_in(self, shards: Mapping[ShardId, Shard]) -> dict[ShardId, Ownership]:
        """This node's ownership in a whole new view (one pass over its shards)."""
        me = self.node_id
        owned: dict[ShardId, Ownership] = {}
        if me is None:
            return owned
        leading: dict[int, Ownership] = {}  # one shared (immutable) value per epoch
        replica: dict[int, Ownership] = {}
        for shard_id, shard in shards.items():
            epoch = shard.leader_epoch
            if shard.leader == me:
                found = leading.get(epoch)
                if found is None:
                    found = leading[epoch] = Ownership(ShardRole.LEADER, epoch)
                owned[shard_id] = found
            elif me in shard.catching_up:
                owned[shard_id] = Ownership(ShardRole.CATCHING_UP, epoch)
            elif me in shard.replicas:
                found = replica.get(epoch)
                if found is None:
                    found = replica[epoch] = Ownership(ShardRole.REPLICA, epoch)
                owned[shard_id] = found
        return owned

    def apply_delta(self, delta: Delta) -> CacheUpdate:
        """Apply one delta atomically; see the module docstring for the errors.

        Two steps: every change is checked and typed (`CONVERTERS`, the same conversion
        a snapshot's records go through), hashed and the digest compared, all aside;
        only then are records, hashes, typed tables, routing and ownership updated, by
        code that cannot fail, so a refused delta changes nothing."""
        version = self.version
        if delta.prev_version != version or version is None:
            raise GapError(version, delta.prev_version, delta.version)
        if not delta.version > version:
            raise CacheError(f"delta {version}->{delta.version} does not advance the version")
        changes = delta.changes
        if self.verify_deltas:
            hashes = self._hashes
            if not self.hashes_valid:  # back from unverified deltas: rebuilt aside
                hashes = {ident: record_hash(*ident, v) for ident, v in self.records.items()}
            staged, change = stage_changes(changes, hashes)
            digest = (self.digest + change) & DIGEST_MASK
            if digest_bytes(digest) != delta.digest:
                raise DigestMismatch(delta.version, delta.digest, digest_bytes(digest))
            self._hashes, self.hashes_valid = hashes, True
        else:
            staged, _ = stage_changes(changes, None)
            digest = trusted_digest(delta)
            hashes = None
            self.hashes_valid = False  # the per-record hashes stop following the records
        # The commit: nothing below raises, so the view moves to the new version whole.
        self.digest, self.version = digest, delta.version
        records = self.records
        touched: list[ShardId] = []
        apply_typed = _TYPED_HANDLERS
        for kind, key, value, record_digest, table_key, typed in staged:
            if value is None:
                records.pop((kind, key), None)
                if hashes is not None:
                    hashes.pop((kind, key), None)
            else:
                records[(kind, key)] = value
                if hashes is not None:
                    hashes[(kind, key)] = record_digest
            apply_typed[kind](self, table_key, typed, touched)
        events = _NO_EVENTS
        if self._events:
            events, self._events = tuple(self._events), []
        return _delta_update(
            delta.version, changes, events, tuple(touched) if touched else _NO_SHARDS
        )

    # --- typed tables, routing and ownership (one handler per kind; none raises) --------

    def _node_changed(self, node_id: Any, node: Any, touched: list[ShardId]) -> None:
        old = self.nodes.get(node_id)
        if node is None:
            self.nodes.pop(node_id, None)
            address = None
        else:
            self.nodes[node_id] = node
            address = node.address
        if (old.address if old else None) != address:
            for shard in self._led_by.get(node_id, ()):
                self.routing[shard] = address
                touched.append(shard)

    def _stream_changed(self, name: Any, stream: Any, touched: list[ShardId]) -> None:
        if stream is None:
            self.streams.pop(name, None)
        else:
            self.streams[name] = stream

    def _tenant_changed(self, name: Any, tenant: Any, touched: list[ShardId]) -> None:
        if tenant is None:
            self.tenants.pop(name, None)
        else:
            self.tenants[name] = tenant

    def _config_changed(self, name: Any, entry: Any, touched: list[ShardId]) -> None:
        if entry is None:
            self.config.pop(name, None)
        else:
            self.config[name] = entry.value

    def _shard_changed(self, shard_id: Any, new: Any, touched: list[ShardId]) -> None:
        old = self.shards.get(shard_id)
        old_leader = old.leader if old is not None else None
        new_leader = new.leader if new is not None else None
        if new is None:
            self.shards.pop(shard_id, None)
        else:
            self.shards[shard_id] = new
        if old_leader is not None and old_leader != new_leader:
            led = self._led_by.get(old_leader)
            if led is not None:
                led.discard(shard_id)
        if new_leader is not None and old_leader != new_leader:
            self._led_by.setdefault(new_leader, set()).add(shard_id)
        if new is None:
            if old is not None:
                self.routing.pop(shard_id, None)
                touched.append(shard_id)
        else:
            leader_node = self.nodes.get(new_leader) if new_leader is not None else None
            address = leader_node.address if leader_node is not None else None
            if old is None or self.routing.get(shard_id) != address:
                self.routing[shard_id] = address
                touched.append(shard_id)
        if self.node_id is not None:
            self._ownership(shard_id, new)

    def _ownership(self, shard_id: ShardId, shard: Shard | None) -> None:
        me = self.node_id
        new: Ownership | None = None
        if shard is not None:
            if shard.leader == me:
                new = Ownership(ShardRole.LEADER, shard.leader_epoch)
            elif me in shard.catching_up:
                new = Ownership(ShardRole.CATCHING_UP, shard.leader_epoch)
            elif me in shard.replicas:
                new = Ownership(ShardRole.REPLICA, shard.leader_epoch)
        old = self.owned.get(shard_id)
        if new is None:
            if old is None:
                return
            del self.owned[shard_id]
        else:
            self.owned[shard_id] = new
        if not same_ownership(old, new):
            assert self.version is not None
            self._events.append(ownership_event(shard_id, old, new, self.version))


_TypedHandler: TypeAlias = Callable[[MetadataCache, Any, Any, list[ShardId]], None]
_TYPED_HANDLERS: Final[dict[str, _TypedHandler]] = {
    KIND_NODE: MetadataCache._node_changed,
    KIND_STREAM: MetadataCache._stream_changed,
    KIND_SHARD: MetadataCache._shard_changed,
    KIND_TENANT: MetadataCache._tenant_changed,
    KIND_CONFIG: MetadataCache._config_changed,
}


def _replace(table: dict[Any, Any], new: dict[Any, Any]) -> None:
    table.clear()
    table.update(new)  # into an empty dict: a block copy


_ABSENT: Final = object()


def _changed_routes(
    old: Mapping[ShardId, str | None], new: Mapping[ShardId, str | None]
) -> tuple[ShardId, ...]:
    """The routing entries added, moved or removed between two whole views, sorted."""
    if not old:
        return tuple(sorted(new))  # a snapshot's order is sorted already: a linear pass
    return tuple(
        sorted(s for s in old.keys() | new.keys() if old.get(s, _ABSENT) != new.get(s, _ABSENT))
    )
