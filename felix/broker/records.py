"""Checking and typing metadata records: the one conversion every cache apply goes through.

PURE (no I/O, no clock, no randomness; ``tests/test_layering.py``).  Every record, in a
snapshot or a delta, goes through the same check and typed conversion (`CONVERTERS`,
one per kind of the record model, `felix.metadata.model`; docs/architecture.md §8):
exactly the model's fields, each of its declared type (ints never negative, a node
state one of `NodeState`), a key equal to the one the fields imply, a known kind.  A
record that fails raises `RecordError` (a `CacheError`) naming the record and the
problem.  `stage_changes` checks, types and hashes a delta's changes aside, for
`felix.broker.cache.MetadataCache.apply_delta`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, TypeAlias

from felix.metadata.digest import DIGEST_BYTES, record_hash
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
from felix.proto.client_messages import Change, Delta, Record

ShardId: TypeAlias = tuple[str, int]
"""(stream name, shard index)."""
RecordId: TypeAlias = tuple[str, str]
"""(kind, key) of one record."""

DIGEST_MASK: Final = (1 << 64) - 1
"""The digest is the sum of the record hashes modulo 2**64."""


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
    """The check and typed conversion of one kind's records (docs/architecture.md §8,
    "Record model"; the model is `felix.metadata.model`): exactly the model's fields,
    each of its declared type, and a key equal to the one the fields imply.  A plain
    checker says what is wrong; the compiled fast path (the same expressions, in one
    condition) builds the frozen object through its slot setters."""
    kind: str = cls.kind
    names: tuple[str, ...] = cls.__match_args__
    checks = [_FIELD_CHECKS.get((kind, n)) or _CHECKS[tuple(cls.types[n])] for n in names]
    check = _checker(cls, names, checks)
    setters = dataclass_slot_setters(cls, names)
    if setters is None:
        return check
    return _fast_converter(cls, names, checks, setters, check)


def _checker(cls: type[Any], names: tuple[str, ...], checks: list[tuple[str, str]]) -> Converter:
    """The plain check and conversion: each check in turn, saying what is wrong."""
    kind: str = cls.kind
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

    return check


def _fast_converter(
    cls: type[Any],
    names: tuple[str, ...],
    checks: list[tuple[str, str]],
    setters: list[Callable[[Any, Any], None]],
    check: Converter,
) -> Converter:
    """The compiled fast path: every check in one condition, the object built through
    its slot setters; anything the condition refuses goes to ``check``, which says why."""
    kind: str = cls.kind
    key_of, table_key_of = _KEYS[kind]
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
    fields = frozenset(names)
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


def stage_changes(
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


def trusted_digest(delta: Delta) -> int:
    digest = delta.digest
    if type(digest) is not bytes or len(digest) != DIGEST_BYTES:
        raise CacheError(f"delta {delta.version}: the digest is not {DIGEST_BYTES} bytes")
    return int.from_bytes(digest, "big")
