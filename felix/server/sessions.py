"""Broker liveness as leader soft state (as in KRaft): heartbeats in memory, the log only
on transitions.

``ReportHealth`` reaches the leader (directly, or forwarded by a follower over the peer
link).  The tracker keeps "last heard" per broker in memory and proposes a command only
when something changes: registered -> up on the first good report, up -> down when a
session times out (or the broker reports down), drain requested.  When a node becomes
leader every broker marked up gets a fresh session with a grace period, so a failover
never marks healthy brokers down just because the new leader has not heard from them
yet.  All timing uses ``trio.current_time()`` (MockClock in tests).
"""

from __future__ import annotations

import logging

import trio

from felix.metadata.commands import DrainNode, NodeHealth, encode_command
from felix.proto.cbor import dumps, from_plain, safe_loads, to_plain
from felix.proto.client_messages import HealthStatus, ReportHealth
from felix.proto.codes import ErrorCode
from felix.proto.errors import ProtocolError
from felix.raft.types import Role
from felix.server.metadata_sm import MetadataStore
from felix.server.outcome import Outcome
from felix.server.raft_node import RaftNode

log = logging.getLogger("felix.sessions")

SESSION_TIMEOUT_S = 6.0
FAILOVER_GRACE_S = 6.0
SWEEP_INTERVAL_S = 0.5


def encode_report(report: ReportHealth) -> bytes:
    return dumps(to_plain(report))


def decode_report(data: bytes) -> ReportHealth:
    return from_plain(ReportHealth, safe_loads(data, max_depth=2))


class SessionTracker:
    def __init__(
        self,
        node: RaftNode,
        store: MetadataStore,
        *,
        timeout_s: float = SESSION_TIMEOUT_S,
        grace_s: float = FAILOVER_GRACE_S,
    ) -> None:
        self.node = node
        self.store = store
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self.last_heard: dict[int, float] = {}  # broker id -> deadline-relevant time
        self.applied: dict[int, int] = {}  # broker id -> applied_version it last reported
        self._leading_term: int | None = None
        self._in_flight: set[int] = set()
        self.expired = 0

    async def handle_forwarded(self, data: bytes) -> Outcome:
        """The `ForwardKind.HEALTH` handler (`felix.server.forwarding.Forwarder`)."""
        try:
            report = decode_report(data)
        except ProtocolError as exc:
            return Outcome.failed(ErrorCode.BAD_REQUEST, str(exc))
        return await self.report(report)

    async def report(self, report: ReportHealth) -> Outcome:
        """A broker's heartbeat, on the leader."""
        self._check_leadership()
        broker = self.store.state.nodes.get(report.node_id)
        if broker is None:
            detail = f"node {report.node_id} is not registered; register it first"
            return Outcome.failed(ErrorCode.REJECTED, detail)
        self.last_heard[report.node_id] = trio.current_time()
        self.applied[report.node_id] = report.applied_version  # controlled shutdown
        if report.status is HealthStatus.DRAINING and not broker.draining:
            return await self._propose(report.node_id, encode_command(DrainNode(report.node_id)))
        wanted = "down" if report.status is HealthStatus.DOWN else "up"
        if broker.state != wanted and report.status is not HealthStatus.DRAINING:
            command = NodeHealth(report.node_id, wanted, broker.epoch)
            return await self._propose(report.node_id, encode_command(command))
        return Outcome(self.store.version)

    async def _propose(self, broker: int, data: bytes) -> Outcome:
        if broker in self._in_flight:
            return Outcome(self.store.version)  # the transition is already on its way
        self._in_flight.add(broker)
        try:
            return await self.node.propose_outcome(data)
        finally:
            self._in_flight.discard(broker)

    def _check_leadership(self) -> None:
        """On becoming leader, every broker marked up gets a fresh, graced session."""
        core = self.node.core
        if core.role is not Role.LEADER:
            self._leading_term = None
            return
        if self._leading_term == core.term:
            return
        self._leading_term = core.term
        now = trio.current_time()
        grace_start = now + self.grace_s - self.timeout_s
        self.last_heard = {
            node_id: max(self.last_heard.get(node_id, grace_start), grace_start)
            for node_id, node in self.store.state.nodes.items()
            if node.state == "up"
        }

    async def run(self) -> None:
        """Expire sessions: a broker unheard for ``timeout_s`` is proposed down."""
        while True:
            await trio.sleep(SWEEP_INTERVAL_S)
            self._check_leadership()
            if self._leading_term is None:
                continue
            now = trio.current_time()
            for node_id, node in list(self.store.state.nodes.items()):
                heard = self.last_heard.get(node_id)
                if node.state == "up" and (heard is None or now - heard > self.timeout_s):
                    self.expired += 1
                    log.info(
                        "broker %d: no heartbeat for %.1f s; marking it down",
                        node_id,
                        self.timeout_s,
                    )
                    command = NodeHealth(node_id, "down", node.epoch)
                    await self._propose(node_id, encode_command(command))
