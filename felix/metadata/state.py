"""The metadata state machine: apply one committed command, get one Delta.

Theory of operation
-------------------
The state is five tables of typed records (`model.py`) plus derived indexes (which
shards each node replicates, how many it leads, each tenant's usage) and the running
digest.  Every mutation goes through `_write`, which updates table, indexes and digest
together and remembers the record's previous value on an undo list.  A handler validates
and mutates freely; if it raises `CommandError` the undo list is replayed backwards, so
a rejected command changes nothing.  On success the undo list also names exactly the
records the command touched, which become the Delta's changes: apply is O(changes).

Versions are Raft indexes: every committed entry (command, rejected command, NOOP or
CONFIG entry) advances the version by exactly one and yields exactly one Delta, so a
broker's version chain never has holes.

Leadership follows `placement.choose_leader` whenever a node's health, drain flag or
registration changes.  A drain is complete when the draining node leads nothing: its
``drained_version`` is then the version at which that became true (None while draining
is incomplete or the node is not draining).  Because the Delta carrying the last
leadership move has that very version, the server may let the broker shut down once
every active broker has reported ``applied_version >= drained_version``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final

from felix.metadata import commands as cmds
from felix.metadata.config import ConfigValue, config_bool, config_int
from felix.metadata.digest import digest_bytes, update_digest
from felix.metadata.errors import CommandError, SnapshotError, rejected
from felix.metadata.handlers import HANDLERS
from felix.metadata.model import (
    KIND_CONFIG,
    KIND_NODE,
    KIND_SHARD,
    KIND_STREAM,
    KIND_TENANT,
    ConfigEntry,
    Model,
    Node,
    Shard,
    Stream,
    Tenant,
    from_record,
)
from felix.metadata.placement import NodeLoad, choose_leader, leader_candidates, place_shards
from felix.metadata.snapshot import decode_snapshot, encode_snapshot
from felix.metadata.tokens import TokenRecord, check_record
from felix.proto.client_messages import Change, Delta, ErrorCode


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a command changed nothing: code ``bad_request``, ``rejected`` or ``conflict``."""

    code: ErrorCode
    detail: str


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """One applied entry: its Delta, the decoded command (None for NOOP/undecodable) and
    the rejection, if any."""

    delta: Delta
    command: cmds.Command | None
    error: Rejection | None

    @property
    def ok(self) -> bool:
        return self.error is None


_Undo = tuple[str, str, Model | None]


class MetadataState:
    """The replicated metadata; identical on every control-plane node at each version."""

    def __init__(self) -> None:
        self.version = 0
        self.nodes: dict[int, Node] = {}
        self.streams: dict[str, Stream] = {}
        self.shards: dict[str, Shard] = {}
        self.tenants: dict[str, Tenant] = {}
        self.config: dict[str, ConfigEntry] = {}
        self._by_kind: dict[str, dict[Any, Any]] = {
            KIND_NODE: self.nodes,
            KIND_STREAM: self.streams,
            KIND_SHARD: self.shards,
            KIND_TENANT: self.tenants,
            KIND_CONFIG: self.config,
        }
        # Private to the control plane: not in records, deltas or the digest (tokens.py).
        self.tokens: dict[str, TokenRecord] = {}
        self.tokens_generation = 0  # +1 on every token change: nodes re-check sessions
        # The state's lineage: "" from empty, a new id per restore (snapshot.py).
        self.history = ""
        self._digest = 0
        self._node_shards: dict[int, set[str]] = {}
        self._leader_count: dict[int, int] = {}
        self.reassigning: set[str] = set()  # keys of shards with a move in flight
        self._moves: dict[int, int] = {}  # node id -> in-flight moves adding or removing it
        self._tenant_streams: dict[str, int] = {}
        self._tenant_shards: dict[str, int] = {}
        self._undo: list[_Undo] = []
        self._touched: set[int] = set()
        self._index = 0

    # --- reading ---------------------------------------------------------------------

    @property
    def digest(self) -> bytes:
        return digest_bytes(self._digest)

    def records(self) -> Iterator[Change]:
        """The full view as records, in a fixed order (config, tenants, nodes, streams,
        shards; each sorted by key) so every node produces identical snapshots."""
        return _records_of(self.config, self.tenants, self.nodes, self.streams, self.shards)

    def snapshot_encoder(self) -> Callable[[], bytes]:
        """A function that encodes the state as it is now and may run in a worker thread
        while apply goes on: records are immutable, so copying the five tables (a few ms
        at 100,000 shards) freezes the view; the encoding (the slow part) runs later."""
        version, digest = self.version, self.digest
        tables = (
            dict(self.config), dict(self.tenants), dict(self.nodes), dict(self.streams),
            dict(self.shards),
        )  # fmt: skip
        tokens, history = _tokens_of(self.tokens), self.history
        return lambda: encode_snapshot(version, digest, _records_of(*tables), tokens, history)

    def node_shards(self, node_id: int) -> list[str]:
        """Keys of the shards ``node_id`` replicates, sorted (deterministic order)."""
        return sorted(self._node_shards.get(node_id, ()))

    def leader_count(self, node_id: int) -> int:
        return self._leader_count.get(node_id, 0)

    def moves_of(self, node_id: int) -> int:
        """In-flight reassignments adding or removing ``node_id``."""
        return self._moves.get(node_id, 0)

    def tenant_usage(self, tenant: str) -> tuple[int, int]:
        """(streams, shards) owned by ``tenant``."""
        return self._tenant_streams.get(tenant, 0), self._tenant_shards.get(tenant, 0)

    def config_values(self) -> dict[str, ConfigValue]:
        """Explicitly set config keys (defaults live in `config.CONFIG_SPECS`)."""
        return {name: entry.value for name, entry in self.config.items()}

    # --- applying --------------------------------------------------------------------

    def apply(self, index: int, data: bytes) -> ApplyResult:
        """Apply the command in committed entry ``index``; never raises for bad input."""
        self._begin(index)
        try:
            command = cmds.decode_command(data)
        except CommandError as exc:
            return self._finish(None, Rejection(exc.code, exc.detail))
        return self._run(command)

    def apply_command(self, index: int, command: cmds.Command) -> ApplyResult:
        """`apply` of ``encode_command(command)`` (the same bytes path, for tests/tools)."""
        return self.apply(index, cmds.encode_command(command))

    def apply_noop(self, index: int) -> ApplyResult:
        """A NOOP or CONFIG Raft entry: the version advances with an empty Delta."""
        self._begin(index)
        return self._finish(None, None)

    def _begin(self, index: int) -> None:
        assert index == self.version + 1, f"applied index {index} after {self.version}"
        self._index = index

    def _run(self, command: cmds.Command) -> ApplyResult:
        try:
            expected = command.expected_version
            if expected is not None and expected != self.version:
                raise CommandError(
                    ErrorCode.CONFLICT,
                    f"expected version {expected}, but the state is at version {self.version}",
                )
            _HANDLERS[type(command)](self, command)
            self._refresh_drains()
        except CommandError as exc:
            self._rollback()
            return self._finish(command, Rejection(exc.code, exc.detail))
        return self._finish(command, None)

    def _finish(self, command: cmds.Command | None, error: Rejection | None) -> ApplyResult:
        changes = self._collect_changes()
        delta = Delta(self.version, self._index, self.digest, changes)
        self.version = self._index
        self._undo = []
        self._touched = set()
        return ApplyResult(delta, command, error)

    def _collect_changes(self) -> tuple[Change, ...]:
        first: dict[tuple[str, str], Model | None] = {}
        for kind, key, old in self._undo:
            first.setdefault((kind, key), old)
        changes = []
        for (kind, key), old in first.items():
            new = self._get(kind, key)
            if new != old:
                changes.append(Change(kind, key, None if new is None else new.to_record()))
        return tuple(changes)

    def _rollback(self) -> None:
        for kind, key, old in reversed(self._undo):
            self._raw_set(kind, key, self._get(kind, key), old)
        self._undo = []

    # --- the one mutation path -------------------------------------------------------

    def _tables(self, kind: str) -> dict[Any, Any]:
        return self._by_kind[kind]

    def _get(self, kind: str, key: str) -> Model | None:
        result: Model | None = self._tables(kind).get(int(key) if kind == KIND_NODE else key)
        return result

    def _put(self, new: Model) -> None:
        self._write(new.kind, new.key, new)

    def _delete(self, kind: str, key: str) -> None:
        self._write(kind, key, None)

    def _write(self, kind: str, key: str, new: Model | None) -> None:
        old = self._get(kind, key)
        if old != new:
            self._undo.append((kind, key, old))
            self._raw_set(kind, key, old, new)

    def _raw_set(self, kind: str, key: str, old: Model | None, new: Model | None) -> None:
        """Replace ``old`` by ``new`` in table, indexes and digest (no undo, no delta)."""
        table = self._tables(kind)
        table_key = int(key) if kind == KIND_NODE else key
        old_rec = None if old is None else old.to_record()
        new_rec = None if new is None else new.to_record()
        self._digest = update_digest(self._digest, kind, key, old_rec, new_rec)
        if old is not None:
            self._index_record(old, -1)
        if new is None:
            del table[table_key]
        else:
            table[table_key] = new
            self._index_record(new, +1)

    def _index_record(self, obj: Model, sign: int) -> None:
        if isinstance(obj, Shard):
            for replica in obj.replicas:
                members = self._node_shards.setdefault(replica, set())
                if sign > 0:
                    members.add(obj.key)
                else:
                    members.discard(obj.key)
            if obj.leader is not None:
                count = self._leader_count.get(obj.leader, 0) + sign
                self._leader_count[obj.leader] = count
                self._touched.add(obj.leader)
            if obj.adding or obj.removing:
                if sign > 0:
                    self.reassigning.add(obj.key)
                else:
                    self.reassigning.discard(obj.key)
                for node in (*obj.adding, *obj.removing):
                    self._moves[node] = self._moves.get(node, 0) + sign
        elif isinstance(obj, Stream):
            streams = self._tenant_streams.get(obj.tenant, 0) + sign
            self._tenant_streams[obj.tenant] = streams
            self._tenant_shards[obj.tenant] = (
                self._tenant_shards.get(obj.tenant, 0) + sign * obj.shards
            )

    def _set_token(self, token_id: str, record: TokenRecord | None) -> None:
        """The one write of a token command (its handler has checked everything first,
        so there is nothing to roll back); the Delta of the entry stays empty."""
        if record is None:
            del self.tokens[token_id]
        else:
            self.tokens[token_id] = record
        self.tokens_generation += 1

    # --- shared helpers --------------------------------------------------------------

    def _node(self, node_id: int) -> Node:
        node = self.nodes.get(node_id)
        if node is None:
            raise rejected(f"node {node_id} is not registered")
        return node

    def _stream(self, name: str) -> Stream:
        stream = self.streams.get(name)
        if stream is None:
            raise rejected(f"stream {name!r} does not exist")
        return stream

    def _tenant(self, name: str) -> Tenant:
        tenant = self.tenants.get(name)
        if tenant is None:
            raise rejected(f"tenant {name!r} does not exist")
        return tenant

    def _cfg_int(self, name: str) -> int:
        return config_int(self.config_values(), name)

    def _is_live(self, node_id: int) -> bool:
        node = self.nodes.get(node_id)
        return node is not None and node.live

    def _is_up(self, node_id: int) -> bool:
        node = self.nodes.get(node_id)
        return node is not None and node.up

    def _reelect(self, key: str) -> None:
        """Give shard ``key`` the leader `choose_leader` wants (leader_epoch++ if new).
        Only a caught-up replica may lead; replicas staying come before leaving ones."""
        shard = self.shards[key]
        candidates = leader_candidates(shard)
        current = shard.leader if shard.leader in candidates else None
        leader = choose_leader(candidates, current, self._is_live, self._is_up)
        if leader != shard.leader:
            self._put(
                dataclasses.replace(shard, leader=leader, leader_epoch=shard.leader_epoch + 1)
            )

    def _node_changed(self, node: Node) -> None:
        """Store ``node`` and re-elect every shard it replicates."""
        self._put(node)
        self._touched.add(node.id)
        for key in self.node_shards(node.id):
            self._reelect(key)

    def _refresh_drains(self) -> None:
        """Set or clear ``drained_version`` on every node whose leaderships changed."""
        for node_id in sorted(self._touched):
            node = self.nodes.get(node_id)
            if node is None:
                continue
            done = node.draining and self.leader_count(node_id) == 0
            wanted = None
            if done:
                wanted = node.drained_version if node.drained_version is not None else self._index
            if wanted != node.drained_version:
                self._put(dataclasses.replace(node, drained_version=wanted, drain_acked=False))

    def _check_stream_quotas(self, tenant: Tenant, new_streams: int, new_shards: int) -> None:
        streams, shards = self.tenant_usage(tenant.name)
        if new_streams and len(self.streams) + new_streams > self._cfg_int("streams_max"):
            raise rejected(f"the cluster already has streams_max={self._cfg_int('streams_max')}")
        if tenant.streams_max is not None and streams + new_streams > tenant.streams_max:
            raise rejected(f"tenant {tenant.name!r} quota streams_max={tenant.streams_max} reached")
        if tenant.shards_max is not None and shards + new_shards > tenant.shards_max:
            raise rejected(
                f"tenant {tenant.name!r} quota shards_max={tenant.shards_max} would be "
                f"exceeded ({shards} + {new_shards})"
            )

    def _place(self, count: int, replication_factor: int) -> list[tuple[int, ...]]:
        candidates = [
            NodeLoad(n.id, n.rack, len(self._node_shards.get(n.id, ())), self.leader_count(n.id))
            for n in self.nodes.values()
            if n.accepts_replicas
        ]
        return place_shards(
            candidates,
            count,
            replication_factor,
            self._cfg_int("shards_per_node_max"),
            config_bool(self.config_values(), "rack_aware_placement"),
        )

    def _add_shards(self, stream: Stream, first: int) -> None:
        """Place and store shards ``first .. stream.shards-1`` of ``stream``."""
        placements = self._place(stream.shards - first, stream.replication_factor)
        for index, replicas in enumerate(placements, start=first):
            self._put(Shard(stream.name, index, replicas, replicas[0], 1))

    # --- snapshots -------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state (version, digest, records) as bytes; see `snapshot.py`."""
        return encode_snapshot(
            self.version, self.digest, self.records(), _tokens_of(self.tokens), self.history
        )

    @classmethod
    def of_records(cls, version: int, records: Iterable[Change]) -> MetadataState:
        """A state holding exactly ``records`` at ``version`` (a client's digest-checked
        view, e.g. for ``felix ctl rebalance plan``); no tokens (they are not records)."""
        state = cls()
        for change in records:
            if change.value is None:
                raise SnapshotError(f"record {change.kind} {change.key!r} is empty")
            obj = from_record(change.kind, change.key, change.value)
            state._raw_set(obj.kind, obj.key, None, obj)
        state._touched = set()
        state.version = version
        return state

    @classmethod
    def restore(cls, data: bytes) -> MetadataState:
        """The state a `snapshot` was taken of: same records, indexes, version and
        digest.  Raises `SnapshotError` if the bytes are bad or the digest disagrees."""
        version, digest, records, tokens, history = decode_snapshot(data)
        state = cls()
        state.history = history
        for record in tokens:
            problem = check_record(record)
            if problem is not None or record.id in state.tokens:
                raise SnapshotError(f"snapshot token {record.id!r}: {problem or 'duplicate'}")
            state.tokens[record.id] = record
        for change in records:
            if change.value is None:
                raise SnapshotError(f"snapshot record {change.kind} {change.key!r} is empty")
            obj = from_record(change.kind, change.key, change.value)
            if state._get(obj.kind, obj.key) is not None:
                raise SnapshotError(f"duplicate {obj.kind} record {obj.key!r}")
            state._raw_set(obj.kind, obj.key, None, obj)
        state._touched = set()
        state.version = version
        if state.digest != digest:
            raise SnapshotError("snapshot digest does not match its records")
        return state


def _records_of(
    config: dict[str, ConfigEntry],
    tenants: dict[str, Tenant],
    nodes: dict[int, Node],
    streams: dict[str, Stream],
    shards: dict[str, Shard],
) -> Iterator[Change]:
    yield from _changes(config[k] for k in sorted(config))
    yield from _changes(tenants[k] for k in sorted(tenants))
    yield from _changes(nodes[k] for k in sorted(nodes))
    yield from _changes(streams[k] for k in sorted(streams))
    ordered_shards: list[Shard] = sorted(shards.values(), key=_shard_order)
    yield from _changes(ordered_shards)


def _tokens_of(tokens: dict[str, TokenRecord]) -> tuple[TokenRecord, ...]:
    return tuple(tokens[k] for k in sorted(tokens))


def _changes(objects: Iterable[Model]) -> Iterator[Change]:
    for obj in objects:
        yield Change(obj.kind, obj.key, obj.to_record())


def _shard_order(shard: Shard) -> tuple[str, int]:
    return shard.stream, shard.index


_HANDLERS: Final[dict[type, Callable[[MetadataState, Any], None]]] = HANDLERS
