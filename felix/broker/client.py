"""The broker's metadata client: connect, register, watch, resume, resync, heartbeat.

Theory of operation
-------------------
``async with open_metadata_client(endpoints, node_id=7, address="10.0.0.7:9092") as view``
runs, in one nursery:

* the **connection loop**: connect to one control-plane node (the first one tried is
  picked from ``node_id``, so brokers spread over nodes; after that, a per-client
  shuffled order), send ``Hello(from_version)`` — the cache's version, or None when a
  snapshot is needed — and apply every message as it arrives (`receive_batch`, no task
  switch per message).  When the connection drops, reconnect after a jittered
  exponential back-off to the next node and *resume* from the last applied version, so
  a failover costs no snapshot.  A ``Resync``, a delta that does not follow (gap), or a
  digest mismatch (after a delta, a snapshot or the periodic audit) makes the next
  ``Hello`` ask for a snapshot; each is counted in ``stats.resync_reasons``.
* **registration** (``register_node`` through the same connection; the write result's
  version is the node's epoch), then **heartbeats** (``ReportHealth``, every
  ``heartbeat_s`` and at once on every new connection), which start only once the view
  has caught up to the registration version (a fixed target, as in KRaft), so the
  control plane marks the node up only when its broker knows its own registration.
* the **digest audit** every ``digest_check_s`` (each record rehashed in slices, between
  deltas) and, when ``snapshot_resync_s`` is set, a periodic snapshot resync.

The body runs once the first snapshot is applied and (if registering) the node's own
registration is in the view; it raises `trio.TooSlowError` after ``ready_timeout_s``,
or `WriteError` if the registration is refused.

Ownership events go to an `OwnershipLedger`: the consumer of ``ownership_events()``
takes them at its own pace.  A slow consumer never blocks the receive loop and loses
nothing: pending events coalesce per shard into "what you were last told -> what is
true now" (see `OwnershipLedger`), so memory is bounded by the number of shards.
``on_ownership``, if given, is also called synchronously with every event as applied
(it must not block).
"""

from __future__ import annotations

import itertools
import logging
import random
import weakref
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import trio

from felix.broker.cache import (
    AssemblyError,
    CacheError,
    DeltaAssembler,
    DigestMismatch,
    GapError,
    MetadataCache,
    OwnershipEvent,
    OwnershipLedger,
    RecordError,
    ShardId,
    SnapshotAssembler,
)
from felix.broker.connection import ClientConnection, ConnectionClosed
from felix.gc_pause import gc_paused
from felix.metadata.config import ConfigValue
from felix.metadata.model import Node, Shard, Stream, Tenant
from felix.proto.client_messages import (
    ClientHello,
    DeltaPart,
    Deltas,
    Error,
    ErrorCode,
    HealthStatus,
    Progress,
    Record,
    ReportHealth,
    Resync,
    SnapshotChunk,
    WriteRequest,
    WriteResult,
)
from felix.proto.errors import ProtocolError

log = logging.getLogger("felix.broker")

AUDIT_SLICE_RECORDS: Final = 1000
RETRYABLE_CODES: Final = frozenset({ErrorCode.NOT_LEADER, ErrorCode.UNAVAILABLE})
UNKNOWN_OUTCOME_CODES: Final = frozenset({ErrorCode.TIMEOUT})


@dataclass(frozen=True, slots=True)
class ClientSettings:
    heartbeat_s: float = 1.0
    backoff_s_min: float = 0.05
    backoff_s_max: float = 5.0
    connect_timeout_s: float = 5.0
    ready_timeout_s: float | None = 60.0
    snapshot_resync_s: float | None = None  # None: never resync on a timer
    digest_check_s: float | None = 60.0  # None: no periodic audit
    write_timeout_s: float = 30.0
    shutdown_timeout_s: float = 1.0
    report_down_on_exit: bool = True
    verify_deltas: bool = True
    token: str = ""


@dataclass(frozen=True, slots=True)
class ClientStats:
    """A consistent reading of the client's counters and lag.

    ``lag_versions``: newest version seen (deltas, ``Progress``, write results) minus the
    applied one; ``lag_ms``: for how long the view has been behind that newest version
    (0 when caught up); ``silence_ms``: since the last message from the control plane
    (``Progress`` arrives about every second when idle, so this bounds staleness).
    """

    version: int | None
    newest_version: int
    lag_versions: int
    lag_ms: float
    silence_ms: float
    endpoint: str | None
    connects: int
    reconnects: int
    connect_failures: int
    snapshots: int
    resyncs: int
    resync_reasons: Mapping[str, int]
    digest_mismatches: int
    deltas: int
    delta_parts: int
    messages: int
    heartbeats: int
    health_errors: int
    ownership_events: int
    ownership_coalesced: int


@dataclass
class _Counters:
    connects: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    snapshots: int = 0
    resync_reasons: dict[str, int] = field(default_factory=dict)
    digest_mismatches: int = 0
    deltas: int = 0
    delta_parts: int = 0
    messages: int = 0
    heartbeats: int = 0
    health_errors: int = 0
    ownership_events: int = 0


class WriteError(Exception):
    """A write the control plane refused (or whose outcome is unknown)."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        self.code, self.detail = code, detail
        super().__init__(f"{code.value}: {detail}")


class _Restart(Exception):
    """End this session; the next ``Hello`` asks for a snapshot."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(eq=False)
class _PendingWrite:
    done: trio.Event = field(default_factory=trio.Event)
    reply: WriteResult | Error | None = None  # None when the connection was lost


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``"host:port"`` or ``"[v6addr]:port"``."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"endpoint {endpoint!r} is not host:port")
    return host.strip("[]"), int(port)


def endpoint_order(
    endpoints: Sequence[tuple[str, int]], node_id: int | None, rng: random.Random
) -> list[tuple[str, int]]:
    """First the node picked by ``node_id`` (brokers spread evenly), then the rest in a
    per-client random order (a failed node's brokers spread over the others)."""
    if node_id is None:
        first = rng.randrange(len(endpoints))
    else:
        first = zlib.crc32(node_id.to_bytes(8, "big")) % len(endpoints)
    rest = [e for i, e in enumerate(endpoints) if i != first]
    rng.shuffle(rest)
    return [endpoints[first], *rest]


class OwnershipEvents:
    """Async iterator over this broker's ownership events (one consumer at a time)."""

    def __init__(self, view: MetadataView) -> None:
        self._view = view

    def __aiter__(self) -> OwnershipEvents:
        return self

    async def __anext__(self) -> OwnershipEvent:
        view = self._view
        while True:
            event = view._ledger.pop()
            if event is not None:
                return event
            if view._closed:
                raise StopAsyncIteration
            view._ownership_waiting += 1
            try:
                await view._ownership_ready.wait()
            finally:
                view._ownership_waiting -= 1


class MetadataView:
    """The broker's live view of the metadata; made by `open_metadata_client`.

    Tables and the routing table are read-only live mappings, updated atomically per
    delta (between two awaits a reader sees one version throughout).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        node_id: int | None,
        address: str | None,
        rack: str,
        register: bool,
        settings: ClientSettings,
        cache: MetadataCache | None,
        rng: random.Random,
        on_ownership: Callable[[OwnershipEvent], None] | None,
    ) -> None:
        if not endpoints:
            raise ValueError("at least one control-plane endpoint is needed")
        if register and (node_id is None or not address):
            raise ValueError("registering needs a node_id and an address")
        self.node_id = node_id
        self.address = address
        self.rack = rack
        self.register = register
        self.settings = settings
        self.cache = cache if cache is not None else MetadataCache(node_id)
        self.cache.verify_deltas = settings.verify_deltas
        if self.cache.node_id != node_id:
            raise ValueError(f"the cache tracks node {self.cache.node_id}, not {node_id}")
        self._rng = rng
        self._endpoints = endpoint_order([parse_endpoint(e) for e in endpoints], node_id, rng)
        self._on_ownership = on_ownership
        self._ledger = OwnershipLedger(self.cache.owned)
        self._ownership_ready = trio.Event()
        self._ownership_waiting = 0
        self._advanced = trio.Event()
        self._waiting = 0
        self._counters = _Counters()
        self._closed = False
        self.endpoint: str | None = None
        self.registered_version: int | None = None
        self.drain_requested = False
        self._newest = self.cache.version or 0
        self._behind_since: float | None = None
        self._last_heard = trio.current_time()
        self._want_snapshot = False
        self._fatal: WriteError | None = None
        self.last_error: str | None = None
        self._restart_reason: str | None = None
        self._conn: ClientConnection | None = None
        self._connected = trio.Event()
        self._health_kick = trio.Event()
        self._session_scope: trio.CancelScope | None = None
        self._pending: dict[int, _PendingWrite] = {}
        self._request_ids = itertools.count(1)
        self._snapshot_parts = SnapshotAssembler()
        self._delta_parts = DeltaAssembler()
        self.nodes: Mapping[int, Node] = MappingProxyType(self.cache.nodes)
        self.streams: Mapping[str, Stream] = MappingProxyType(self.cache.streams)
        self.shards: Mapping[ShardId, Shard] = MappingProxyType(self.cache.shards)
        self.tenants: Mapping[str, Tenant] = MappingProxyType(self.cache.tenants)
        self.config: Mapping[str, ConfigValue] = MappingProxyType(self.cache.config)
        self.routing: Mapping[ShardId, str | None] = MappingProxyType(self.cache.routing)
        """(stream, shard index) -> the leader's address (None: no leader right now)."""
        self.records: Mapping[tuple[str, str], Record] = MappingProxyType(self.cache.records)

    # --- reading ------------------------------------------------------------------------

    @property
    def version(self) -> int | None:
        return self.cache.version

    @property
    def node(self) -> Node | None:
        """This broker's own node record."""
        return self.cache.node()

    @property
    def drained(self) -> bool:
        node = self.cache.node()
        return node is not None and node.draining and node.drained_version is not None

    def leader_address(self, stream: str, index: int) -> str | None:
        return self.cache.routing.get((stream, index))

    def ownership_events(self) -> OwnershipEvents:
        """``async for event in view.ownership_events()``: see `OwnershipLedger`.  Ends
        when the client closes.  Events are relative to what was owned when the view
        started (nothing, unless a warm ``cache`` was passed in)."""
        return OwnershipEvents(self)

    @property
    def stats(self) -> ClientStats:
        c = self._counters
        now = trio.current_time()
        version = self.cache.version
        lag = max(0, self._newest - (version or 0))
        reasons = dict(c.resync_reasons)
        return ClientStats(
            version=version,
            newest_version=self._newest,
            lag_versions=lag,
            lag_ms=(now - self._behind_since) * 1000 if self._behind_since is not None else 0.0,
            silence_ms=(now - self._last_heard) * 1000,
            endpoint=self.endpoint,
            connects=c.connects,
            reconnects=c.reconnects,
            connect_failures=c.connect_failures,
            snapshots=c.snapshots,
            resyncs=sum(reasons.values()),
            resync_reasons=reasons,
            digest_mismatches=c.digest_mismatches,
            deltas=c.deltas,
            delta_parts=c.delta_parts,
            messages=c.messages,
            heartbeats=c.heartbeats,
            health_errors=c.health_errors,
            ownership_events=c.ownership_events,
            ownership_coalesced=self._ledger.coalesced,
        )

    # --- waiting ------------------------------------------------------------------------

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        """Return once ``predicate()`` holds; it is re-checked after every applied batch."""
        while not predicate():
            self._waiting += 1
            try:
                await self._advanced.wait()
            finally:
                self._waiting -= 1

    async def wait_version(self, version: int) -> None:
        await self.wait_until(lambda: (self.cache.version or 0) >= version)

    async def wait_ready(self) -> None:
        """The first snapshot is applied and, if registering, our registration is seen."""

        await self.wait_until(lambda: self._fatal is not None or self._ready())
        if self._fatal is not None:
            raise self._fatal

    def _ready(self) -> bool:
        version = self.cache.version
        if version is None:
            return False
        return not self.register or (
            self.registered_version is not None and version >= self.registered_version
        )

    async def wait_drained(self) -> None:
        """Return once the control plane says this node's drain is complete (it leads
        nothing: ``drained_version`` is set)."""
        await self.wait_until(lambda: self.drained)

    # --- acting -------------------------------------------------------------------------

    async def request_drain(self) -> None:
        """Ask to be drained: heartbeats say ``draining`` from now on (one goes out now)."""
        if self.node_id is None:
            raise ValueError("only a broker with a node_id can be drained")
        self.drain_requested = True
        self._health_kick.set()

    async def drain(self) -> None:
        await self.request_drain()
        await self.wait_drained()

    async def write(
        self,
        command: str,
        args: Record,
        *,
        expected_version: int | None = None,
        retry_unknown: bool = False,
        timeout_s: float | None = None,
    ) -> int:
        """Run a metadata command through the current connection; returns the version it
        applied at.  Refusals that changed nothing (no leader, unavailable) are retried;
        an unknown outcome (connection lost, timeout) only if ``retry_unknown``."""
        failures = 0
        with trio.fail_after(timeout_s or self.settings.write_timeout_s):
            while True:
                reply = await self._write_once(command, args, expected_version)
                if isinstance(reply, WriteResult):
                    self._newest = max(self._newest, reply.version)
                    return reply.version
                code = reply.code if reply is not None else ErrorCode.UNAVAILABLE
                unknown = reply is None or code in UNKNOWN_OUTCOME_CODES
                if not (retry_unknown if unknown else code in RETRYABLE_CODES):
                    detail = reply.detail if reply is not None else "connection lost"
                    raise WriteError(code, detail + (" (outcome unknown)" if unknown else ""))
                failures += 1
                await trio.sleep(self._backoff(failures))

    async def _write_once(
        self, command: str, args: Record, expected_version: int | None
    ) -> WriteResult | Error | None:
        while self._conn is None:
            await self._connected.wait()
        conn = self._conn
        request_id = next(self._request_ids)
        pending = self._pending[request_id] = _PendingWrite()
        try:
            await conn.send(WriteRequest(request_id, command, args, expected_version))
            await pending.done.wait()
        except ConnectionClosed:
            return None
        finally:
            self._pending.pop(request_id, None)
        return pending.reply

    # --- the receive path (hot) ---------------------------------------------------------

    def _on_batch(self, batch: list[Any]) -> None:
        """Apply one batch of server messages; raises `_Restart` / `CacheError`."""
        cache = self.cache
        counters = self._counters
        owned_before = counters.ownership_events
        try:
            for message in batch:
                kind = type(message)
                if kind is Deltas:
                    deltas = message.deltas
                    for delta in deltas:
                        update = cache.apply_delta(delta)
                        if update.ownership:
                            self._own(update.ownership)
                    counters.deltas += len(deltas)
                elif kind is Progress:
                    if message.version > self._newest:
                        self._newest = message.version
                    if message.version > (cache.version or 0) and not self._partial():
                        raise _Restart("gap")  # all up to it was sent, yet we lack some
                else:
                    self._on_other(message)
        finally:
            counters.messages += len(batch)
            self._after_batch(counters.ownership_events != owned_before)

    def _after_batch(self, owned: bool) -> None:
        """Lag bookkeeping and wake-ups, once per batch (even one cut short)."""
        version = self.cache.version or 0
        now = trio.current_time()
        self._last_heard = now
        if version >= self._newest:
            self._newest = version
            self._behind_since = None
        elif self._behind_since is None:
            self._behind_since = now
        if self._waiting:  # an Event per batch only when somebody waits
            self._advanced.set()
            self._advanced = trio.Event()
        if owned and self._ownership_waiting:
            self._ownership_ready.set()
            self._ownership_ready = trio.Event()

    def _partial(self) -> bool:
        return self._delta_parts.pending or self._snapshot_parts.pending

    def _own(self, events: tuple[OwnershipEvent, ...]) -> None:
        self._ledger.push(events)
        self._counters.ownership_events += len(events)
        if self._on_ownership is not None:
            for event in events:
                self._on_ownership(event)

    def _on_other(self, message: Any) -> None:
        if isinstance(message, DeltaPart):
            self._newest = max(self._newest, message.version)
            delta = self._delta_parts.add(message)
            self._counters.delta_parts += 1
            if delta is not None:
                self._counters.deltas += 1
                self._own(self.cache.apply_delta(delta).ownership)
        elif isinstance(message, SnapshotChunk):
            self._on_snapshot_chunk(message)
        elif isinstance(message, Resync):
            raise _Restart(f"resync: {message.reason}")
        elif isinstance(message, (WriteResult, Error)) and message.request_id is not None:
            pending = self._pending.get(message.request_id)
            if pending is not None:
                pending.reply = message
                pending.done.set()
        elif isinstance(message, Error):
            self._counters.health_errors += 1
            self.last_error = message.detail
            log.warning("broker %s: control plane error: %s", self.node_id, message.detail)

    def _on_snapshot_chunk(self, chunk: SnapshotChunk) -> None:
        if chunk.request_id is not None:
            return  # an answer to a GetSnapshot we never send
        self._newest = max(self._newest, chunk.version)
        with gc_paused():  # staging and installing are bulk builds of long-lived objects
            whole = self._snapshot_parts.add(chunk)
        if whole is None:
            return
        had_view = self.cache.version is not None
        try:
            with gc_paused():
                update = self.cache.apply_snapshot(*whole)
        except DigestMismatch:
            self._want_snapshot = True
            raise
        self._counters.snapshots += 1
        if had_view and not self._want_snapshot:
            self._count_resync("history")  # resumed below the server's retained history
        self._want_snapshot = False
        if update.ownership:
            self._own(update.ownership)

    def _count_resync(self, reason: str) -> None:
        reasons = self._counters.resync_reasons
        reasons[reason] = reasons.get(reason, 0) + 1

    # --- connections --------------------------------------------------------------------

    def _backoff(self, failures: int) -> float:
        s = self.settings
        ceiling = min(s.backoff_s_max, s.backoff_s_min * 2.0 ** min(failures, 32))
        return ceiling * self._rng.uniform(0.5, 1.0)

    async def _connection_loop(self) -> None:
        failures = 0
        for host, port in itertools.cycle(self._endpoints):
            try:
                conn = await ClientConnection.open(
                    host, port, timeout_s=self.settings.connect_timeout_s
                )
            except (OSError, trio.TooSlowError, ConnectionClosed, ProtocolError) as exc:
                self._counters.connect_failures += 1
                failures += 1
                log.debug("broker %s: cannot connect to %s:%d: %s", self.node_id, host, port, exc)
                await trio.sleep(self._backoff(failures))
                continue
            if self._counters.connects:
                self._counters.reconnects += 1
            self._counters.connects += 1
            self.endpoint = f"{host}:{port}"
            messages_before = self._counters.messages
            await self._run_session(conn)
            failures = 0 if self._counters.messages > messages_before else failures + 1
            await trio.sleep(self._backoff(failures))

    async def _run_session(self, conn: ClientConnection) -> None:
        try:
            with trio.CancelScope() as scope:
                self._session_scope = scope
                await self._session(conn)
        except ConnectionClosed as exc:
            log.debug("broker %s: %s closed: %s", self.node_id, self.endpoint, exc)
        except _Restart as exc:
            self._resync(exc.reason)
        except DigestMismatch as exc:
            self._counters.digest_mismatches += 1
            self._resync("digest")
            log.warning("broker %s: %s; resyncing", self.node_id, exc)
        except GapError as exc:
            self._resync("gap")
            log.warning("broker %s: %s; resyncing", self.node_id, exc)
        except RecordError as exc:  # a record that does not fit the model: nothing applied
            self._resync("invalid")
            log.warning("broker %s: %s; resyncing", self.node_id, exc)
        except (AssemblyError, CacheError, ProtocolError) as exc:
            self._resync("protocol")
            log.warning("broker %s: %s; resyncing", self.node_id, exc)
        finally:
            self._end_session()
            with trio.CancelScope(shield=True):
                await conn.aclose()
        if self._restart_reason is not None:
            reason, self._restart_reason = self._restart_reason, None
            self._resync(reason)

    def _resync(self, reason: str) -> None:
        self._want_snapshot = True
        self._count_resync(reason.partition(":")[0])

    async def _session(self, conn: ClientConnection) -> None:
        self._snapshot_parts.reset()
        self._delta_parts.reset()
        from_version = None if self._want_snapshot else self.cache.version
        await conn.send(ClientHello(self.node_id, from_version, self.settings.token))
        self._conn = conn
        self._connected.set()
        self._health_kick.set()
        receive_batch, on_batch = conn.receive_batch, self._on_batch
        while True:
            on_batch(await receive_batch())

    def _end_session(self) -> None:
        self._session_scope = None
        self._conn = None
        self._connected = trio.Event()
        for pending in self._pending.values():
            pending.done.set()  # reply None: the outcome is unknown
        self._pending.clear()

    def _restart(self, reason: str) -> None:
        """Drop the current session and start over from a snapshot."""
        scope = self._session_scope
        if scope is None:
            self._resync(reason)
        else:
            self._restart_reason = reason
            scope.cancel()

    # --- background tasks ---------------------------------------------------------------

    async def _register_task(self) -> None:
        assert self.node_id is not None and self.address is not None
        args: Record = {"node_id": self.node_id, "address": self.address, "rack": self.rack}
        while True:
            try:
                version = await self.write("register_node", args, retry_unknown=True)
                break
            except trio.TooSlowError:
                continue  # one write's timeout; the caller's ready_timeout_s bounds it
            except WriteError as exc:  # refused for good: wait_ready raises it
                self._fatal = exc
                self._advanced.set()
                return
        self.registered_version = version
        self._newest = max(self._newest, version)
        self._advanced.set()
        self._advanced = trio.Event()

    async def _heartbeat_task(self) -> None:
        await self.wait_until(self._ready)  # fenced until the view holds our registration
        while True:
            kick = self._health_kick
            conn = self._conn
            if conn is not None:
                status = HealthStatus.DRAINING if self.drain_requested else HealthStatus.UP
                assert self.node_id is not None
                report = ReportHealth(self.node_id, status, self.cache.version or 0)
                try:
                    await conn.send(report)
                    self._counters.heartbeats += 1
                except ConnectionClosed:
                    pass
            with trio.move_on_after(self.settings.heartbeat_s):
                await kick.wait()
            if kick.is_set():
                self._health_kick = trio.Event()

    async def _audit_task(self, interval_s: float) -> None:
        while True:
            await trio.sleep(interval_s * self._rng.uniform(0.75, 1.25))
            if self.cache.version is None:
                continue
            bad: list[tuple[str, str]] = []
            if self.cache.hashes_valid:
                idents = list(self.cache.records)
                for start in range(0, len(idents), AUDIT_SLICE_RECORDS):
                    bad = self.cache.audit(idents[start : start + AUDIT_SLICE_RECORDS])
                    if bad:
                        break
                    await trio.sleep(0)
            if bad or not self.cache.hashes_consistent():  # unverified: a full recompute
                self._counters.digest_mismatches += 1
                log.warning("broker %s: local view corrupt (%s); resyncing", self.node_id, bad)
                self._restart("digest")

    async def _periodic_resync_task(self, interval_s: float) -> None:
        while True:
            await trio.sleep(interval_s * self._rng.uniform(0.75, 1.25))
            if self.cache.version is not None:
                self._restart("periodic")

    async def _report_down(self) -> None:
        """Best effort on exit: mark our registration down (guarded by its epoch)."""
        node = self.cache.node()
        if self._conn is None or node is None or self.registered_version is None:
            return
        args: Record = {"node_id": node.id, "status": "down", "epoch": node.epoch}
        with trio.move_on_after(self.settings.shutdown_timeout_s):
            try:
                await self.write("node_health", args)
            except WriteError as exc:
                log.info("broker %s: could not report down: %s", self.node_id, exc)

    def _close(self) -> None:
        self._closed = True
        self._ownership_ready.set()


@asynccontextmanager
async def open_metadata_client(
    endpoints: Sequence[str],
    *,
    node_id: int | None,
    address: str | None = None,
    rack: str = "",
    register: bool = True,
    heartbeat_s: float = 1.0,
    backoff_s_min: float = 0.05,
    backoff_s_max: float = 5.0,
    connect_timeout_s: float = 5.0,
    ready_timeout_s: float | None = 60.0,
    snapshot_resync_s: float | None = None,
    digest_check_s: float | None = 60.0,
    report_down_on_exit: bool = True,
    verify_deltas: bool = True,
    token: str = "",
    cache: MetadataCache | None = None,
    metrics: BrokerMetrics | None = None,
    rng: random.Random | None = None,
    on_ownership: Callable[[OwnershipEvent], None] | None = None,
) -> AsyncIterator[MetadataView]:
    """Connect to the control plane and keep a `MetadataView` current; see the module
    docstring.  ``node_id`` None is a read-only watcher (no registration, heartbeats or
    ownership).  ``cache`` resumes from a view kept from an earlier client (a warm
    start).  ``metrics`` exports this view's numbers through `BrokerMetrics`."""
    settings = ClientSettings(
        heartbeat_s=heartbeat_s,
        backoff_s_min=backoff_s_min,
        backoff_s_max=backoff_s_max,
        connect_timeout_s=connect_timeout_s,
        ready_timeout_s=ready_timeout_s,
        snapshot_resync_s=snapshot_resync_s,
        digest_check_s=digest_check_s,
        report_down_on_exit=report_down_on_exit,
        verify_deltas=verify_deltas,
        token=token,
    )
    view = MetadataView(
        endpoints,
        node_id=node_id,
        address=address,
        rack=rack,
        register=register and node_id is not None,
        settings=settings,
        cache=cache,
        rng=rng or random.Random(),
        on_ownership=on_ownership,
    )
    if metrics is not None:
        metrics.track(view)
    error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(view._connection_loop)
        if view.register:
            nursery.start_soon(view._register_task)
            nursery.start_soon(view._heartbeat_task)
        if digest_check_s:
            nursery.start_soon(view._audit_task, digest_check_s)
        if snapshot_resync_s:
            nursery.start_soon(view._periodic_resync_task, snapshot_resync_s)
        try:
            with trio.fail_after(ready_timeout_s or float("inf")):
                await view.wait_ready()
            yield view
        except Exception as exc:  # re-raised below, not wrapped in an ExceptionGroup
            error = exc
        finally:
            with trio.CancelScope(shield=True):
                if settings.report_down_on_exit and view.register:
                    await view._report_down()
            view._close()
            nursery.cancel_scope.cancel()
    if error is not None:
        raise error


class BrokerMetrics:
    """Prometheus metrics for every view it tracks, read at scrape time (nothing is
    done per delta).  One instance per registry; many views may share it (label
    ``node``).  Needs ``prometheus_client``."""

    def __init__(self, registry: Any = None) -> None:
        from prometheus_client import REGISTRY

        self._views: weakref.WeakSet[MetadataView] = weakref.WeakSet()
        (registry if registry is not None else REGISTRY).register(self)

    def track(self, view: MetadataView) -> None:
        self._views.add(view)

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        p = "felix_broker_"
        gauges = {
            "applied_version": GaugeMetricFamily(
                p + "applied_version", "Last applied metadata version", labels=["node"]
            ),
            "lag_versions": GaugeMetricFamily(
                p + "lag_versions", "Newest version seen minus applied", labels=["node"]
            ),
            "lag_seconds": GaugeMetricFamily(
                p + "lag_seconds", "How long the view has been behind", labels=["node"]
            ),
            "silence_seconds": GaugeMetricFamily(
                p + "silence_seconds", "Since the last control-plane message", labels=["node"]
            ),
        }
        counters = {
            name: CounterMetricFamily(p + name, text, labels=["node"])
            for name, text in (
                ("reconnects", "Reconnections to the control plane"),
                ("snapshots", "Snapshots applied"),
                ("digest_mismatches", "Digest mismatches (delta, snapshot or audit)"),
                ("deltas", "Deltas applied"),
            )
        }
        resyncs = CounterMetricFamily(p + "resyncs", "Resyncs by reason", labels=["node", "reason"])
        for view in list(self._views):
            stats = view.stats
            node = str(view.node_id) if view.node_id is not None else "watcher"
            gauges["applied_version"].add_metric([node], stats.version or 0)
            gauges["lag_versions"].add_metric([node], stats.lag_versions)
            gauges["lag_seconds"].add_metric([node], stats.lag_ms / 1000)
            gauges["silence_seconds"].add_metric([node], stats.silence_ms / 1000)
            for name, family in counters.items():
                family.add_metric([node], getattr(stats, name))
            for reason, count in stats.resync_reasons.items():
                resyncs.add_metric([node, reason], count)
        return [*gauges.values(), *counters.values(), resyncs]
