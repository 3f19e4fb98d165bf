"""The broker's local copy of the metadata: records, typed tables, routing and ownership.

Theory of operation
-------------------
PURE (no I/O, no clock, no randomness; ``tests/test_layering.py``): the client feeds it
what the control plane sends and reads back what changed.

* ``apply_snapshot`` replaces the whole view, but only after recomputing the snapshot's
  digest from its records and finding it equal to the one sent (else
  `DigestMismatch` and the cache is unchanged).  The new view is built aside first, in
  a `SnapshotStage` (records, per-record hashes, typed tables, routing), chunk by chunk
  as a snapshot arrives, so a malformed record also leaves the cache unchanged and the
  install itself is a handful of table swaps.
* ``apply_delta`` applies one `Delta` only on top of the cache's own version
  (`GapError` otherwise), updates the running digest per change (O(1) each: the hash of
  every record is kept, so only the new value is hashed), compares it with the delta's
  digest and, on a mismatch, rolls the records back and raises `DigestMismatch` — a
  delta is applied entirely or not at all.  With ``verify_deltas=False`` the per-record
  hashing (about half the apply cost) is skipped, the delta's digest is taken on trust
  and only a full `recompute_digest` (the client's periodic audit) checks it.  Then the
  typed tables, the routing table and this node's ownership are updated from the same
  changes: O(changes) per delta.
* `DeltaAssembler` and `SnapshotAssembler` collect ``DeltaPart`` / ``Snapshot`` chunks
  and hand back a whole delta / staged snapshot only at the end marker, so a big delta
  or snapshot is applied atomically.

Every apply is one synchronous call, so a reader in the same Trio thread never sees a
half-applied delta: the records, the typed tables, the routing table and the ownership
map move together from one version to the next.

*Ownership* of a shard by ``node_id`` is its role there (`Role.LEADER`, `Role.REPLICA`,
or not owned) plus, while leading, the leader epoch.  Every apply returns the
`OwnershipEvent`s that move the previous ownership map to the new one: per changed
shard record for a delta, and the full diff of old view vs new view for a snapshot, so
a resync neither repeats an event the broker already saw nor loses one it missed.
`OwnershipLedger` buffers events for a slow consumer, coalescing them per shard.

Records handed out (``records``, ``Change.value``) are shared, not copied: read only.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias, TypeVar

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
from felix.proto.cbor import dataclass_slot_setters, gc_paused
from felix.proto.client_messages import Change, Delta, DeltaPart, Record, SnapshotChunk

ShardId: TypeAlias = tuple[str, int]
"""(stream name, shard index)."""
RecordId: TypeAlias = tuple[str, str]
"""(kind, key) of one record."""

_MASK: Final = (1 << 64) - 1
_NO_SHARDS: Final[tuple[ShardId, ...]] = ()
_NO_EVENTS: Final[tuple[OwnershipEvent, ...]] = ()


class CacheError(Exception):
    """The cache cannot apply what it was given; the client starts over from a snapshot."""


class GapError(CacheError):
    """A delta does not continue the cache's version (a gap, a duplicate, or no view)."""

    def __init__(self, version: int | None, prev_version: int, delta_version: int) -> None:
        self.version, self.prev_version, self.delta_version = version, prev_version, delta_version
        super().__init__(
            f"delta {prev_version}->{delta_version} does not follow the cache's version {version}"
        )


class DigestMismatch(CacheError):
    """The view after applying differs from the control plane's (nothing was applied)."""

    def __init__(self, version: int, expected: bytes, actual: bytes) -> None:
        self.version, self.expected, self.actual = version, expected, actual
        super().__init__(f"digest at version {version}: got {actual.hex()}, want {expected.hex()}")


class AssemblyError(CacheError):
    """Snapshot chunks or delta parts arrived out of order or inconsistent."""


class Role(enum.StrEnum):
    LEADER = "leader"
    REPLICA = "replica"


@dataclass(frozen=True, slots=True)
class Ownership:
    """This node's role on one shard; ``leader_epoch`` is the shard's epoch."""

    role: Role
    leader_epoch: int

    def same_as(self, other: Ownership | None) -> bool:
        """Equal for the broker's purposes: same role and, when leading, same epoch (a
        leader whose epoch moved lost the shard in between and must re-establish it)."""
        if other is None or other.role is not self.role:
            return False
        return self.role is Role.REPLICA or other.leader_epoch == self.leader_epoch


@dataclass(frozen=True, slots=True)
class OwnershipEvent:
    """This broker's role on ``shard`` changed from ``previous`` to ``role``.

    ``role`` None: stop owning the shard; ``previous`` None: start owning it.
    ``previous == role == LEADER``: still leader, but under a new ``leader_epoch``.
    ``version`` is the metadata version at which the new role holds.
    """

    shard: ShardId
    previous: Role | None
    role: Role | None
    leader_epoch: int
    version: int

    @property
    def started(self) -> bool:
        return self.previous is None and self.role is not None

    @property
    def stopped(self) -> bool:
        return self.role is None


@dataclass(frozen=True, slots=True)
class CacheUpdate:
    """What one apply changed: the new version, this node's ownership events, and the
    routing-table entries that changed (added, moved or removed)."""

    version: int
    changes: tuple[Change, ...]
    ownership: tuple[OwnershipEvent, ...]
    routes: tuple[ShardId, ...]
    replaced: bool = False  # a snapshot replaced the whole view


def _event(
    shard: ShardId, old: Ownership | None, new: Ownership | None, version: int
) -> OwnershipEvent:
    epoch = new.leader_epoch if new is not None else (old.leader_epoch if old else 0)
    return OwnershipEvent(
        shard, old.role if old else None, new.role if new else None, epoch, version
    )


class MetadataCache:
    """The local view; see the module docstring.  ``node_id`` selects whose ownership
    is tracked (None: nobody's)."""

    def __init__(self, node_id: int | None = None, *, verify_deltas: bool = True) -> None:
        self.node_id = node_id
        self.verify_deltas = verify_deltas
        self.version: int | None = None  # None until the first snapshot
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
        return total & _MASK

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
        return sum(self._hashes.values()) & _MASK == self.digest

    # --- applying -----------------------------------------------------------------------

    def apply_snapshot(
        self, version: int, digest: bytes, records: Iterable[Change] | SnapshotStage
    ) -> CacheUpdate:
        """Replace the view with ``records`` (or a `SnapshotStage` built from them as
        they arrived); raises `DigestMismatch` (cache unchanged) if they do not hash to
        ``digest``, or `CacheError` (cache unchanged) if a record is malformed."""
        if isinstance(records, SnapshotStage):
            stage = records
        else:
            stage = SnapshotStage()
            stage.add(records)
        if digest_bytes(stage.total) != digest:
            raise DigestMismatch(version, digest, digest_bytes(stage.total))
        with gc_paused():
            return self._install(version, stage)

    def _install(self, version: int, stage: SnapshotStage) -> CacheUpdate:
        tables = stage.take()
        owned = self._owned_in(tables.shards)
        routes = _changed_routes(self.routing, tables.routing)
        events = _ownership_diff(self.owned, owned, version)
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
        self.digest, self.version = stage.total, version
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
                    found = leading[epoch] = Ownership(Role.LEADER, epoch)
                owned[shard_id] = found
            elif me in shard.replicas:
                found = replica.get(epoch)
                if found is None:
                    found = replica[epoch] = Ownership(Role.REPLICA, epoch)
                owned[shard_id] = found
        return owned

    def apply_delta(self, delta: Delta) -> CacheUpdate:
        """Apply one delta atomically; see the module docstring for the errors."""
        if delta.prev_version != self.version or self.version is None:
            raise GapError(self.version, delta.prev_version, delta.version)
        changes = delta.changes
        self._apply_records(delta)
        self.version = delta.version
        touched: list[ShardId] = []
        apply_typed = _TYPED_HANDLERS
        for change in changes:
            handler = apply_typed.get(change.kind)
            if handler is not None:
                handler(self, change.key, change.value, touched)
        events = _NO_EVENTS
        if self._events:
            events, self._events = tuple(self._events), []
        return CacheUpdate(
            delta.version, changes, events, tuple(touched) if touched else _NO_SHARDS
        )

    def _apply_records(self, delta: Delta) -> None:
        if not self.verify_deltas:
            self._apply_records_unverified(delta)
            return
        if not self.hashes_valid:
            self._hashes = {ident: record_hash(*ident, v) for ident, v in self.records.items()}
            self.hashes_valid = True
        records, hashes = self.records, self._hashes
        digest = self.digest
        undo: list[tuple[RecordId, Record | None, int | None]] = []
        for change in delta.changes:
            ident = (change.kind, change.key)
            old_hash = hashes.get(ident)
            value = change.value
            if value is None:
                if old_hash is None:
                    continue
                undo.append((ident, records.pop(ident), hashes.pop(ident)))
                digest -= old_hash
                continue
            new_hash = record_hash(change.kind, change.key, value)
            undo.append((ident, records.get(ident), old_hash))
            records[ident] = value
            hashes[ident] = new_hash
            digest += new_hash - (old_hash or 0)
        digest &= _MASK
        if self.verify_deltas and digest_bytes(digest) != delta.digest:
            for ident, old_value, old_h in reversed(undo):
                if old_value is None or old_h is None:
                    records.pop(ident, None)
                    hashes.pop(ident, None)
                else:
                    records[ident], hashes[ident] = old_value, old_h
            raise DigestMismatch(delta.version, delta.digest, digest_bytes(digest))
        self.digest = digest

    def _apply_records_unverified(self, delta: Delta) -> None:
        """Trust the delta's digest; `recompute_digest` checks it later (the audit)."""
        records = self.records
        for change in delta.changes:
            if change.value is None:
                records.pop((change.kind, change.key), None)
            else:
                records[(change.kind, change.key)] = change.value
        self.hashes_valid = False  # the per-record hashes no longer follow the records
        self.digest = int.from_bytes(delta.digest, "big")

    # --- typed tables, routing and ownership (one handler per kind) ---------------------

    def _node_changed(self, key: str, value: Record | None, touched: list[ShardId]) -> None:
        node_id = int(key)
        old = self.nodes.get(node_id)
        if value is None:
            self.nodes.pop(node_id, None)
            address = None
        else:
            node = _typed(Node, key, value)
            self.nodes[node_id] = node
            address = node.address
        if (old.address if old else None) != address:
            for shard in self._led_by.get(node_id, ()):
                self.routing[shard] = address
                touched.append(shard)

    def _stream_changed(self, key: str, value: Record | None, touched: list[ShardId]) -> None:
        if value is None:
            self.streams.pop(key, None)
        else:
            self.streams[key] = _typed(Stream, key, value)

    def _tenant_changed(self, key: str, value: Record | None, touched: list[ShardId]) -> None:
        if value is None:
            self.tenants.pop(key, None)
        else:
            self.tenants[key] = _typed(Tenant, key, value)

    def _config_changed(self, key: str, value: Record | None, touched: list[ShardId]) -> None:
        if value is None:
            self.config.pop(key, None)
        else:
            self.config[key] = value["value"]  # type: ignore[assignment]

    def _shard_changed(self, key: str, value: Record | None, touched: list[ShardId]) -> None:
        stream, _, index = key.rpartition("/")
        shard_id = (stream, int(index))
        old = self.shards.get(shard_id)
        new = None if value is None else _typed(Shard, key, value)
        old_leader = old.leader if old is not None else None
        new_leader = new.leader if new is not None else None
        if new is None:
            del self.shards[shard_id]
        else:
            self.shards[shard_id] = new
        if old_leader is not None and old_leader != new_leader:
            self._led_by[old_leader].discard(shard_id)
        if new_leader is not None and old_leader != new_leader:
            self._led_by.setdefault(new_leader, set()).add(shard_id)
        if new is None:
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
                new = Ownership(Role.LEADER, shard.leader_epoch)
            elif me in shard.replicas:
                new = Ownership(Role.REPLICA, shard.leader_epoch)
        old = self.owned.get(shard_id)
        if new is None:
            if old is None:
                return
            del self.owned[shard_id]
        else:
            self.owned[shard_id] = new
        if not _same(old, new):
            assert self.version is not None
            self._events.append(_event(shard_id, old, new, self.version))


_TypedHandler: TypeAlias = Callable[[MetadataCache, str, Record | None, list[ShardId]], None]
_TYPED_HANDLERS: Final[dict[str, _TypedHandler]] = {
    KIND_NODE: MetadataCache._node_changed,
    KIND_STREAM: MetadataCache._stream_changed,
    KIND_SHARD: MetadataCache._shard_changed,
    KIND_TENANT: MetadataCache._tenant_changed,
    KIND_CONFIG: MetadataCache._config_changed,
}


def _same(old: Ownership | None, new: Ownership | None) -> bool:
    return new.same_as(old) if new is not None else old is None


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


def _ownership_diff(
    old: Mapping[ShardId, Ownership], new: Mapping[ShardId, Ownership], version: int
) -> tuple[OwnershipEvent, ...]:
    """The events that move ownership ``old`` to ``new``, in shard order."""
    if not old:
        return tuple(
            OwnershipEvent(shard, None, new[shard].role, new[shard].leader_epoch, version)
            for shard in sorted(new)
        )
    return tuple(
        _event(shard, old.get(shard), new.get(shard), version)
        for shard in sorted(old.keys() | new.keys())
        if not _same(old.get(shard), new.get(shard))
    )


def _typed(cls: Any, key: str, value: Record) -> Any:
    try:
        return cls(**value)
    except TypeError as exc:
        raise CacheError(f"{cls.kind} record {key!r} does not match its schema: {exc}") from None


M = TypeVar("M")


def _builder(cls: type[M]) -> Callable[[str, Record], M]:
    """``_typed(cls, key, value)`` for a bulk load: the same object, or the same error,
    but a record with exactly the model's fields sets its slots directly (a frozen
    dataclass's __init__ pays for ``object.__setattr__`` per field)."""
    names: tuple[str, ...] = cls.__match_args__  # type: ignore[attr-defined]
    setters = dataclass_slot_setters(cls, names)
    if setters is None:
        return lambda key, value: _typed(cls, key, value)
    env: dict[str, Any] = {"cls": cls, "new": object.__new__, "typed": _typed}
    env["fields"] = frozenset(names)
    lines = [
        "def build(key, value):",
        "    if value.keys() != fields:",
        "        return typed(cls, key, value)",
        "    obj = new(cls)",
    ]
    for i, (name, setter) in enumerate(zip(names, setters, strict=True)):
        env[f"s{i}"] = setter
        lines.append(f"    s{i}(obj, value[{name!r}])")
    lines.append("    return obj")
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(lines) + "\n", f"<build {cls.__name__}>", "exec"), env, namespace)
    build: Callable[[str, Record], M] = namespace["build"]
    return build


_build_shard: Final = _builder(Shard)  # the bulk of a snapshot
_build_node: Final = _builder(Node)
_build_stream: Final = _builder(Stream)


# --- assembling multi-message deltas and snapshots ---------------------------------------


@dataclass(slots=True)
class _Tables:
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
        self._tables: _Tables | None = _Tables({}, {}, {}, {}, {}, {}, {}, {}, {})

    @property
    def records(self) -> Mapping[RecordId, Record]:
        return self._live().records

    def _live(self) -> _Tables:
        if self._tables is None:
            raise CacheError("this snapshot stage was applied already")
        return self._tables

    def add(self, changes: Iterable[Change]) -> None:
        """Stage more of the snapshot's records."""
        with gc_paused():
            self._add(changes)

    def _add(self, changes: Iterable[Change]) -> None:
        t = self._live()
        records, hashes, shards, routing = t.records, t.hashes, t.shards, t.routing
        nodes, led_by = t.nodes, t.led_by
        build_shard = _build_shard
        total = self.total
        kind = key = ""
        try:
            for change in changes:
                value = change.value
                if value is None:
                    continue
                kind, key = change.kind, change.key
                ident = (kind, key)
                if ident in records:
                    raise AssemblyError(f"the snapshot holds {kind} {key!r} twice")
                record_digest = record_hash(kind, key, value)
                records[ident] = value
                hashes[ident] = record_digest
                total += record_digest
                if kind == KIND_SHARD:
                    stream, _, index = key.rpartition("/")
                    shard_id = (stream, int(index))
                    shard: Shard = build_shard(key, value)
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
                    node: Node = _build_node(key, value)
                    node_id = int(key)
                    nodes[node_id] = node
                    for led_shard in led_by.get(node_id, ()):
                        routing[led_shard] = node.address  # its shards came first
                elif kind == KIND_STREAM:
                    t.streams[key] = _build_stream(key, value)
                elif kind == KIND_TENANT:
                    t.tenants[key] = _typed(Tenant, key, value)
                elif kind == KIND_CONFIG:
                    if "value" not in value:
                        raise CacheError(f"config record {key!r} has no value")
                    t.config[key] = value["value"]  # type: ignore[assignment]
        except ValueError:
            raise CacheError(f"the {kind} record key {key!r} is not valid") from None
        finally:
            self.total = total & _MASK

    def take(self) -> _Tables:
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


# --- buffering ownership events for a slow consumer ---------------------------------------


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
            if _same(known, now):
                del pending[shard]  # undone before it was taken
            else:
                pending[shard] = _event(shard, known, now, event.version)  # keeps its place

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
