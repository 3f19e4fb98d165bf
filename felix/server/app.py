"""One node, wired: config -> WAL -> Raft driver + TCP transport + ops/admin HTTP server.

`run_node` owns one nursery for everything the node runs.  Shutdown is graceful and
bounded: on request, ``/readyz`` fails at once (a Service stops routing brokers here),
then a leader hands leadership to its most caught-up follower (so the cluster does not
wait out an election timeout), then the requests in flight get
their answers (writes that waited out the hand-off are forwarded to the new leader; new
ones are answered ``not_leader`` naming it), then every task is cancelled (connections
close), and the WAL is closed under a shielded, time-bounded scope.
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import trio

from felix.config import NodeConfig
from felix.proto.raft_messages import ConfState
from felix.raft.membership import with_addresses
from felix.raft.types import BootState, RaftConfig
from felix.server.admin import build_ops_server, hand_off_leadership
from felix.server.autopilot import Autopilot, AutopilotSettings
from felix.server.backups import BackupScheduler
from felix.server.bootstrap import must_probe, probe_cluster
from felix.server.datadir import (
    DataDirLock,
    RecoveryRecord,
    boot_membership,
    fenced_peers,
    read_recovery_record,
    without,
)
from felix.server.graph import MetadataParts, MetadataServices
from felix.server.metadata_sm import metadata_outcome
from felix.server.metrics import NodeMetrics
from felix.server.raft_node import NodeSettings, RaftNode
from felix.server.security import NodeSecurity
from felix.server.watch_hub import HubLimits
from felix.server.ws_server import ServeLimits
from felix.storage.cluster_marker import claim_data_dir
from felix.storage.segmented_wal import SegmentedWal
from felix.transport.base import Deliver, PeerTransport
from felix.transport.tcp import PeerAddress, PeerTls, TcpTransport, TcpTransportConfig

log = logging.getLogger("felix.app")

SHUTDOWN_GRACE_S = 5.0


@dataclass
class NodeHandle:
    """What a running node exposes to its supervisor (`felix serve`, `felix dev`)."""

    config: NodeConfig
    node: RaftNode
    ops_port: int
    security: NodeSecurity
    stop_requested: trio.Event = field(default_factory=trio.Event)
    hand_off: bool = True
    ops_tls: bool = False  # the ops port serves HTTPS

    def reload(self) -> None:
        """SIGHUP: reread certificates and the bootstrap token; what fails to load is
        logged and the material in use stays."""
        problems = self.security.reload()
        for problem in problems:
            log.error(
                "node %d: reload kept the old TLS/auth material: %s", self.config.node_id, problem
            )
        if not problems:
            log.info("node %d: TLS and auth material reloaded", self.config.node_id)

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
        promote_lag_entries_max=config.raft.promote_lag_entries_max,
    )


def boot_conf(config: NodeConfig) -> ConfState:
    """The configuration a node boots with when its data dir holds none
    (docs/architecture.md, "Membership"): the initial members as voters if this node is
    one of them; nothing if it is not — it asks to join and learns its role from the
    first CONFIG entry or snapshot it receives.  Without ``cluster.initial_members``,
    {node_id} and its peers (the legacy static setup).  An observer (``cluster.role``)
    always boots with nothing: it is never an initial member (docs/architecture.md,
    "Observers"), also not of the static setup."""
    if config.cluster.role == "observer":
        return ConfState((), ())
    initial = config.cluster.initial_members or tuple(sorted({config.node_id, *config.peers}))
    if config.node_id not in initial:
        return ConfState((), ())
    addresses = {m: str(config.peers[m]) for m in initial if m in config.peers}
    addresses[config.node_id] = config.cluster.advertise_peer
    return with_addresses(ConfState(tuple(sorted(initial)), ()), addresses)


def node_settings_for(config: NodeConfig) -> NodeSettings:
    return NodeSettings(
        tick_s=config.raft.tick_ms / 1000,
        inputs_queue_max=config.limits.inputs_queue_max,
        proposals_pending_max=config.limits.proposals_pending_max,
        proposal_timeout_s=config.limits.proposal_timeout_ms / 1000,
        snapshot_entries=config.snapshot.entries,
        snapshot_bytes=config.snapshot.bytes,
    )


def autopilot_settings_for(config: NodeConfig) -> AutopilotSettings:
    cluster = config.cluster
    return AutopilotSettings(
        enabled=cluster.autopilot,
        join_interval_s=cluster.join_interval_ms / 1000,
        promote_stable_s=cluster.promote_stable_ms / 1000,
        promote_lag_entries_max=config.raft.promote_lag_entries_max,
        voters_max=config.raft.voters_max,
        advertise_peer=cluster.advertise_peer,
        heard_within_s=config.raft.election_timeout_s,
        observer=cluster.role == "observer",
    )


def hub_limits_for(config: NodeConfig) -> HubLimits:
    watch = config.watch
    return HubLimits(
        history_versions_max=watch.history_versions_max,
        history_bytes_max=watch.history_bytes_max,
        message_bytes_max=watch.message_bytes_max,
        progress_interval_s=watch.progress_interval_ms / 1000,
        subscriber_lag_versions_max=watch.subscriber_lag_versions_max,
        snapshot_cache_bytes_max=watch.snapshot_cache_bytes_max,
        snapshot_cache_ttl_s=watch.snapshot_cache_ttl_ms / 1000,
        snapshot_sends_max=watch.snapshot_sends_max,
    )


def serve_limits_for(config: NodeConfig) -> ServeLimits:
    return ServeLimits(keepalive_interval_s=config.watch.keepalive_interval_ms / 1000)


def tcp_transport_for(
    config: NodeConfig, tls: PeerTls | None = None, fenced: AbstractSet[int] = frozenset()
) -> Callable[[Deliver], PeerTransport]:
    """``fenced`` peers of the config are left out: not dialed, connections refused
    (a recovered node's old members, `felix.server.datadir`) until they are added back;
    or not asked (the bootstrap probe asks only the initial members)."""

    def transport(deliver: Deliver) -> PeerTransport:
        configured = without(config.peers, fenced)
        peers = {n: PeerAddress(e.host, e.port) for n, e in configured.items()}
        tcp_config = TcpTransportConfig(
            node_id=config.node_id,
            cluster_id=config.cluster_id,
            listen_host=config.listen.peer.host,
            listen_port=config.listen.peer.port,
            peers=peers,
            frame_bytes_max=config.limits.frame_bytes_max,
            send_queue_max=config.limits.peer_send_queue_max,
            tls=tls,
        )
        return TcpTransport(tcp_config, deliver, random.Random())

    return transport


async def run_node(
    config: NodeConfig,
    *,
    grace_s: float = SHUTDOWN_GRACE_S,
    task_status: trio.TaskStatus[NodeHandle] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Build the node's whole graph (docs/architecture.md, "Object graph"), then run it."""
    security = NodeSecurity.from_config(config)  # before anything opens: fail fast
    if security.insecure:
        log.warning(
            "node %d runs INSECURE (--insecure): plaintext peer and client links, no"
            " authentication; anyone who reaches its ports owns the cluster",
            config.node_id,
        )
    voters = boot_conf(config)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    lock = DataDirLock.acquire(config.data_dir)  # one process per data dir
    try:
        lock.write_pid()
        await _run_locked(config, security, voters, grace_s, task_status)
    finally:
        lock.release()


async def _run_locked(
    config: NodeConfig,
    security: NodeSecurity,
    voters: ConfState,
    grace_s: float,
    task_status: trio.TaskStatus[NodeHandle],
) -> None:
    claim_data_dir(str(config.data_dir), config.cluster_id)  # refuses another cluster's log
    record = read_recovery_record(config.data_dir)
    wal, boot = await SegmentedWal.open(
        str(config.data_dir), voters, snapshots_keep=config.snapshot.keep
    )
    try:
        fresh = boot.hard_state.term == 0 and boot.snapshot is None and not boot.entries
        if must_probe(config, fresh):
            not_initial = set(config.peers) - set(config.cluster.initial_members)
            transport_for = tcp_transport_for(config, security.peer_tls(), not_initial)
            probed = await probe_cluster(config, transport_for)
            if probed.cluster_exists:
                boot = dataclasses.replace(boot, conf=ConfState((), ()))
    except BaseException:
        with trio.CancelScope(shield=True), trio.move_on_after(grace_s * 0.4):
            await wal.aclose()
        raise
    fenced = _fenced_at_boot(config, record, boot)
    metrics = NodeMetrics(config.node_id)
    report = wal.core.boot_report  # damaged snapshot files were logged by the WAL
    metrics.snapshot_files_damaged.set(len(report.damaged))
    metrics.snapshot_boot_fallback.set(1 if report.fell_back else 0)
    parts = MetadataParts.build(hub_limits_for(config))
    node = RaftNode(
        raft_config_for(config),
        boot,
        wal,
        tcp_transport_for(config, security.peer_tls(), fenced),
        parts.state_machine,
        settings=node_settings_for(config),
        metrics=metrics,
        outcome_of=metadata_outcome,
    )
    auth = security.authenticator(parts.store)
    services = MetadataServices(
        node,
        parts,
        auth=auth,
        tls=security.client_tls(),
        serve_limits=serve_limits_for(config),
        cluster_id=config.cluster_id,
    )
    metrics.watch_stats(lambda: parts.hub)
    metrics.peer_link_stats(node.transport.link_versions)
    metrics.client_stats(lambda: services.api)
    metrics.rebalance_stats(lambda: services.rebalancer)
    backups = BackupScheduler(node, parts.store, config.backup, config.cluster_id)
    metrics.backup_stats(lambda: backups.stats)
    ops_tls = security.ops_tls(config.tls.ops)
    if auth is not None and ops_tls is None:
        log.warning(
            "node %d: the ops port is plaintext (tls.ops = false): bearer tokens sent to"
            " its admin routes travel in the clear",
            config.node_id,
        )
    stop_requested = trio.Event()  # set by request_stop: /readyz fails from then on
    ops = build_ops_server(
        config, node, wal, auth=auth, tls=ops_tls, stopping=stop_requested.is_set
    )
    autopilot = Autopilot(node, autopilot_settings_for(config))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            ops_port = await nursery.start(ops.run, config.listen.ops.host, config.listen.ops.port)
            await nursery.start(services.run, config.listen.client.host, config.listen.client.port)
            nursery.start_soon(backups.run)
            nursery.start_soon(autopilot.run)
            handle = NodeHandle(
                config, node, ops_port, security, stop_requested, ops_tls=ops_tls is not None
            )
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
            log.info(
                "node %d: stopping: /readyz fails from now on (%s)",
                config.node_id,
                "leadership hand-off, then the ports close" if handle.hand_off else "ports close",
            )
            if handle.hand_off:
                with trio.move_on_after(grace_s * 0.5):
                    await hand_off_leadership(node, "stopping; ")
            # Requests that waited out the hand-off are being forwarded to the new
            # leader: let them have their answers before the connections close.
            with trio.move_on_after(grace_s * 0.1):
                await services.forwarder.drain()
            nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(grace_s * 0.4):
            await wal.aclose()
        log.info("node %d stopped", config.node_id)


def _fenced_at_boot(config: NodeConfig, record: RecoveryRecord | None, boot: BootState) -> set[int]:
    """After ``felix recover``, the membership on disk wins over the static peers: the
    old members stay out until added back (`felix.server.datadir`)."""
    members = boot_membership(boot)
    fenced = fenced_peers(record, members, config.peers)
    if record is not None:
        log.warning(
            "node %d: recovered by felix recover --force-new-cluster (index %d, term %d);"
            " voters %s, learners %s; fenced until added back (felix member add): %s",
            config.node_id,
            record.index,
            record.term,
            ",".join(map(str, members.voters)),
            ",".join(map(str, members.learners)) or "-",
            ",".join(map(str, sorted(fenced))) or "none",
        )
    return fenced
