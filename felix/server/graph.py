"""The metadata node's object graph, built once and in one direction.

(docs/architecture.md, "Object graph".)  `MetadataParts` come first: the store holding
the current state, the watch hub reading it, the state machine applying to the store and
publishing to the hub.  The Raft node is built on the state machine (restoring its boot
snapshot, which resets the hub to the same version), and `MetadataServices` on the node:
the session tracker, the forwarder with both handlers, the client API.  Nothing runs
until every piece exists, so a delta applied the moment the node starts is already in
the hub's history, and a broker resuming from its version right after a restart gets
deltas, not a snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass

import trio

from felix.proto.raft_messages import ForwardKind
from felix.server.auth import Authenticator
from felix.server.client_api import ClientApi
from felix.server.forwarding import Forwarder
from felix.server.metadata_sm import MetadataStateMachine, MetadataStore
from felix.server.outcome import Outcome
from felix.server.raft_node import RaftNode
from felix.server.rebalancer import Rebalancer
from felix.server.requests import NodeError
from felix.server.sessions import SessionTracker
from felix.server.watch_hub import HubLimits, WatchHub
from felix.server.ws_server import ServeLimits, ServerTls


@dataclass(frozen=True, slots=True)
class MetadataParts:
    store: MetadataStore
    hub: WatchHub
    state_machine: MetadataStateMachine

    @classmethod
    def build(cls, limits: HubLimits | None = None) -> MetadataParts:
        store = MetadataStore()
        hub = WatchHub(
            store.view, limits or HubLimits(), version=store.version, history=store.history
        )
        return cls(store, hub, MetadataStateMachine(store, hub))


class MetadataServices:
    """What serves brokers and admins on top of one `RaftNode`."""

    def __init__(
        self,
        node: RaftNode,
        parts: MetadataParts,
        *,
        auth: Authenticator | None = None,
        tls: ServerTls | None = None,
        serve_limits: ServeLimits | None = None,
        cluster_id: str = "",
    ) -> None:
        """``auth`` None serves everyone as admin (``--insecure``); ``tls`` None is
        plaintext; ``serve_limits`` (connection bounds, keepalive) None: the defaults;
        ``cluster_id`` names the cluster in backups.  All are built by the caller from
        the node's config."""
        assert node.state_machine is parts.state_machine, "the node must drive these parts"
        self.node = node
        self.store = parts.store
        self.hub = parts.hub
        self.sessions = SessionTracker(node, parts.store)
        self.rebalancer = Rebalancer(node, parts.store, self.sessions)
        self.forwarder = Forwarder(
            node,
            {
                ForwardKind.WRITE: node.propose_outcome,
                ForwardKind.HEALTH: self.sessions.handle_forwarded,
                ForwardKind.READ: self._read_point,
                ForwardKind.REBALANCE: self.rebalancer.run_now,
            },
        )
        self.api = ClientApi(
            node,
            self.forwarder,
            parts.store,
            parts.hub,
            auth=auth,
            tls=tls,
            serve_limits=serve_limits,
            cluster_id=cluster_id,
        )

    async def _read_point(self, _: bytes) -> Outcome:
        """The `ForwardKind.READ` handler, on the leader: a linearizable read point."""
        try:
            return Outcome(await self.node.read_index())
        except NodeError as exc:
            return exc.outcome()

    async def run(
        self, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Forwarding, session expiry, the watch hub and the client API on ``host:port``;
        reports the client port once it listens."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.forwarder.run)
            nursery.start_soon(self.sessions.run)
            nursery.start_soon(self.rebalancer.run)
            task_status.started(await nursery.start(self.api.run, host, port))
