"""One example dataplane broker built on `open_metadata_client` (docs/architecture.md §8,
§13): what `felix broker-agent` runs once per process and `felix brokers` N times in one.

It registers, heartbeats, follows its ownership events and reports them (one line each),
and, standing in for copying a shard's data, reports each catching-up replica ready
``copy_s`` after it starts.  It holds no data.  When the control plane removes it
(``node decommission``, ``node remove``) it stops: registering again would undo the
operator's decision (the agent then stays up, unready, until it is stopped).  A change
of control-plane node (failover) is reported with the version it resumed at.

`ExampleBroker.readiness` is what the agent's ``/readyz`` serves: ready only inside the
client's body (the first snapshot's digest checked, every delta since digest-checked as
applied, our own registration in the view) and not stopping.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import trio

from felix.broker.cache import OwnershipEvent, ShardRole
from felix.broker.client import BrokerMetrics, MetadataView, WriteError, open_metadata_client
from felix.proto.client_messages import Record

Say = Callable[[str], None]
REPORT_DOWN_TIMEOUT_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    endpoints: tuple[str, ...]
    node_id: int
    address: str
    rack: str = ""
    token: str = ""
    ssl_context: ssl.SSLContext | None = None
    copy_s: float = 1.0  # how long a new replica "copies" before it reports ready
    preferred_endpoints: tuple[str, ...] = ()  # observers: tried before ``endpoints``


class ExampleBroker:
    """One broker's lifecycle; `run` returns when ``stop`` is set (after reporting itself
    down, bounded by ``REPORT_DOWN_TIMEOUT_S``) or when the control plane removed it."""

    def __init__(
        self, settings: BrokerSettings, say: Say, metrics: BrokerMetrics | None = None
    ) -> None:
        self.settings = settings
        self.say = say
        self.metrics = metrics
        self.view: MetadataView | None = None  # set once the view is complete
        self.stopping = False
        self.removed = False

    @property
    def node_id(self) -> int:
        return self.settings.node_id

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason) for ``/readyz``."""
        if self.removed:
            return False, "removed from the cluster"
        if self.stopping:
            return False, "shutting down"
        view = self.view
        if view is None:
            return False, "waiting for a digest-checked snapshot that holds our registration"
        node = view.node
        if node is None:
            return False, f"our registration is not in the view at version {view.version}"
        return True, (
            f"complete, digest-checked view at version {view.version} from {view.endpoint};"
            f" registered (epoch {node.epoch}, {node.state})"
        )

    async def run(self, stop: trio.Event) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._stop_while_connecting, stop, nursery.cancel_scope)
            await self._run(stop)
            nursery.cancel_scope.cancel()

    async def _stop_while_connecting(self, stop: trio.Event, scope: trio.CancelScope) -> None:
        """Before the view is complete there is nothing to report: stop at once."""
        await stop.wait()
        self.stopping = True
        if self.view is None:
            self.say(f"broker {self.node_id}: stopping before the view was complete")
            scope.cancel()

    async def _run(self, stop: trio.Event) -> None:
        s = self.settings
        async with open_metadata_client(
            list(s.endpoints),
            preferred_endpoints=list(s.preferred_endpoints),
            node_id=s.node_id,
            address=s.address,
            rack=s.rack,
            token=s.token,
            ssl_context=s.ssl_context,
            ready_timeout_s=None,
            report_down_on_exit=False,  # done below, so that the outcome is told
            metrics=self.metrics,
        ) as view:
            self.view = view
            self.say(
                f"broker {s.node_id}: up at version {view.version} via {view.endpoint}"
                f" (address {s.address}, rack {s.rack or '-'})"
            )
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._follow, view)
                    nursery.start_soon(self._until_removed, view, nursery.cancel_scope)
                    nursery.start_soon(self._endpoints, view)
                    await stop.wait()
                    self.stopping = True
                    nursery.cancel_scope.cancel()
            finally:
                self.stopping = True  # /readyz fails while the broker reports down
            if not self.removed:
                await self._report_down(view)

    async def _report_down(self, view: MetadataView) -> None:
        """Mark our registration down (guarded by its epoch), so the control plane moves
        leadership away now rather than after the heartbeat timeout."""
        node = view.node
        if node is None:
            return
        args: Record = {"node_id": node.id, "status": "down", "epoch": node.epoch}
        with trio.move_on_after(REPORT_DOWN_TIMEOUT_S) as timer:
            try:
                version = await view.write("node_health", args)
            except WriteError as exc:
                self.say(f"broker {self.node_id}: could not report itself down: {exc}")
                return
            self.say(f"broker {self.node_id}: reported itself down at version {version}")
        if timer.cancelled_caught:
            self.say(
                f"broker {self.node_id}: could not report itself down within"
                f" {REPORT_DOWN_TIMEOUT_S:g} s"
            )

    async def _until_removed(self, view: MetadataView, scope: trio.CancelScope) -> None:
        await view.wait_until(lambda: view.node is not None)
        await view.wait_until(lambda: view.node is None)
        self.removed = True
        self.say(
            f"broker {self.node_id}: removed from the cluster at version {view.version}: stopping"
        )
        scope.cancel()

    async def _endpoints(self, view: MetadataView) -> None:
        """One line per change of control-plane node: a failover resumes from a version."""
        current = view.endpoint
        while True:
            await view.wait_until(lambda was=current: view.endpoint != was)  # type: ignore[misc]
            stats = view.stats
            self.say(
                f"broker {self.node_id}: now via {view.endpoint} (was {current}), resumed"
                f" at version {view.version}; reconnects {stats.reconnects}, snapshots"
                f" {stats.snapshots}, resyncs {stats.resyncs}"
            )
            current = view.endpoint

    async def _follow(self, view: MetadataView) -> None:
        async with trio.open_nursery() as nursery:
            async for event in view.ownership_events():
                self.say(f"broker {self.node_id}: {describe(event)}")
                if event.role is ShardRole.CATCHING_UP:
                    nursery.start_soon(self._copy, view, event)

    async def _copy(self, view: MetadataView, event: OwnershipEvent) -> None:
        await trio.sleep(self.settings.copy_s)  # standing in for copying the shard's data
        stream, index = event.shard
        version = await view.report_replica_ready(stream, index)
        self.say(
            f"broker {self.node_id}: {stream}/{index} caught up (reported at version {version})"
        )


def describe(event: OwnershipEvent) -> str:
    stream, index = event.shard
    name = f"{stream}/{index}"
    if event.role is None:
        return f"stop owning {name} (was {event.previous}) at version {event.version}"
    what = "start owning" if event.previous is None else f"{event.previous} ->"
    epoch = f" epoch {event.leader_epoch}" if event.role is ShardRole.LEADER else ""
    return f"{what} {name} as {event.role}{epoch} at version {event.version}"


def unwrap(exc: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups: Trio's nurseries wrap what a
    broker raises (refused credentials, say) on its way out."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc
