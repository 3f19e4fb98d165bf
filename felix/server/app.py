"""One node, wired: config -> WAL -> Raft driver + TCP transport + ops/admin HTTP server.

`run_node` owns one nursery for everything the node runs.  Shutdown is graceful and
bounded: on request, a leader first hands leadership to its most caught-up follower (so
the cluster does not wait out an election timeout), then every task is cancelled
(connections close), and the WAL is closed under a shielded, time-bounded scope.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import asdict, dataclass, field
from typing import Any

import trio

from felix.config import NodeConfig
from felix.proto.raft_messages import ConfChangeKind, ConfState
from felix.raft.types import RaftConfig, Role
from felix.server.graph import MetadataParts, MetadataServices
from felix.server.health import OpsServer, Query, Response
from felix.server.metadata_sm import metadata_outcome
from felix.server.metrics import NodeMetrics
from felix.server.raft_node import NodeSettings, RaftNode
from felix.server.requests import NodeError, NotLeader
from felix.server.watch_hub import HubLimits
from felix.storage.segmented_wal import SegmentedWal
from felix.transport.base import Deliver, PeerTransport
from felix.transport.tcp import PeerAddress, TcpTransport, TcpTransportConfig

log = logging.getLogger("felix.app")

SHUTDOWN_GRACE_S = 5.0
APPLIED_LAG_READY_MAX = 1000


@dataclass
class NodeHandle:
    """What a running node exposes to its supervisor (`felix serve`, `felix dev`)."""

    config: NodeConfig
    node: RaftNode
    ops_port: int
    stop_requested: trio.Event = field(default_factory=trio.Event)
    hand_off: bool = True

    def request_stop(self, *, others_stopping: bool = False) -> None:
        """Stop gracefully; when the whole cluster stops at once (``felix dev``) there is
        nobody to hand leadership to."""
        self.hand_off = not others_stopping
        self.stop_requested.set()


def raft_config_for(config: NodeConfig) -> RaftConfig:
    return RaftConfig(
        node_id=config.node_id,
        election_ticks=config.raft.election_ticks,
        heartbeat_ticks=config.raft.heartbeat_ticks,
        pre_vote=config.raft.pre_vote,
        check_quorum=config.raft.check_quorum,
        entries_per_msg_max=config.limits.entries_per_msg_max,
    )


async def run_node(
    config: NodeConfig,
    *,
    grace_s: float = SHUTDOWN_GRACE_S,
    task_status: trio.TaskStatus[NodeHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    voters = ConfState(tuple(sorted({config.node_id, *config.peers})), ())
    config.data_dir.mkdir(parents=True, exist_ok=True)
    wal, boot = await SegmentedWal.open(
        str(config.data_dir), voters, snapshots_keep=config.snapshot.keep
    )
    metrics = NodeMetrics(config.node_id)

    def transport(deliver: Deliver) -> PeerTransport:
        peers = {n: PeerAddress(e.host, e.port) for n, e in config.peers.items()}
        tcp_config = TcpTransportConfig(
            node_id=config.node_id,
            cluster_id=config.cluster_id,
            listen_host=config.listen.peer.host,
            listen_port=config.listen.peer.port,
            peers=peers,
            frame_bytes_max=config.limits.frame_bytes_max,
            send_queue_max=config.limits.peer_send_queue_max,
        )
        return TcpTransport(tcp_config, deliver, random.Random())

    settings = NodeSettings(
        tick_s=config.raft.tick_ms / 1000,
        inputs_queue_max=config.limits.inputs_queue_max,
        proposals_pending_max=config.limits.proposals_pending_max,
        proposal_timeout_s=config.limits.proposal_timeout_ms / 1000,
        snapshot_entries=config.snapshot.entries,
        snapshot_bytes=config.snapshot.bytes,
    )
    watch = config.watch
    parts = MetadataParts.build(
        HubLimits(
            history_versions_max=watch.history_versions_max,
            history_bytes_max=watch.history_bytes_max,
            message_bytes_max=watch.message_bytes_max,
            progress_interval_s=watch.progress_interval_ms / 1000,
        )
    )
    node = RaftNode(
        raft_config_for(config),
        boot,
        wal,
        transport,
        parts.state_machine,
        settings=settings,
        metrics=metrics,
        outcome_of=metadata_outcome,
    )
    services = MetadataServices(node, parts)
    metrics.watch_stats(lambda: parts.hub)
    ops = build_ops_server(config, node, wal)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            ops_port = await nursery.start(ops.run, config.listen.ops.host, config.listen.ops.port)
            await nursery.start(services.run, config.listen.client.host, config.listen.client.port)
            handle = NodeHandle(config, node, ops_port)
            log.info(
                "node %d serving: peers on %s, ops on %s:%d, data in %s",
                config.node_id,
                config.listen.peer,
                config.listen.ops.host,
                ops_port,
                config.data_dir,
            )
            task_status.started(handle)
            await handle.stop_requested.wait()
            if handle.hand_off:
                with trio.move_on_after(grace_s * 0.6):
                    await hand_off_leadership(node, "stopping; ")
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(grace_s * 0.4):
            await wal.aclose()
        log.info("node %d stopped", config.node_id)


async def hand_off_leadership(node: RaftNode, why: str = "") -> None:
    """Thesis §3.10: a leader that is about to stop transfers leadership first."""
    status = node.status()
    if status.role != Role.LEADER.value:
        return
    candidates = [(m, p) for p, m in status.match_index.items() if p in status.voters]
    if not candidates:
        return
    _, target = max(candidates)
    log.info("node %d: %stransferring leadership to node %d", node.node_id, why, target)
    try:
        await node.transfer_leader(target, timeout_s=2.0)
    except NodeError as exc:
        log.warning("node %d: leadership transfer failed: %s", node.node_id, exc)


# --- the ops server with admin routes ---------------------------------------------------


def _json(status: int, payload: Any) -> Response:
    return Response(status, (json.dumps(payload) + "\n").encode(), "application/json")


def _error(exc: Exception) -> Response:
    if isinstance(exc, NotLeader):
        return _json(409, {"error": str(exc), "leader": exc.leader_hint})
    return _json(503, {"error": str(exc)})


def _int_param(query: Query, name: str) -> int:
    values = query.get(name)
    if not values:
        raise ValueError(f"missing query parameter {name!r}")
    return int(values[0])


def build_ops_server(config: NodeConfig, node: RaftNode, wal: SegmentedWal) -> OpsServer:
    def loop_alive() -> tuple[bool, str]:
        return True, "event loop answers"

    def storage_writable() -> tuple[bool, str]:
        failed = wal.core.failed
        return failed is None, "WAL writable" if failed is None else f"WAL failed: {failed!r}"

    def known_leader() -> tuple[bool, str]:
        leader = node.core.leader_id
        return leader is not None, f"leader is node {leader}" if leader else "no leader known"

    def not_learner() -> tuple[bool, str]:
        learner = node.node_id in node.core.conf.learners
        return not learner, "learner" if learner else "voter"

    def applied_lag() -> tuple[bool, str]:
        lag = node.core.commit_index - node.applied_index
        return (
            lag <= APPLIED_LAG_READY_MAX,
            f"applied {node.applied_index}, commit {node.core.commit_index}",
        )

    async def status(query: Query) -> Response:
        payload = asdict(node.status())
        payload["match_index"] = {str(k): v for k, v in payload["match_index"].items()}
        payload["cluster_id"] = config.cluster_id
        payload["peer_address"] = str(config.listen.peer)
        return _json(200, payload)

    async def transfer(query: Query) -> Response:
        try:
            if "to" in query:
                target = _int_param(query, "to")
                await node.transfer_leader(target, timeout_s=5.0)
            else:
                await hand_off_leadership(node)
        except (NodeError, ValueError) as exc:
            return _error(exc)
        return _json(200, {"leader": node.core.leader_id})

    def membership(kind: ConfChangeKind) -> Any:
        async def route(query: Query) -> Response:
            try:
                member = _int_param(query, "id")
                address = query.get("address", [""])[0]
                index = await node.change_membership(kind, member, address=address)
            except (NodeError, ValueError) as exc:
                return _error(exc)
            return _json(
                200,
                {
                    "index": index,
                    "voters": node.core.conf.voters,
                    "learners": node.core.conf.learners,
                },
            )

        return route

    return OpsServer(
        livez={"loop": loop_alive, "storage": storage_writable},
        readyz={"leader": known_leader, "voter": not_learner, "applied_lag": applied_lag},
        metrics=node.metrics.exposition,
        get_routes={"/v1/status": status},
        post_routes={
            "/v1/transfer-leader": transfer,
            "/v1/members/add": membership(ConfChangeKind.ADD_LEARNER),
            "/v1/members/promote": membership(ConfChangeKind.PROMOTE),
            "/v1/members/remove": membership(ConfChangeKind.REMOVE),
        },
    )
