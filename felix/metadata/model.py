"""The typed metadata objects and their record form.

Each object is one record: ``kind`` (class constant), ``key`` (string, unique within the
kind) and a flat ``value`` map holding every dataclass field by name.  These records are
exactly what travels in `Change`s, snapshots and the digest:

======  ============  ==========================================================
kind    key           fields
======  ============  ==========================================================
node    "7"           id, address, rack, state ("registered"/"up"/"down"),
                      epoch (Raft index of the latest registration), draining
                      (bool), drained_version (int or None), drain_acked (bool:
                      every live broker has applied drained_version), evacuate
                      ("" or why every replica must leave: "decommission",
                      "down_timeout")
stream  "orders"      name, tenant, shards, replication_factor, retention_ms
shard   "orders/3"    stream, index, replicas (tuple of node ids, leader first
                      at placement), leader (node id or None), leader_epoch,
                      adding / removing (node ids joining / leaving in a
                      reassignment), catching_up (replicas not caught up yet)
tenant  "acme"        name, display_name, streams_max, shards_max, bytes_per_s
                      (each quota an int, or None for unlimited)
config  "streams_max" name, value
======  ============  ==========================================================
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeVar, cast

from felix.metadata.config import ConfigValue
from felix.metadata.errors import SnapshotError
from felix.proto.client_messages import Record

KIND_NODE: Final = "node"
KIND_STREAM: Final = "stream"
KIND_SHARD: Final = "shard"
KIND_TENANT: Final = "tenant"
KIND_CONFIG: Final = "config"
KINDS: Final = (KIND_CONFIG, KIND_TENANT, KIND_NODE, KIND_STREAM, KIND_SHARD)


class NodeState(enum.StrEnum):
    """A node's health; draining is a separate flag (operator intent survives restarts)."""

    REGISTERED = "registered"
    UP = "up"
    DOWN = "down"


_INT: Final = (int,)
_STR: Final = (str,)
_BOOL: Final = (bool,)
_OPT_INT: Final = (int, type(None))


class _Model:
    """Record conversion shared by every model class (fields = ``__match_args__``)."""

    __slots__ = ()
    kind: ClassVar[str]
    types: ClassVar[Mapping[str, tuple[type, ...]]]

    @property
    def key(self) -> str:
        raise NotImplementedError

    def to_record(self) -> Record:
        names: tuple[str, ...] = type(self).__match_args__  # type: ignore[attr-defined]
        return cast(Record, {name: getattr(self, name) for name in names})


M = TypeVar("M", bound=_Model)


@dataclass(frozen=True, slots=True)
class Node(_Model):
    kind: ClassVar[str] = KIND_NODE
    types: ClassVar[Mapping[str, tuple[type, ...]]] = {
        "id": _INT, "address": _STR, "rack": _STR, "state": _STR, "epoch": _INT,
        "draining": _BOOL, "drained_version": _OPT_INT, "drain_acked": _BOOL,
        "evacuate": _STR,
    }  # fmt: skip
    id: int
    address: str
    rack: str
    state: str
    epoch: int
    draining: bool
    drained_version: int | None
    drain_acked: bool = False
    evacuate: str = ""

    @property
    def key(self) -> str:
        return str(self.id)

    @property
    def up(self) -> bool:
        return self.state == NodeState.UP

    @property
    def live(self) -> bool:
        """Eligible for new replicas and preferred for leadership."""
        return self.state == NodeState.UP and not self.draining

    @property
    def accepts_replicas(self) -> bool:
        """Live and not being emptied: the planner may place replicas here."""
        return self.live and not self.evacuate


EVACUATE_DECOMMISSION: Final = "decommission"
EVACUATE_DOWN_TIMEOUT: Final = "down_timeout"


@dataclass(frozen=True, slots=True)
class Stream(_Model):
    kind: ClassVar[str] = KIND_STREAM
    types: ClassVar[Mapping[str, tuple[type, ...]]] = {
        "name": _STR, "tenant": _STR, "shards": _INT, "replication_factor": _INT,
        "retention_ms": _INT,
    }  # fmt: skip
    name: str
    tenant: str
    shards: int
    replication_factor: int
    retention_ms: int

    @property
    def key(self) -> str:
        return self.name


def shard_key(stream: str, index: int) -> str:
    return f"{stream}/{index}"


@dataclass(frozen=True, slots=True)
class Shard(_Model):
    kind: ClassVar[str] = KIND_SHARD
    types: ClassVar[Mapping[str, tuple[type, ...]]] = {
        "stream": _STR, "index": _INT, "replicas": (tuple,), "leader": _OPT_INT,
        "leader_epoch": _INT, "adding": (tuple,), "removing": (tuple,),
        "catching_up": (tuple,),
    }  # fmt: skip
    stream: str
    index: int
    replicas: tuple[int, ...]
    leader: int | None
    leader_epoch: int
    adding: tuple[int, ...] = ()
    removing: tuple[int, ...] = ()
    catching_up: tuple[int, ...] = ()

    @property
    def reassigning(self) -> bool:
        return bool(self.adding or self.removing)

    @property
    def target(self) -> tuple[int, ...]:
        """The replica set once the reassignment (if any) completes."""
        return tuple(r for r in self.replicas if r not in self.removing)

    @property
    def original(self) -> tuple[int, ...]:
        """The replica set before the reassignment (what a cancel returns to)."""
        return tuple(r for r in self.replicas if r not in self.adding)

    def caught_up(self) -> tuple[int, ...]:
        return tuple(r for r in self.replicas if r not in self.catching_up)

    @property
    def key(self) -> str:
        return shard_key(self.stream, self.index)


@dataclass(frozen=True, slots=True)
class Tenant(_Model):
    kind: ClassVar[str] = KIND_TENANT
    types: ClassVar[Mapping[str, tuple[type, ...]]] = {
        "name": _STR, "display_name": _STR, "streams_max": _OPT_INT, "shards_max": _OPT_INT,
        "bytes_per_s": _OPT_INT,
    }  # fmt: skip
    name: str
    display_name: str
    streams_max: int | None
    shards_max: int | None
    bytes_per_s: int | None

    @property
    def key(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class ConfigEntry(_Model):
    kind: ClassVar[str] = KIND_CONFIG
    types: ClassVar[Mapping[str, tuple[type, ...]]] = {"name": _STR, "value": (int, bool, str)}
    name: str
    value: ConfigValue

    @property
    def key(self) -> str:
        return self.name


Model = Node | Stream | Shard | Tenant | ConfigEntry
MODEL_CLASSES: Final[Mapping[str, type[Model]]] = {
    cls.kind: cls for cls in (Node, Stream, Shard, Tenant, ConfigEntry)
}


def from_record(kind: str, key: str, value: Mapping[str, object]) -> Model:
    """Rebuild a model from its record, checking fields, types and key (for restore)."""
    cls = MODEL_CLASSES.get(kind)
    if cls is None:
        raise SnapshotError(f"unknown record kind {kind!r}")
    if set(value) != set(cls.types):
        raise SnapshotError(f"{kind} {key!r}: fields {sorted(value)} != {sorted(cls.types)}")
    for name, allowed in cls.types.items():
        if type(value[name]) not in allowed:
            raise SnapshotError(f"{kind} {key!r}: field {name} has type {type(value[name])}")
    obj = cls(**cast(dict[str, Any], value))
    if isinstance(obj, Shard):
        ids = (*obj.replicas, *obj.adding, *obj.removing, *obj.catching_up)
        if not all(type(r) is int for r in ids):
            raise SnapshotError(f"shard {key!r}: replicas must be node ids")
    if obj.key != key:
        raise SnapshotError(f"{kind} record key {key!r} does not match its fields")
    return obj
