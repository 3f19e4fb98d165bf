"""The ops server's routes: health checks, metrics, status and the admin API
(leadership transfer, membership changes).  Health semantics: docs/architecture.md,
"Operations"; leadership transfer: thesis §3.10; membership: thesis §4.1."""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

import trio

from felix.config import NodeConfig
from felix.proto.raft_messages import ConfChangeKind
from felix.raft.types import Role
from felix.server.auth import Authenticator
from felix.server.autopilot import removal_refusal
from felix.server.health import OpsServer, Query, Response
from felix.server.raft_node import RaftNode
from felix.server.requests import NodeError, NotLeader
from felix.storage.segmented_wal import SegmentedWal

log = logging.getLogger("felix.admin")

APPLIED_LAG_READY_MAX = 1000


HAND_OFF_HEARD_WITHIN_S = 1.0  # a voter silent longer is not a hand-off target


async def hand_off_leadership(node: RaftNode, why: str = "") -> None:
    """Thesis §3.10: a leader that is about to stop transfers leadership first, to the
    most caught-up voter it still hears from (a stopped one could never take over, and
    the stop would wait out the whole transfer timeout)."""
    status = node.status()
    if status.role != Role.LEADER.value:
        return
    heard = node.heard_recently(HAND_OFF_HEARD_WITHIN_S)
    candidates = [
        (m, p) for p, m in status.match_index.items() if p in status.voters and p in heard
    ]
    if not candidates:
        log.info("node %d: %sno voter to hand leadership to", node.node_id, why)
        return
    _, target = max(candidates)
    log.info("node %d: %stransferring leadership to node %d", node.node_id, why, target)
    try:
        await node.transfer_leader(target, timeout_s=2.0)
    except NodeError as exc:
        log.warning("node %d: leadership transfer failed: %s", node.node_id, exc)


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


def build_ops_server(
    config: NodeConfig,
    node: RaftNode,
    wal: SegmentedWal,
    *,
    auth: Authenticator | None = None,
    tls: Callable[[], ssl.SSLContext] | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> OpsServer:
    """``auth`` None (``--insecure``) asks nobody for credentials; ``/readyz?verbose``
    says so, and says when the ops port itself is plaintext (``tls.ops = false``).
    ``stopping`` turns true when a graceful stop begins: from then on ``/readyz`` fails
    (check ``shutdown``), so a load balancer stops sending brokers here before the
    leadership hand-off and before the client port closes."""
    livez, readyz = _health_checks(node, wal)

    def shutdown() -> tuple[bool, str]:
        return (False, "shutting down") if stopping() else (True, "serving")

    readyz["shutdown"] = shutdown
    secured = auth is not None

    def security() -> tuple[bool, str]:
        if secured and tls is None:
            return True, "TLS and authentication on; the ops port is plaintext (tls.ops = false)"
        if secured:
            return True, "TLS and authentication on"
        return True, "INSECURE: plaintext links, no authentication (--insecure)"

    readyz["security"] = security
    get_routes, post_routes = _admin_routes(config, node)
    open_paths = frozenset(p.strip() for p in config.auth.ops_open_paths.split(",") if p.strip())
    return OpsServer(
        livez=livez,
        readyz=readyz,
        metrics=node.metrics.exposition,
        get_routes=get_routes,
        post_routes=post_routes,
        auth=auth,
        open_paths=open_paths,
        tls=tls,
    )


Check = Callable[[], tuple[bool, str]]
Route = Callable[[Query], Awaitable[Response]]


def _health_checks(node: RaftNode, wal: SegmentedWal) -> tuple[dict[str, Check], dict[str, Check]]:
    """/livez is local only (never depends on peers); /readyz needs a leader, voter or
    observer membership (docs/architecture.md, "Observers") and applied close to the
    commit index this node knows from the leader."""

    def loop_alive() -> tuple[bool, str]:
        return True, "event loop answers"

    def storage_writable() -> tuple[bool, str]:
        failed = wal.core.failed
        return failed is None, "WAL writable" if failed is None else f"WAL failed: {failed!r}"

    def known_leader() -> tuple[bool, str]:
        leader = node.core.leader_id
        return leader is not None, f"leader is node {leader}" if leader else "no leader known"

    def voter() -> tuple[bool, str]:
        conf = node.core.conf
        if node.node_id in conf.voters:
            return True, "voter"
        if node.node_id in conf.observers:
            return True, "observer: a permanent non-voting member serving brokers"
        if node.node_id in conf.learners:
            return False, "learner: not a voter until promoted"
        return False, "not a member: asking to join (docs/architecture.md, Membership)"

    def applied_lag() -> tuple[bool, str]:
        lag = node.core.commit_index - node.applied_index
        return (
            lag <= APPLIED_LAG_READY_MAX,
            f"applied {node.applied_index}, commit {node.core.commit_index}",
        )

    livez: dict[str, Check] = {"loop": loop_alive, "storage": storage_writable}
    readyz: dict[str, Check] = {
        "leader": known_leader,
        "voter": voter,
        "applied_lag": applied_lag,
    }
    return livez, readyz


def _admin_routes(config: NodeConfig, node: RaftNode) -> tuple[dict[str, Route], dict[str, Route]]:
    async def status(query: Query) -> Response:
        payload = asdict(node.status())
        payload["match_index"] = {str(k): v for k, v in payload["match_index"].items()}
        payload["cluster_id"] = config.cluster_id
        payload["peer_address"] = config.cluster.advertise_peer or str(config.listen.peer)
        now = trio.current_time()
        payload["heard_ms_ago"] = {
            str(peer): round((now - at) * 1000) for peer, at in sorted(node.heard_from_s.items())
        }
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

    def membership(kind: ConfChangeKind) -> Route:
        async def route(query: Query) -> Response:
            try:
                member = _int_param(query, "id")
                address = query.get("address", [""])[0]
                if kind is ConfChangeKind.PROMOTE and member in node.core.conf.observers:
                    return _json(
                        409,
                        {
                            "error": f"node {member} is an observer: observers are never"
                            " promoted (to make it a voter: felix member remove it, restart"
                            " it with cluster.role = voter and an empty data dir)",
                            "refused": "observer",
                        },
                    )
                if kind is ConfChangeKind.REMOVE and node.core.role is Role.LEADER:
                    heard = node.heard_recently(config.raft.election_timeout_s)
                    refusal = removal_refusal(node.core.conf, member, node.node_id, heard)
                    if refusal is not None:
                        return _json(409, {"error": refusal, "refused": "quorum"})
                index = await node.change_membership(kind, member, address=address)
            except (NodeError, ValueError) as exc:
                return _error(exc)
            return _json(
                200,
                {
                    "index": index,
                    "voters": node.core.conf.voters,
                    "learners": node.core.conf.learners,
                    "observers": node.core.conf.observers,
                },
            )

        return route

    get_routes: dict[str, Route] = {"/v1/status": status}
    post_routes: dict[str, Route] = {
        "/v1/transfer-leader": transfer,
        "/v1/members/add": membership(ConfChangeKind.ADD_LEARNER),
        "/v1/members/promote": membership(ConfChangeKind.PROMOTE),
        "/v1/members/remove": membership(ConfChangeKind.REMOVE),
    }
    return get_routes, post_routes
