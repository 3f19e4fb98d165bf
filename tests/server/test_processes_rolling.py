"""Real processes that behave like StatefulSet pods (felix-0..2: own address, fixed ports,
own data dir) are restarted one by one, highest ordinal first, as the StatefulSet
controller rolls a change out: SIGTERM, wait for the exit, start again, wait for
``/readyz`` before the next.  Meanwhile a writer keeps writing and 50 brokers watch.

Nothing may be lost: every acknowledged write is on every node; every broker applied
every version (every Raft index) in order from the one snapshot it started with (no
second snapshot, no resync), as the node's own history has them; and leadership moved
only by hand-offs (thesis §3.10), never by an election timeout.  Nodes take snapshots
and compact their logs meanwhile, so a restarted pod boots from a snapshot.  The
write-unavailable window of each restart is printed, not asserted.

The rolling upgrade is the same roll with the restarted nodes speaking the next protocol
version (``FELIX_PROTOCOL_NEXT=1``); it runs once `felix.proto.versions` exists.
"""

from __future__ import annotations

import importlib
import itertools
import random
import statistics
import time
from collections.abc import Iterator, Mapping
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from felix.broker import MetadataView, open_metadata_client
from felix.config import RaftTimings
from felix.testing.processes import ProcessCluster, ServeProcess, local_snapshot
from felix.testing.rolling import (
    AckedWriter,
    RecordingCache,
    Restart,
    broker_summary,
    elections,
    node_history,
    roll,
)

pytestmark = pytest.mark.slow

BROKER_IDS = range(101, 151)  # 50 registered brokers
WRITES_BEFORE = 100  # acknowledged before the roll starts...
WRITES_AFTER = 100  # ...and after it ends
SNAPSHOT_ENTRIES = 100  # several snapshots (and log compactions) per node during the roll


def next_protocol_env() -> dict[str, str] | None:
    """The environment that makes a node speak the next protocol version, if this build
    has one (`felix.proto.versions`), else None."""
    try:
        versions = importlib.import_module("felix.proto.versions")
    except ImportError:
        return None
    env = {versions.NEXT_ENV: "1"}
    if versions.supported_versions(env).max <= versions.PROTOCOL_VERSION_MAX:
        return None
    return env


NEXT_VERSION = 2  # the synthetic next protocol version (felix/proto/versions.py)


def link_versions(node: ServeProcess) -> dict[str, float]:
    _, text = node.get_text("/metrics")
    return {
        sample.labels["peer"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "felix_peer_protocol_version"
        for sample in family.samples
    }


def wait_for_links_at(cluster: ProcessCluster, version: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        seen = {n: link_versions(node) for n, node in cluster.nodes.items()}
        peers = len(cluster.nodes) - 1
        if all(len(v) == peers and set(v.values()) == {version} for v in seen.values()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"peer links not all at version {version}: {seen}")
        time.sleep(0.05)


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[ProcessCluster]:
    # Production timings (election timeout 400-800 ms), not the harness's fast ones: at
    # 160-320 ms a starved CPU alone can cost the leader its quorum while one of the
    # three is down, and that election would not be the roll's doing.
    cluster = ProcessCluster(tmp_path, pods=True, tick_ms=RaftTimings().tick_ms)
    for node in cluster.nodes.values():  # a long-lived cluster: pods boot from snapshots
        node.args += ["--set", f"snapshot.entries={SNAPSHOT_ENTRIES}"]
    try:
        cluster.start_all()
        for node in cluster.nodes.values():
            node.wait_ready()
        yield cluster
    finally:
        cluster.stop_all()  # every process, by PID


async def wait_for_acks(writer: AckedWriter, count: int, timeout_s: float = 30.0) -> None:
    with trio.fail_after(timeout_s):
        while len(writer.acked) < count:
            await trio.sleep(0.02)


async def rolling_restart(cluster: ProcessCluster, extra_env: Mapping[str, str] | None) -> None:
    nodes = [cluster.nodes[n] for n in sorted(cluster.nodes, reverse=True)]
    endpoints = [node.client_endpoint for node in nodes]
    hosts = {node.host for node in nodes}
    if len(hosts) == 1:  # no 127.x.0.11-13 with ports 7001/8001/9001 free here
        print("\nno pod addresses: every node on 127.0.0.1 with free ports of its own")
    baseline = {n: elections(node) for n, node in cluster.nodes.items()}
    assert sum(c["timeout"] for c in baseline.values()) >= 1  # the first leader's election
    creds = await cluster.broker_credentials(list(BROKER_IDS))
    caches = {b: RecordingCache(b) for b in BROKER_IDS}
    # The writer starts on felix-2, the first pod restarted, and moves on in roll order:
    # every restart takes its node away from under it.
    writer = AckedWriter(nodes, cluster.creds)
    stop = trio.Event()
    async with AsyncExitStack() as stack:
        views: dict[int, MetadataView] = {}
        for b in BROKER_IDS:
            views[b] = await stack.enter_async_context(
                open_metadata_client(
                    endpoints, node_id=b, address=f"10.30.0.{b}:9092", rack=f"r{b % 3}",
                    token=creds[b].token, ssl_context=creds[b].ssl_context(),
                    cache=caches[b], rng=random.Random(b), digest_check_s=None,
                    report_down_on_exit=False,
                )  # the library's own reconnect back-off, as a real broker has it
            )  # fmt: skip
        spread = {view.endpoint for view in views.values()}
        assert spread == set(endpoints), spread  # brokers on every node
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run, stop)
            await wait_for_acks(writer, WRITES_BEFORE)
            restarts = await trio.to_thread.run_sync(lambda: roll(cluster, extra_env=extra_env))
            acked_at_end = len(writer.acked)
            await wait_for_acks(writer, acked_at_end + WRITES_AFTER)
            stop.set()
        final = max(writer.acked.values())
        for view in views.values():  # caught up (the registrations and writes: all)
            with trio.fail_after(30):
                await view.wait_version(final)
        stats = {b: views[b].stats for b in BROKER_IDS}

    # Every acknowledged write is on every node.
    for node_id, node in cluster.nodes.items():
        await trio.to_thread.run_sync(cluster.wait_caught_up, node_id, final)
        names = {c.key for c in await local_snapshot(node, cluster.creds) if c.kind == "tenant"}
        missing = set(writer.acked) - names
        assert not missing, f"{node.name}: {len(missing)} acknowledged writes missing"
    unknown_applied = sum(key in names for key in writer.unknown)

    report(writer, restarts, caches, stats, unknown_applied)
    if extra_env is not None:  # every pod now runs the next version: so do their links
        await trio.to_thread.run_sync(wait_for_links_at, cluster, NEXT_VERSION)

    # Every broker: one snapshot, no resync, every version in order after it.
    start = min(c.snapshot_versions[0] for c in caches.values())
    top = max(c.versions[-1] if c.versions else 0 for c in caches.values())
    # A node's history starts at the snapshot it booted from (at most its newest).
    status = cluster.status(1)
    assert status is not None and status["snapshot_index"] > 0  # compacted: it has one
    since = max(start, status["snapshot_index"])
    history = await node_history(cluster.nodes[1], cluster.creds, since, top)
    assert history == list(range(since + 1, top + 1))  # every Raft index is a version
    # (Entries after the writer stopped -- heartbeats -- can move node 1's snapshot past
    # every acknowledged write, so acked_since may be empty; the records check above
    # covers every acknowledged write on every node either way.)
    assert writer.acked
    acked_since = {v for v in writer.acked.values() if v > since}
    assert acked_since <= set(history), "an acknowledged write has no delta"
    for b, cache in caches.items():
        assert cache.snapshot_versions == cache.snapshot_versions[:1], (b, cache.snapshot_versions)
        assert stats[b].snapshots == 1, (b, stats[b].snapshots)
        assert stats[b].resyncs == 0, (b, stats[b].resync_reasons)
        assert cache.chain_problems() == [], (b, cache.chain_problems()[:5])
        first = cache.snapshot_versions[0]
        seen = cache.versions
        # Every Raft index is a version: a NOOP or CONFIG entry (a new leader's first,
        # one per hand-off) is an empty delta (felix/metadata/state.py, apply_noop).
        assert seen == list(range(first + 1, seen[-1] + 1)), b
        recent = [v for v in seen if v > since]
        assert recent == [v for v in history if first < v <= seen[-1]], b

    # Leadership moved only by hand-offs: no election followed a timeout.  Counters
    # start at zero in every process: the old one's were read just before its SIGTERM.
    after = {n: elections(node) for n, node in cluster.nodes.items()}
    by_process = {
        f"{r.name} old": {k: v - baseline[r.node_id][k] for k, v in r.elections_before.items()}
        for r in restarts
    } | {f"{cluster.nodes[n].name} new": counts for n, counts in after.items()}
    print(f"  elections during the roll, by process: {by_process}")
    timeouts = {name: c["timeout"] for name, c in by_process.items() if c["timeout"]}
    assert not timeouts, f"elections after a timeout: {timeouts}"
    transfers = sum(c["transfer"] for c in by_process.values())
    assert transfers >= sum(r.was_leader for r in restarts) >= 1, by_process
    assert all(r.exit_code == 0 for r in restarts), [(r.name, r.exit_code) for r in restarts]


def report(
    writer: AckedWriter,
    restarts: list[Restart],
    caches: Mapping[int, RecordingCache],
    stats: Mapping[int, object],
    unknown_applied: int,
) -> None:
    lines = ["", "rolling restart (highest ordinal first):"]
    first_sigterm = restarts[0].sigterm_at
    steady = [b - a for a, b in itertools.pairwise(writer.acked_at) if b < first_sigterm]
    lines.append(
        f"  steady state before the roll: {len(steady) + 1} acks, gap between acks median"
        f" {statistics.median(steady) * 1000:.1f} ms, longest {max(steady) * 1000:.0f} ms"
    )
    gaps = []
    for r in restarts:
        gap = writer.max_gap_s(r.sigterm_at, r.ready_at)
        gaps.append(gap)
        lines.append(
            f"  {r.name} (node {r.node_id}{', leader' if r.was_leader else ''}):"
            f" SIGTERM->exit {r.stop_s:.2f} s, start->/livez {r.boot_s:.2f} s,"
            f" /livez->/readyz {r.live_to_ready_s:.2f} s,"
            f" longest wait for a write ack {gap * 1000:.0f} ms,"
            f" acks meanwhile {writer.acked_between(r.sigterm_at, r.ready_at)};"
            f" writer: {link_story(writer, r.sigterm_at)}"
        )
    lines.append(
        f"  writes: {len(writer.acked)} acknowledged, refused {dict(writer.refused)},"
        f" unknown outcome {len(writer.unknown)} (applied: {unknown_applied}),"
        f" node switches {writer.switches};"
        f" median of the restarts' longest gaps {statistics.median(gaps) * 1000:.0f} ms"
    )
    lines.append("  " + broker_summary(caches.values(), stats.values()))
    print("\n".join(lines))


def link_story(writer: AckedWriter, sigterm_at: float) -> str:
    """From the SIGTERM: the writer's link lost (broken, or left after a refusal), a new
    one open, the first ack on it."""
    lost = writer.first_link_event("lost", sigterm_at)
    if lost is None:
        return "kept its link"
    opened = writer.first_link_event("open", lost)
    ack = writer.first_ack(opened) if opened is not None else None
    ms = [f"{(t - sigterm_at) * 1000:.0f}" if t is not None else "-" for t in (lost, opened, ack)]
    return f"link lost +{ms[0]} ms, new link +{ms[1]} ms, first ack +{ms[2]} ms"


async def test_rolling_restart_loses_nothing(pods: ProcessCluster) -> None:
    await rolling_restart(pods, None)


@pytest.mark.skipif(
    next_protocol_env() is None,
    reason="no next protocol version in this build (felix.proto.versions, FELIX_PROTOCOL_NEXT)",
)
async def test_rolling_upgrade_to_the_next_protocol_loses_nothing(pods: ProcessCluster) -> None:
    await rolling_restart(pods, next_protocol_env())
