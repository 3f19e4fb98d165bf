"""One control-plane session after another: connect, ``Hello``, apply, resume, resync.

The receive path (`Session.on_batch`) is the broker's hot path: every message already
received is applied in one synchronous call, with no task switch per message.

There is one restart mechanism, `Session.restart`: a reason is recorded, the session
ends, and the next ``Hello`` asks for a snapshot.  Whatever makes the cache refuse what
the server sent (`CacheError`: a gap, a digest mismatch, an invalid record, parts out
of order), a ``Resync`` message or a ``WatchProgress`` past a gap ends the session from
inside the receive path; the digest audit and the periodic resync call `restart` from
their tasks.  Each reason is counted in ``stats.resync_reasons``.  A lost connection is
not a restart: the next session resumes from the cache's version (docs/architecture.md §8).
"""

from __future__ import annotations

import logging
import os
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from felix.broker.cache import (
    CacheError,
    DeltaAssembler,
    DigestMismatch,
    GapError,
    MetadataCache,
    OwnershipEvent,
    RecordError,
    SnapshotAssembler,
)
from felix.broker.connection import ClientConnection, ConnectionClosed
from felix.broker.endpoints import EndpointPlan
from felix.broker.requests import Requests, backoff
from felix.gc_pause import gc_paused
from felix.proto.client_messages import (
    ClientHello,
    DeltaPart,
    Deltas,
    Error,
    ErrorCode,
    HelloAck,
    Resync,
    SnapshotChunk,
    WatchProgress,
    WriteResult,
)
from felix.proto.errors import ProtocolError
from felix.proto.versions import VersionRange, supported_versions

log = logging.getLogger("felix.broker")


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
    token: str = ""  # sent as Authorization: Bearer in every connection's upgrade
    ssl_context: ssl.SSLContext | None = None  # wss://: the cluster CA, maybe a client cert
    # The protocol versions offered in every Hello (default: this build's, from the env).
    versions: VersionRange = field(default_factory=lambda: supported_versions(os.environ))


@dataclass
class Counters:
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


class Wakeup:
    """Wake every task waiting; an event is re-armed only when somebody waited."""

    def __init__(self) -> None:
        self._event = trio.Event()
        self.waiting = 0

    async def wait(self) -> None:
        self.waiting += 1
        try:
            await self._event.wait()
        finally:
            self.waiting -= 1

    def fire(self) -> None:
        if self.waiting:
            self._event.set()
            self._event = trio.Event()


CLOSE_UNAUTHORIZED = 4003  # the server's close code for refused credentials


class CredentialsRefused(Exception):
    """The control plane refused this client's token or certificate, or its role does
    not allow what the client does.  Fatal: retrying with the same credentials cannot
    succeed, so `open_metadata_client` raises this instead of reconnecting."""


class _Restart(Exception):
    """End this session from the receive path (see `Session.restart`)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def _restart_reason(exc: Exception) -> str:
    """The resync reason counted for what ended a session from the receive path."""
    if isinstance(exc, _Restart):
        return exc.reason
    if isinstance(exc, DigestMismatch):
        return "digest"
    if isinstance(exc, GapError):
        return "gap"
    if isinstance(exc, RecordError):  # a record that does not fit the model
        return "invalid"
    return "protocol"


class Session:
    """The connection loop and the receive path; see the module docstring."""

    def __init__(
        self,
        cache: MetadataCache,
        *,
        node_id: int | None,
        settings: ClientSettings,
        plan: EndpointPlan,
        rng: random.Random,
        counters: Counters,
        requests: Requests,
        own: Callable[[tuple[OwnershipEvent, ...]], None],
        applied: Callable[[bool], None],
        connected: Callable[[], None],
    ) -> None:
        self.cache = cache
        self.node_id = node_id
        self.settings = settings
        self.plan = plan  # which endpoint next (felix/broker/endpoints.py)
        self._rng = rng
        self.counters = counters
        self.requests = requests
        self._own = own  # ownership events, as applied
        self._applied = applied  # after every batch (True: ownership events came)
        self._connected = connected  # a session started (e.g. kick a heartbeat)
        self.endpoint: str | None = None
        self.last_error: str | None = None
        self.newest = cache.version or 0
        self.behind_since: float | None = None
        self.last_heard = trio.current_time()
        self.conn: ClientConnection | None = None
        self._want_snapshot = False
        self._pending_restart: str | None = None
        self._scope: trio.CancelScope | None = None
        self._snapshot_parts = SnapshotAssembler()
        self._delta_parts = DeltaAssembler()

    def saw_version(self, version: int) -> None:
        """The control plane has reached ``version`` (a write result, say)."""
        self.newest = max(self.newest, version)

    # --- the one restart mechanism ------------------------------------------------------

    def restart(self, reason: str) -> None:
        """Drop the current session and start over from a snapshot."""
        if self._scope is None:
            self._resync(reason)
        else:
            self._pending_restart = reason
            self._scope.cancel()

    def _resync(self, reason: str) -> None:
        self._want_snapshot = True
        reasons = self.counters.resync_reasons
        key = reason.partition(":")[0]
        reasons[key] = reasons.get(key, 0) + 1

    # --- connections --------------------------------------------------------------------

    async def run(self) -> None:
        """Sessions forever, each on the endpoint the plan names (docs/architecture.md
        §8), with a back-off in between; a session the server ended before saying
        anything counts as a failed attempt (a node that accepts and drops must not hold
        a broker in its tier)."""
        failures = 0
        counters, settings, plan = self.counters, self.settings, self.plan
        while True:
            host, port = plan.next()
            try:
                conn = await ClientConnection.open(
                    host,
                    port,
                    timeout_s=settings.connect_timeout_s,
                    token=settings.token,
                    ssl_context=settings.ssl_context,
                )
            except (OSError, trio.TooSlowError, ConnectionClosed, ProtocolError) as exc:
                counters.connect_failures += 1
                failures += 1
                plan.failed()
                log.debug("broker %s: cannot connect to %s:%d: %s", self.node_id, host, port, exc)
                await trio.sleep(self._backoff(failures))
                continue
            if counters.connects:
                counters.reconnects += 1
            counters.connects += 1
            self.endpoint = f"{host}:{port}"
            messages_before = counters.messages
            await self._run_one(conn)
            if counters.messages > messages_before:
                failures = 0
                plan.ended()
            else:
                failures += 1
                plan.failed()
            await trio.sleep(self._backoff(failures))

    def _backoff(self, failures: int) -> float:
        s = self.settings
        return backoff(failures, s.backoff_s_min, s.backoff_s_max, self._rng)

    async def _run_one(self, conn: ClientConnection) -> None:
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                await self._session(conn)
        except ConnectionClosed as exc:
            if exc.code == CLOSE_UNAUTHORIZED:
                raise CredentialsRefused(self.last_error or exc.reason) from None
            log.debug("broker %s: %s closed: %s", self.node_id, self.endpoint, exc)
        except (_Restart, CacheError, ProtocolError) as exc:
            if isinstance(exc, DigestMismatch):
                self.counters.digest_mismatches += 1
            self._resync(_restart_reason(exc))
            log.warning("broker %s: %s; resyncing", self.node_id, exc)
        finally:
            self._scope = None
            self.conn = None
            self.requests.detach()
            with trio.CancelScope(shield=True):
                await conn.aclose()
        if self._pending_restart is not None:
            reason, self._pending_restart = self._pending_restart, None
            self._resync(reason)

    async def _session(self, conn: ClientConnection) -> None:
        self._snapshot_parts.reset()
        self._delta_parts.reset()
        from_version = None if self._want_snapshot else self.cache.version
        versions = self.settings.versions
        hello = ClientHello(
            self.node_id, from_version, "", self.cache.history, versions.min, versions.max
        )  # the token, if any, went in the upgrade request
        await conn.send(hello)
        # Nothing else is sent before the answer: its HelloAck sets the version of every
        # later message (a server that sends none keeps the baseline).
        first = await conn.receive_batch()
        self.conn = conn
        self.requests.attach(conn)
        self._connected()
        receive_batch, on_batch = conn.receive_batch, self.on_batch
        rest = [m for m in first if type(m) is not HelloAck]
        if rest:
            on_batch(rest)
        while True:
            on_batch(await receive_batch())

    # --- the receive path (hot) ---------------------------------------------------------

    def on_batch(self, batch: list[Any]) -> None:
        """Apply one batch of server messages; raises `_Restart` / `CacheError`."""
        cache = self.cache
        counters = self.counters
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
                elif kind is WatchProgress:
                    if message.version > self.newest:
                        self.newest = message.version
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
        self.last_heard = now
        if version >= self.newest:
            self.newest = version
            self.behind_since = None
        elif self.behind_since is None:
            self.behind_since = now
        self._applied(owned)

    def _partial(self) -> bool:
        return self._delta_parts.pending or self._snapshot_parts.pending

    def _on_other(self, message: Any) -> None:
        if isinstance(message, DeltaPart):
            self.newest = max(self.newest, message.version)
            delta = self._delta_parts.add(message)
            self.counters.delta_parts += 1
            if delta is not None:
                self.counters.deltas += 1
                self._own(self.cache.apply_delta(delta).ownership)
        elif isinstance(message, SnapshotChunk):
            self._on_snapshot_chunk(message)
        elif isinstance(message, Resync):
            raise _Restart(f"resync: {message.reason}")
        elif isinstance(message, (WriteResult, Error)) and self.requests.settle(message):
            pass
        elif isinstance(message, Error) and message.request_id is None:
            if message.code is ErrorCode.UNAUTHORIZED:
                self.last_error = message.detail
                raise CredentialsRefused(message.detail)
            self.counters.health_errors += 1
            self.last_error = message.detail
            log.warning("broker %s: control plane error: %s", self.node_id, message.detail)

    def _on_snapshot_chunk(self, chunk: SnapshotChunk) -> None:
        if chunk.request_id is not None:
            return  # an answer to a GetSnapshot we never send
        self.newest = max(self.newest, chunk.version)
        with gc_paused():  # staging and installing are bulk builds of long-lived objects
            whole = self._snapshot_parts.add(chunk)
        if whole is None:
            return
        had_view = self.cache.version is not None
        same_lineage = chunk.history == self.cache.history
        with gc_paused():
            update = self.cache.apply_snapshot(*whole, chunk.history)
        self.counters.snapshots += 1
        if had_view and not same_lineage:
            self._resync("lineage")  # a restored cluster: its versions are another history
        elif had_view and not self._want_snapshot:
            self._resync("history")  # resumed below the server's retained history
        self._want_snapshot = False
        if update.ownership:
            self._own(update.ownership)
