"""The broker's local copy of the metadata: records, typed tables, routing and ownership.

Theory of operation
-------------------
PURE (no I/O, no clock, no randomness; ``tests/test_layering.py``): the client feeds it
what the control plane sends and reads back what changed.

* Every record, in a snapshot or a delta, goes through the same check and typed
  conversion (`CONVERTERS`, one per kind of the record model, `felix.metadata.model`;
  docs/architecture.md): exactly the model's fields, each of its declared type (ints
  never negative, a node state one of `NodeState`), a key equal to the one the fields
  imply, a known kind.  A record that fails raises `RecordError` (a `CacheError`)
  naming the record and the problem.
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
from typing import Any, Final, TypeAlias

from felix.metadata.config import ConfigValue
from felix.metadata.digest import DIGEST_BYTES, digest_bytes, record_hash
from felix.metadata.model import (
    KIND_CONFIG,
    KIND_NODE,
    KIND_SHARD,
    KIND_STREAM,
    KIND_TENANT,
    ConfigEntry,
    Node,
    NodeState,
    Shard,
    Stream,
    Tenant,
)
from felix.proto.cbor import dataclass_slot_setters
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


class RecordError(CacheError):
    """A record that is not a valid record of its kind (fields, types, key), or of a kind
    the metadata model does not have; nothing was applied."""

    def __init__(self, kind: object, key: object, problem: str) -> None:
        self.kind, self.key, self.problem = kind, key, problem
        super().__init__(f"{kind} record {key!r}: {problem}")


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
            staged, change = _stage_changes(changes, hashes)
            digest = (self.digest + change) & _MASK
            if digest_bytes(digest) != delta.digest:
                raise DigestMismatch(delta.version, delta.digest, digest_bytes(digest))
            self._hashes, self.hashes_valid = hashes, True
        else:
            staged, _ = _stage_changes(changes, None)
            digest = _trusted_digest(delta)
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
        return CacheUpdate(
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


_TypedHandler: TypeAlias = Callable[[MetadataCache, Any, Any, list[ShardId]], None]
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


# --- checking and typing records: the one conversion every apply goes through ------------

_ID_MAX: Final = 2**63 - 1
_NODE_STATES: Final = frozenset(state.value for state in NodeState)
_STATE_TYPES: Final = frozenset({str, NodeState})  # in-process, the server's records hold members
_CONFIG_TYPES: Final = frozenset({int, bool, str})


def _node_ids(values: tuple[Any, ...]) -> bool:
    for v in values:  # noqa: SIM110 (a loop: twice as fast as all() over a generator)
        if type(v) is not int or not 0 <= v <= _ID_MAX:
            return False
    return True


# A field's check by the type the model declares for it (``Model.types``): an expression
# in ``{v}`` and what a failing value should have been.  Ints are ids, epochs, versions,
# counts or quotas: never negative on the control plane.
_CHECKS: Final[dict[tuple[type, ...], tuple[str, str]]] = {
    (int,): ("(type({v}) is int and 0 <= {v} <= ID_MAX)", "a non-negative integer"),
    (str,): ("type({v}) is str", "a string"),
    (bool,): ("type({v}) is bool", "a bool"),
    (int, type(None)): (
        "({v} is None or (type({v}) is int and 0 <= {v} <= ID_MAX))",
        "a non-negative integer or null",
    ),
    (tuple,): ("(type({v}) is tuple and node_ids({v}))", "an array of node ids"),
    (int, bool, str): ("type({v}) in config_types", "an integer, a bool or a string"),
}
_FIELD_CHECKS: Final[dict[tuple[str, str], tuple[str, str]]] = {
    (KIND_NODE, "state"): (
        "(type({v}) in state_types and {v} in node_states)",
        "one of " + ", ".join(sorted(_NODE_STATES)),
    ),
}
# Per kind: the key the record's fields imply, and the key of the kind's typed table.
_KEYS: Final[dict[str, tuple[str, str]]] = {
    KIND_NODE: ("str({id})", "{id}"),
    KIND_SHARD: ('f"{{{stream}}}/{{{index}}}"', "({stream}, {index})"),
    KIND_STREAM: ("{name}", "{name}"),
    KIND_TENANT: ("{name}", "{name}"),
    KIND_CONFIG: ("{name}", "{name}"),
}
_ENV: Final[dict[str, Any]] = {
    "ID_MAX": _ID_MAX,
    "node_ids": _node_ids,
    "node_states": _NODE_STATES,
    "state_types": _STATE_TYPES,
    "config_types": _CONFIG_TYPES,
}

Converter: TypeAlias = Callable[[Any, Any], tuple[Any, Any]]
"""``convert(key, value)`` -> (typed-table key, model object), or raises `RecordError`."""


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _converter(cls: type[Any]) -> Converter:
    """The check and typed conversion of one kind's records (docs/architecture.md, the
    record model of `felix.metadata.model`): exactly the model's fields, each of its
    declared type, and a key equal to the one the fields imply.  A plain checker says
    what is wrong; the compiled fast path (the same expressions, in one condition)
    builds the frozen object through its slot setters."""
    kind: str = cls.kind
    names: tuple[str, ...] = cls.__match_args__
    checks = [_FIELD_CHECKS.get((kind, n)) or _CHECKS[tuple(cls.types[n])] for n in names]
    key_of, table_key_of = _KEYS[kind]

    def compiled(source: str) -> Any:
        return eval(compile(source, f"<check {kind}>", "eval"), dict(_ENV))

    field_checks = [
        (name, compiled(f"lambda v: {check.format(v='v')}"), what)
        for name, (check, what) in zip(names, checks, strict=True)
    ]
    in_value = {name: f"value[{name!r}]" for name in names}
    implied_key = compiled(f"lambda value: {key_of.format(**in_value)}")
    table_key = compiled(f"lambda value: {table_key_of.format(**in_value)}")
    fields = frozenset(names)

    def check(key: Any, value: Any) -> tuple[Any, Any]:
        if type(value) is not dict:
            raise RecordError(kind, key, f"the value is {type(value).__name__}, not a map")
        if value.keys() != fields:
            missing = sorted(fields - value.keys())
            extra = sorted(str(k) for k in value.keys() - fields)
            wrong = [f"{what} {names}" for what, names in (("missing", missing),
                     ("unexpected", extra)) if names]  # fmt: skip
            raise RecordError(kind, key, "fields " + ", ".join(wrong))
        for name, ok, what in field_checks:
            if not ok(value[name]):
                raise RecordError(kind, key, f"field {name} is {_short(value[name])}, not {what}")
        if implied_key(value) != key:
            raise RecordError(kind, key, f"the key does not match the fields ({_short(value)})")
        return table_key(value), cls(**value)

    setters = dataclass_slot_setters(cls, names)
    if setters is None:
        return check
    in_vars = {name: f"v{i}" for i, name in enumerate(names)}
    condition = " and ".join(
        [c.format(v=f"v{i}") for i, (c, _) in enumerate(checks)]
        + [f"key == {key_of.format(**in_vars)}"]
    )
    lines = [
        "def convert(key, value):",
        "    if type(value) is dict and value.keys() == fields:",
        *(f"        v{i} = value[{name!r}]" for i, name in enumerate(names)),
        f"        if {condition}:",
        "            obj = new(cls)",
        *(f"            s{i}(obj, v{i})" for i in range(len(names))),
        f"            return {table_key_of.format(**in_vars)}, obj",
        "    return check(key, value)",
    ]
    env = {**_ENV, "cls": cls, "new": object.__new__, "fields": fields, "check": check}
    env.update({f"s{i}": setter for i, setter in enumerate(setters)})
    namespace: dict[str, Any] = {}
    exec(compile("\n".join(lines) + "\n", f"<convert {kind}>", "exec"), env, namespace)
    convert: Converter = namespace["convert"]
    return convert


def _name_key(kind: str) -> Callable[[Any], Any]:
    def parse(key: Any) -> Any:
        if type(key) is not str:
            raise RecordError(kind, key, "the key is not a string")
        return key

    return parse


def _id_of(text: str) -> int | None:
    if text.isascii() and text.isdigit() and (text == "0" or text[0] != "0") and len(text) < 20:
        number = int(text)
        return number if number <= _ID_MAX else None
    return None


def _node_key(key: Any) -> Any:
    node_id = _id_of(key) if type(key) is str else None
    if node_id is None:
        raise RecordError(KIND_NODE, key, "the key is not a node id")
    return node_id


def _shard_key(key: Any) -> Any:
    if type(key) is str:
        stream, sep, index = key.rpartition("/")
        number = _id_of(index) if sep else None
        if number is not None:
            return (stream, number)
    raise RecordError(KIND_SHARD, key, "the key is not stream/index")


CONVERTERS: Final[dict[str, Converter]] = {
    cls.kind: _converter(cls) for cls in (Node, Stream, Shard, Tenant, ConfigEntry)
}
"""Per kind, the record check and conversion (`_converter`) of every apply path."""
_DELETED_KEYS: Final[dict[str, Callable[[Any], Any]]] = {
    KIND_NODE: _node_key,
    KIND_SHARD: _shard_key,
    KIND_STREAM: _name_key(KIND_STREAM),
    KIND_TENANT: _name_key(KIND_TENANT),
    KIND_CONFIG: _name_key(KIND_CONFIG),
}

_Staged: TypeAlias = tuple[str, str, Record | None, int, Any, Any]
"""(kind, key, value, its hash or 0, typed-table key, model object or None): one change,
checked and typed."""


def _stage_changes(
    changes: tuple[Change, ...], hashes: Mapping[RecordId, int] | None
) -> tuple[list[_Staged], int]:
    """Every change checked and typed, and (given the per-record ``hashes``) hashed, with
    what the changes add to the digest; aside: nothing is changed.  Raises `RecordError`
    for the first change that is not a valid record of a known kind."""
    staged: list[_Staged] = []
    converters = CONVERTERS
    change = 0
    earlier: dict[RecordId, int] | None = {} if len(changes) > 1 else None
    for item in changes:
        kind, key, value = item.kind, item.key, item.value
        convert = converters.get(kind) if type(kind) is str else None
        if convert is None:
            raise RecordError(kind, key, "unknown record kind")
        if value is None:
            table_key, typed = _DELETED_KEYS[kind](key), None
        else:
            table_key, typed = convert(key, value)
        new = 0
        if hashes is not None:
            ident = (kind, key)
            if earlier is None:
                old = hashes.get(ident, 0)
            else:  # a record changed twice in one delta: the second change follows the first
                old = earlier[ident] if ident in earlier else hashes.get(ident, 0)
            if value is not None:
                new = record_hash(kind, key, value)
            if earlier is not None:
                earlier[ident] = new
            change += new - old
        staged.append((kind, key, value, new, table_key, typed))
    return staged, change


def _trusted_digest(delta: Delta) -> int:
    digest = delta.digest
    if type(digest) is not bytes or len(digest) != DIGEST_BYTES:
        raise CacheError(f"delta {delta.version}: the digest is not {DIGEST_BYTES} bytes")
    return int.from_bytes(digest, "big")


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
