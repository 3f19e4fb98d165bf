"""The broker's metadata client: connect, register, watch, resume, resync, heartbeat.

Theory of operation
-------------------
``async with open_metadata_client(endpoints, node_id=7, address="10.0.0.7:9092") as view``
runs, in one nursery:

* the **connection loop**: connect to one control-plane node (the first one tried is
  picked from ``node_id``, so brokers spread over nodes; after that, a per-client
  shuffled order; with ``preferred_endpoints``, those first and the others only when
  none of them answers, see `felix.broker.endpoints`), send ``Hello(from_version)`` —
  the cache's version, or None when a snapshot is needed — and apply every message as
  it arrives (`receive_batch`, no task switch per message).  When the connection
  drops, reconnect after a jittered exponential back-off to the next node and
  *resume* from the last applied version, so a failover costs no snapshot.  A
  ``Resync``, a delta that does not follow (gap), or a digest mismatch (after a delta,
  a snapshot or the periodic audit) makes the next ``Hello`` ask for a snapshot; each
  is counted in ``stats.resync_reasons``.
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

The work is split by responsibility: `felix.broker.session` (connection, resume,
resync: the one restart mechanism, and the receive path), `felix.broker.requests`
(writes and their pending table) and `felix.broker.tasks` (registration, heartbeats,
the audit, the periodic resync); `MetadataView` ties them to one cache and is what a
broker reads.
"""

from __future__ import annotations

import os
import random
import ssl
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import trio

from felix.broker.cache import MetadataCache, OwnershipEvent, OwnershipLedger, ShardId
from felix.broker.endpoints import EndpointPlan, parse_endpoints
from felix.broker.endpoints import endpoint_order as endpoint_order
from felix.broker.endpoints import parse_endpoint as parse_endpoint
from felix.broker.requests import Requests
from felix.broker.requests import WriteError as WriteError
from felix.broker.session import ClientSettings as ClientSettings
from felix.broker.session import Counters, CredentialsRefused, Session, Wakeup
from felix.broker.tasks import BackgroundTasks
from felix.broker.tiered_session import TieredSession
from felix.metadata.config import ConfigValue
from felix.metadata.model import Node, Shard, Stream, Tenant
from felix.proto.client_messages import Record
from felix.security.contexts import client_context


@dataclass(frozen=True, slots=True)
class ClientStats:
    """A consistent reading of the client's counters and lag.

    ``lag_versions``: newest version seen (deltas, ``WatchProgress``, write results) minus the
    applied one; ``lag_ms``: for how long the view has been behind that newest version
    (0 when caught up); ``silence_ms``: since the last message from the control plane
    (``WatchProgress`` arrives about every second when idle, so this bounds staleness).
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


class OwnershipEvents:
    """Async iterator over this broker's ownership events (one consumer at a time)."""

    def __init__(self, ledger: OwnershipLedger, ready: Wakeup, closed: Callable[[], bool]):
        self._ledger, self._ready, self._closed = ledger, ready, closed

    def __aiter__(self) -> OwnershipEvents:
        return self

    async def __anext__(self) -> OwnershipEvent:
        while True:
            event = self._ledger.pop()
            if event is not None:
                return event
            if self._closed():
                raise StopAsyncIteration
            await self._ready.wait()


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
        preferred_endpoints: Sequence[str] = (),
        preferred_probe_s: float | None = None,
    ) -> None:
        fallback = parse_endpoints(endpoints, "endpoint")
        preferred = parse_endpoints(preferred_endpoints, "preferred endpoint")
        if not fallback:
            raise ValueError("at least one control-plane endpoint is needed")
        if preferred_probe_s is not None and not preferred_probe_s > 0:
            raise ValueError(f"preferred_probe_s must be > 0 or None, not {preferred_probe_s}")
        if register and (node_id is None or not address):
            raise ValueError("registering needs a node_id and an address")
        self.node_id, self.address, self.rack = node_id, address, rack
        self.register = register
        self.settings = settings
        self.cache = cache if cache is not None else MetadataCache(node_id)
        self.cache.verify_deltas = settings.verify_deltas
        if self.cache.node_id != node_id:
            raise ValueError(f"the cache tracks node {self.cache.node_id}, not {node_id}")
        self._on_ownership = on_ownership
        self._ledger = OwnershipLedger(self.cache.owned)
        self._ownership_ready = Wakeup()
        self._advanced = Wakeup()
        self._counters = Counters()
        self._closed = False
        self._requests = Requests(
            timeout_s=settings.write_timeout_s,
            backoff_s=(settings.backoff_s_min, settings.backoff_s_max),
            rng=rng,
            saw_version=self._saw_version,
        )
        session: Any = dict(
            node_id=node_id,
            settings=settings,
            rng=rng,
            counters=self._counters,
            requests=self._requests,
            own=self._own,
            applied=self._applied,
            connected=self._on_connect,
        )
        plan = EndpointPlan(fallback, preferred, node_id, rng)
        self.plan: EndpointPlan | None = plan if preferred else None
        """The tiers and their order, with preferred endpoints (else None)."""
        if preferred:
            self._session: Session = TieredSession(
                self.cache, plan=plan, probe_s=preferred_probe_s, **session
            )
        else:
            self._session = Session(self.cache, plan=plan, **session)
        self._tasks = BackgroundTasks(
            self.cache,
            self._session,
            self._requests,
            identity=(node_id, address, rack),
            settings=settings,
            rng=rng,
            advanced=self._advanced.fire,
            wait_until=self.wait_until,
        )
        self._tables()

    def _tables(self) -> None:
        cache = self.cache
        self.nodes: Mapping[int, Node] = MappingProxyType(cache.nodes)
        self.streams: Mapping[str, Stream] = MappingProxyType(cache.streams)
        self.shards: Mapping[ShardId, Shard] = MappingProxyType(cache.shards)
        self.tenants: Mapping[str, Tenant] = MappingProxyType(cache.tenants)
        self.config: Mapping[str, ConfigValue] = MappingProxyType(cache.config)
        self.routing: Mapping[ShardId, str | None] = MappingProxyType(cache.routing)
        """(stream, shard index) -> the leader's address (None: no leader right now)."""
        self.records: Mapping[tuple[str, str], Record] = MappingProxyType(cache.records)

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
        """The drain is complete: this node leads nothing, and every live broker has
        applied the version where that became true (controlled shutdown,
        docs/architecture.md §13)."""
        node = self.cache.node()
        return node is not None and node.draining and node.drain_acked

    @property
    def endpoint(self) -> str | None:
        """The control-plane node of the current (or last) session."""
        return self._session.endpoint

    @property
    def registered_version(self) -> int | None:
        """The version of our registration (the node's epoch), once it is known."""
        return self._tasks.registered_version

    @property
    def drain_requested(self) -> bool:
        return self._tasks.drain_requested

    @property
    def last_error(self) -> str | None:
        """The last error the control plane sent outside a write."""
        return self._session.last_error

    def leader_address(self, stream: str, index: int) -> str | None:
        return self.cache.routing.get((stream, index))

    def ownership_events(self) -> OwnershipEvents:
        """``async for event in view.ownership_events()``: see `OwnershipLedger`.  Ends
        when the client closes.  Events are relative to what was owned when the view
        started (nothing, unless a warm ``cache`` was passed in)."""
        return OwnershipEvents(self._ledger, self._ownership_ready, lambda: self._closed)

    @property
    def stats(self) -> ClientStats:
        c, s = self._counters, self._session
        now = trio.current_time()
        version = self.cache.version
        reasons = dict(c.resync_reasons)
        return ClientStats(
            version=version,
            newest_version=s.newest,
            lag_versions=max(0, s.newest - (version or 0)),
            lag_ms=(now - s.behind_since) * 1000 if s.behind_since is not None else 0.0,
            silence_ms=(now - s.last_heard) * 1000,
            endpoint=s.endpoint,
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
            await self._advanced.wait()

    async def wait_version(self, version: int) -> None:
        await self.wait_until(lambda: (self.cache.version or 0) >= version)

    async def wait_ready(self) -> None:
        """The first snapshot is applied and, if registering, our registration is seen."""
        await self.wait_until(lambda: self._tasks.fatal is not None or self._ready())
        if self._tasks.fatal is not None:
            raise self._tasks.fatal

    def _ready(self) -> bool:
        version = self.cache.version
        if version is None:
            return False
        registered = self._tasks.registered_version
        return not self.register or (registered is not None and version >= registered)

    async def wait_drained(self) -> None:
        """Return once the control plane says this node's drain is complete: it leads
        nothing and every live broker has applied that change (see `drained`)."""
        await self.wait_until(lambda: self.drained)

    async def report_replica_ready(self, stream: str, index: int) -> int:
        """Tell the control plane our copy of shard ``stream/index`` has caught up (after a
        ``CATCHING_UP`` ownership event); returns the version it applied at.  Only then
        does a reassignment remove the replica it replaces.  Repeating it is harmless."""
        if self.node_id is None:
            raise ValueError("only a broker with a node_id has replicas")
        args: Record = {"shard": f"{stream}/{index}", "node_id": self.node_id}
        return await self.write("replica_ready", args, retry_unknown=True)

    # --- acting -------------------------------------------------------------------------

    async def request_drain(self) -> None:
        """Ask to be drained: heartbeats say ``draining`` from now on (one goes out now)."""
        if self.node_id is None:
            raise ValueError("only a broker with a node_id can be drained")
        self._tasks.drain_requested = True
        self._tasks.kick_health()

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
        return await self._requests.write(
            command,
            args,
            expected_version=expected_version,
            retry_unknown=retry_unknown,
            timeout_s=timeout_s,
        )

    # --- the session's callbacks --------------------------------------------------------

    def _saw_version(self, version: int) -> None:
        self._session.saw_version(version)

    def _on_connect(self) -> None:
        self._tasks.kick_health()

    def _own(self, events: tuple[OwnershipEvent, ...]) -> None:
        self._ledger.push(events)
        self._counters.ownership_events += len(events)
        if self._on_ownership is not None:
            for event in events:
                self._on_ownership(event)

    def _applied(self, owned: bool) -> None:
        self._advanced.fire()
        if owned:
            self._ownership_ready.fire()

    # --- running (open_metadata_client) -------------------------------------------------

    def _start(self, nursery: trio.Nursery) -> None:
        self._tasks.start(nursery, register=self.register, ready=self._ready)

    async def _stop(self) -> None:
        """Report down (if asked to), then end every iterator of ownership events."""
        with trio.CancelScope(shield=True):
            if self.settings.report_down_on_exit and self.register:
                await self._tasks.report_down()
        self._closed = True
        self._ownership_ready.fire()


def broker_ssl_context(
    ca: str | os.PathLike[str],
    cert: str | os.PathLike[str] | None = None,
    key: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """A TLS 1.3 context for ``open_metadata_client``: trusts only the cluster CA and
    presents a client certificate if given (one naming ``felix://<cluster>/broker/<id>``
    authenticates without a token)."""
    return client_context(ca, cert, key)


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
    ssl_context: ssl.SSLContext | None = None,
    cache: MetadataCache | None = None,
    metrics: BrokerMetrics | None = None,
    rng: random.Random | None = None,
    on_ownership: Callable[[OwnershipEvent], None] | None = None,
    preferred_endpoints: Sequence[str] = (),
    preferred_probe_s: float | None = 30.0,
) -> AsyncIterator[MetadataView]:
    """Connect to the control plane and keep a `MetadataView` current; see the module
    docstring.  ``preferred_endpoints`` (observers) are tried first, ``endpoints``
    (voters) only when none of them answers, and the preferred ones again on every
    reconnect (`felix.broker.endpoints`); one listed in both is used once.  While on
    a fallback endpoint it probes the preferred ones every ``preferred_probe_s`` (None:
    never) and moves back, resuming from its version, once one answers.  ``node_id``
    None is a read-only watcher (no registration, heartbeats or ownership).  ``cache``
    resumes from a view kept from an earlier client (a warm start).  ``metrics`` exports
    this view's numbers through `BrokerMetrics`.  ``token`` authenticates every
    connection; ``ssl_context`` (e.g. `broker_ssl_context`) makes them ``wss://``.
    Refused credentials raise `CredentialsRefused`."""
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
        ssl_context=ssl_context,
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
        preferred_endpoints=preferred_endpoints,
        preferred_probe_s=preferred_probe_s,
    )
    if metrics is not None:
        metrics.track(view)
    async with _running(view, ready_timeout_s) as ready:
        yield ready


@asynccontextmanager
async def _running(
    view: MetadataView, ready_timeout_s: float | None
) -> AsyncIterator[MetadataView]:
    """Run ``view``'s tasks, wait until it is ready, hand it out, and stop it on exit.
    Refused credentials end it with `CredentialsRefused` itself (not in a group)."""
    error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            view._start(nursery)
            try:
                with trio.fail_after(ready_timeout_s or float("inf")):
                    await view.wait_ready()
                yield view
            except Exception as exc:  # re-raised below, not wrapped in an ExceptionGroup
                error = exc
            finally:
                await view._stop()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        refused, _ = group.split(CredentialsRefused)
        if refused is None:
            raise
        first: BaseException = refused
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
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
