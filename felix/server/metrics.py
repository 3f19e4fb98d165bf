"""Prometheus metrics of one node, in a registry of its own.

A registry per node (not the global default) lets ``felix dev`` run three nodes in one
process and lets tests read one node's numbers.  Buckets start at 50 µs: fsync here takes
0.1-0.2 ms and a commit about a millisecond, so the default 5 ms-10 s buckets would put
everything in the first one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

FAST_BUCKETS_S: Final = tuple(0.00005 * 2**k for k in range(18))  # 50 µs .. 6.5 s


class NodeMetrics:
    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.term = Gauge("felix_raft_term", "Current Raft term", registry=r)
        self.role = Gauge("felix_raft_role", "1 for this node's current role", ["role"], registry=r)
        self.is_leader = Gauge("felix_raft_is_leader", "1 if this node leads", registry=r)
        self.has_leader = Gauge("felix_raft_has_leader", "1 if a leader is known", registry=r)
        self.leader_changes = Counter(
            "felix_raft_leader_changes_seen", "Leader changes this node saw", registry=r
        )
        self.elections = Counter(
            "felix_raft_elections",
            "Elections this node started (term bumped), by cause: an election timeout,"
            " or a leader's TimeoutNow (a leadership transfer)",
            ["cause"],
            registry=r,
        )
        for cause in ("timeout", "transfer"):
            self.elections.labels(cause)  # both series exist from the start, at 0
        self.pre_votes = Counter(
            "felix_raft_pre_vote_rounds",
            "Pre-vote rounds this node started after an election timeout (may change nothing)",
            registry=r,
        )
        self.commit_index = Gauge("felix_raft_commit_index", "Commit index", registry=r)
        self.applied_index = Gauge("felix_raft_applied_index", "Applied index", registry=r)
        self.proposals_committed = Counter(
            "felix_raft_proposals_committed", "Proposals committed", registry=r
        )
        self.proposals_applied = Counter(
            "felix_raft_proposals_applied", "Entries applied to the state machine", registry=r
        )
        self.proposals_failed = Counter(
            "felix_raft_proposals_failed", "Proposals that failed", ["reason"], registry=r
        )
        self.proposals_pending = Gauge(
            "felix_raft_proposals_pending", "Proposals waiting to commit", registry=r
        )
        self.commit_latency = Histogram(
            "felix_raft_proposal_duration_seconds",
            "Proposal to applied, on the node that proposed",
            buckets=FAST_BUCKETS_S,
            registry=r,
        )
        self.fsync_duration = Histogram(
            "felix_wal_fsync_duration_seconds",
            "One WAL batch write + fsync",
            buckets=FAST_BUCKETS_S,
            registry=r,
        )
        self.wal_write_bytes = Counter(
            "felix_wal_write_bytes", "Bytes written to the WAL", registry=r
        )
        self.peer_rtt = Histogram(
            "felix_peer_round_trip_time_seconds",
            "AppendEntries round trip to a peer",
            ["peer"],
            buckets=FAST_BUCKETS_S,
            registry=r,
        )
        self.peer_send_drops = Counter(
            "felix_peer_send_failures",
            "Messages dropped on a full peer queue",
            ["peer"],
            registry=r,
        )
        self.snapshot_bytes = Gauge("felix_snapshot_bytes", "Size of the last snapshot", registry=r)
        self.snapshot_duration = Histogram(
            "felix_snapshot_duration_seconds",
            "Taking and saving a snapshot",
            buckets=FAST_BUCKETS_S,
            registry=r,
        )
        self.snapshot_files_damaged = Gauge(
            "felix_snapshot_files_damaged",
            "Kept snapshot files that failed their checks at boot (left in place, not used)",
            registry=r,
        )
        self.snapshot_boot_fallback = Gauge(
            "felix_snapshot_boot_fallback",
            "1 if this node booted from an older snapshot (or the log alone) than its newest",
            registry=r,
        )
        self.inputs_queue_depth = Gauge(
            "felix_raft_inputs_queue_depth", "Inputs waiting for the Raft loop", registry=r
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def client_stats(self, read: Callable[[], Any]) -> None:
        """Export the client API's security counters, read at scrape time."""
        self.registry.register(_ClientCollector(read))

    def rebalance_stats(self, read: Callable[[], Any]) -> None:
        """Export the replica manager's gauges and counters (the leader's; followers'
        stay at their last values from when they led, or zero)."""
        self.registry.register(_RebalanceCollector(read))

    def backup_stats(self, read: Callable[[], Any]) -> None:
        """Export scheduled backups: written, failed, seconds since the last good one."""
        self.registry.register(_BackupCollector(read))

    def peer_link_stats(self, read: Callable[[], dict[int, int]]) -> None:
        """Export the protocol version each outbound peer link negotiated."""
        self.registry.register(_PeerLinkCollector(read))

    def watch_stats(self, read: Callable[[], Any]) -> None:
        """Export the watch hub's counters, read at scrape time (no per-delta cost)."""
        self.registry.register(_WatchCollector(read))


class _PeerLinkCollector(Collector):
    """``felix_peer_protocol_version{peer}``: what a rolling upgrade is at, per link."""

    def __init__(self, read: Callable[[], dict[int, int]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "felix_peer_protocol_version",
            "Protocol version of the live outbound link to each peer",
            labels=["peer"],
        )
        for peer, version in sorted(self._read().items()):
            family.add_metric([str(peer)], version)
        yield family


class _ClientCollector(Collector):
    """The client port's security counters: refusals by operation, revoked sessions
    closed, connections turned away before any credential (a flood)."""

    def __init__(self, read: Callable[[], Any]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        api = self._read()
        refused = CounterMetricFamily(
            "felix_client_unauthorized", "Client requests refused", labels=["operation"]
        )
        for operation, count in sorted(api.auth_stats.refused.items()):
            refused.add_metric([operation], count)
        yield refused
        serve = api.serve_stats
        for name, help_text, value in (
            ("felix_client_sessions_revoked", "Sessions closed: token revoked or expired",
             api.auth_stats.closed_revoked),
            ("felix_client_refused_busy", "Connections closed at once: over the bounds",
             serve.refused_busy),
            ("felix_client_tls_handshakes_failed", "Client TLS handshakes refused",
             serve.tls_handshakes_failed),
            ("felix_client_keepalive_closes", "Connections closed: a ping left unanswered",
             serve.keepalive_closes),
        ):  # fmt: skip
            yield CounterMetricFamily(name, help_text, value=value)
        yield GaugeMetricFamily(
            "felix_client_connections", "Open client connections", serve.connections
        )


class _WatchCollector(Collector):
    def __init__(self, read: Callable[[], Any]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        hub = self._read()
        stats = hub.stats
        yield GaugeMetricFamily("felix_watchers", "Brokers watching this node", hub.watchers)
        yield GaugeMetricFamily(
            "felix_watch_history_bytes", "Retained delta history", hub.history_bytes
        )
        yield GaugeMetricFamily(
            "felix_watch_held_bytes",
            "Net changes held for watchers whose socket is full (estimated bytes)",
            hub.held_bytes,
        )
        for name, help_text, value in (
            ("felix_watch_deltas_published", "Deltas published", stats.deltas_published),
            ("felix_watch_frames_sent", "Delta messages sent to watchers", stats.frames_sent),
            (
                "felix_watch_coalesced",
                "Coalesced deliveries to slow watchers: one net delta each",
                stats.coalesced,
            ),
            (
                "felix_watch_coalesced_versions",
                "Versions those coalesced deliveries covered",
                stats.coalesced_versions,
            ),
            ("felix_watch_resyncs", "Resyncs sent", stats.resyncs),
            ("felix_watch_slow_disconnects", "Slow watchers cut off", stats.slow_disconnects),
            ("felix_watch_snapshots_sent", "Snapshots sent to watchers", stats.snapshots_sent),
        ):
            yield CounterMetricFamily(name, help_text, value=value)
        snap = hub.snapshots.stats  # shared by watch starts and GetSnapshot
        for name, help_text, value in (
            ("felix_snapshot_encodes", "Snapshots encoded (one per version, lineage and"
             " protocol encoding while cached)", snap.encodes),
            ("felix_snapshot_served", "Snapshots served to watch starts and GetSnapshot",
             snap.served),
        ):  # fmt: skip
            yield CounterMetricFamily(name, help_text, value=value)
        for name, help_text, value in (
            ("felix_snapshot_cache_bytes", "Encoded snapshot frames kept", snap.cache_bytes),
            ("felix_snapshot_sends_in_flight", "Snapshot sends running", snap.sends_in_flight),
            ("felix_snapshot_sends_waiting", "Snapshot sends queued for a slot",
             snap.sends_waiting),
        ):  # fmt: skip
            yield GaugeMetricFamily(name, help_text, value=value)


class _BackupCollector(Collector):
    """``felix_backup_age_seconds`` is -1 until this node wrote a backup (followers,
    or scheduled backups off): alert on it only on the leader."""

    def __init__(self, read: Callable[[], Any]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        stats = self._read()
        age = -1.0 if stats.last_ok_at is None else time.monotonic() - stats.last_ok_at
        yield GaugeMetricFamily(
            "felix_backup_age_seconds", "Seconds since this node's last good backup", value=age
        )
        yield CounterMetricFamily("felix_backups_written", "Backups written", value=stats.written)
        yield CounterMetricFamily("felix_backups_failed", "Backups that failed", value=stats.failed)


class _RebalanceCollector(Collector):
    def __init__(self, read: Callable[[], Any]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        stats = self._read().stats
        for name, help_text, value in (
            ("felix_shards_under_replicated", "Shards with fewer caught-up live replicas "
             "than their replication factor", stats.under_replicated),
            ("felix_shards_offline", "Shards without a leader", stats.offline),
            ("felix_reassignments_in_progress", "Shards being reassigned", stats.reassigning),
            ("felix_replica_skew", "Most minus fewest replicas over live brokers",
             stats.replica_skew),
            ("felix_leader_skew", "Most minus fewest leaderships over live brokers",
             stats.leader_skew),
            ("felix_planner_pass_seconds", "The last planner pass", stats.pass_seconds),
        ):  # fmt: skip
            yield GaugeMetricFamily(name, help_text, value=value)
        for name, help_text, value in (
            ("felix_planner_passes", "Planner passes run", stats.passes),
            ("felix_moves_proposed", "Replica moves proposed", stats.moves_proposed),
            ("felix_moves_completed", "Replica moves completed", stats.moves_completed),
            ("felix_moves_cancelled", "Replica moves cancelled", stats.moves_cancelled),
            ("felix_leader_moves_proposed", "Leader moves proposed", stats.leader_moves_proposed),
            ("felix_planner_commands_refused", "Planned commands refused at apply",
             stats.refused),
        ):  # fmt: skip
            yield CounterMetricFamily(name, help_text, value=value)
