"""Observers on real `felix serve` processes (docs/architecture.md, "Observers").

Three voters and two observers (``ProcessCluster(observers=2)``, ids 101 and 102) that
join through the membership path.  Brokers that talk only to an observer see every
version in order (one snapshot at start, never a resync, the final records and digest
those of a linearizable read) across a ``kill -9`` of the voters' leader and across a
SIGTERM and restart of the observer they watch; a writer that talks only to an observer
has its writes forwarded to the leader and acknowledged; a registered broker's health
reports reach the leader through an observer; ``felix status`` lists both observers.
Without pods: promoting an observer is refused, one restarted with an empty data dir
is an observer again with every record, and ``felix member remove`` takes it out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
import trio

from felix.broker import MetadataView
from felix.proto.client_messages import WriteRequest, WriteResult
from felix.testing.processes import ProcessCluster, ServeProcess
from tests.broker.test_client import all_up
from tests.broker.test_processes_client import (
    Monotonic,
    Writer,
    all_at,
    client,
    linearizable_view,
)
from tests.server.test_processes_recover import wait_for

pytestmark = pytest.mark.slow

OBSERVERS = (101, 102)
REGISTERED = (10, 11)
Records = dict[tuple[str, str], Any]


def _cluster(root: Path, *, pods: bool, observers: int) -> Iterator[ProcessCluster]:
    cluster = ProcessCluster(root, size=3, pods=pods, observers=observers)
    for node in cluster.observers:
        node.args += ["--set", "cluster.join_interval_ms=200"]
    try:
        cluster.start_all()
        yield cluster
    finally:
        cluster.stop_all()  # every process, by PID
        _print_log_tails(cluster)


def _print_log_tails(cluster: ProcessCluster, lines: int = 40) -> None:
    """Leader changes, warnings and errors of every node: pytest shows them only when
    the test failed (the logs themselves go with the temporary directory)."""
    for node in cluster.all_nodes():
        if not node.log_path.exists():
            continue
        kept = [
            line
            for line in node.log_path.read_text(errors="replace").splitlines()
            if "leader is now" in line or "WARN" in line or "ERROR" in line
        ]
        print(f"--- node {node.node_id} ({node.log_path.name})")
        print("\n".join(kept[-lines:]))


@pytest.fixture
def pods(tmp_path: Path) -> Iterator[ProcessCluster]:
    yield from _cluster(tmp_path, pods=True, observers=2)


@pytest.fixture
def plain(tmp_path: Path) -> Iterator[ProcessCluster]:
    yield from _cluster(tmp_path, pods=False, observers=1)


def ready(node: ServeProcess) -> bool:
    try:
        return node.get_text("/readyz", timeout_s=1.0)[0] == 200
    except OSError:
        return False


def observers_joined(cluster: ProcessCluster, expected: list[int]) -> None:
    def joined() -> bool:
        status = cluster.status(cluster.wait_for_leader()) or {}
        return sorted(status.get("observers", [])) == expected

    wait_for(f"observers {expected} added", joined, 30.0)
    for node in cluster.observers:
        if node.node_id in expected:
            wait_for(f"observer {node.node_id} ready", lambda n=node: ready(n), 30.0)


def felix_cli(cluster: ProcessCluster, *args: str) -> subprocess.CompletedProcess[str]:
    """An admin command, as an operator types it, against every running node."""
    running = [n for n in cluster.all_nodes() if n.proc is not None and n.proc.poll() is None]
    eps = ",".join(n.ops for n in running)
    env = {**os.environ, "FELIX_TOKEN": cluster.creds.token, "FELIX_CA": str(cluster.creds.ca)}
    command, *rest = args
    return subprocess.run(
        [sys.executable, "-m", "felix.cli", command, "--endpoints", eps, *rest],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _status_rows(stdout: str) -> dict[str, list[str]]:
    lines = stdout.strip().splitlines()
    return {line.split()[1]: line.split() for line in lines[1:]}


async def test_brokers_on_observers_see_every_version_across_failover_and_restart(
    pods: ProcessCluster,
) -> None:
    cluster = pods
    await trio.to_thread.run_sync(observers_joined, cluster, list(OBSERVERS))
    first, second = cluster.observers
    async with AsyncExitStack() as stack:
        # Each broker knows one observer only: whatever it sees came through it.
        views: list[MetadataView] = [
            await stack.enter_async_context(client([first.client_endpoint], 10, cluster)),
            await stack.enter_async_context(client([second.client_endpoint], 11, cluster)),
            await stack.enter_async_context(client([first.client_endpoint], None, cluster)),
        ]
        writer_view = await stack.enter_async_context(
            client([second.client_endpoint], None, cluster)
        )
        everyone = [*views, writer_view]
        # Health reports through an observer reach the leader's session tracker.
        with trio.fail_after(20):
            for view in views:
                await view.wait_until(lambda v=view: all_up(v, *REGISTERED))  # type: ignore[misc]
        monitors = [Monotonic(v) for v in everyone]
        async with trio.open_nursery() as nursery:
            for monitor in monitors:
                nursery.start_soon(monitor.run)
            writer = Writer(writer_view)  # every write is forwarded by observer 102
            nursery.start_soon(writer.run)
            await trio.to_thread.run_sync(wait_for, "15 writes", lambda: writer.acked >= 15)

            killed = await trio.to_thread.run_sync(cluster.wait_for_leader)
            await trio.to_thread.run_sync(cluster.nodes[killed].kill9)
            at_kill = writer.acked
            await trio.to_thread.run_sync(
                wait_for, "15 writes after the kill", lambda: writer.acked >= at_kill + 15, 30.0
            )
            await trio.to_thread.run_sync(cluster.nodes[killed].start)

            first.stop()  # SIGTERM: brokers 10 and the watcher lose their only endpoint
            at_stop = writer.acked
            await trio.to_thread.run_sync(
                wait_for, "writes while 101 is down", lambda: writer.acked >= at_stop + 5
            )
            first.start()
            await trio.to_thread.run_sync(observers_joined, cluster, list(OBSERVERS))
            at_start = writer.acked
            await trio.to_thread.run_sync(
                wait_for, "writes after 101 is back", lambda: writer.acked >= at_start + 10
            )
            await writer.stop()

            version, digest, records = await linearizable_view(cluster)
            assert version >= writer.versions[-1]
            await all_at(everyone, version, timeout_s=30)
            for view, monitor in zip(everyone, monitors, strict=True):
                stats = view.stats
                assert view.cache.records == records, view.node_id
                assert view.cache.digest_bytes == digest
                assert stats.snapshots == 1, f"{view.node_id}: second snapshot"
                assert stats.resyncs == 0 and stats.resync_reasons == {}, stats.resync_reasons
                assert stats.digest_mismatches == 0
                assert monitor.forward, monitor.seen
            for view in (views[0], views[2]):  # on 101: resumed on it after its restart
                assert view.stats.reconnects >= 1
                assert view.stats.endpoint == first.client_endpoint
            assert writer.acked >= 45
            assert writer.versions == sorted(set(writer.versions))
            nursery.cancel_scope.cancel()

    status = await trio.to_thread.run_sync(felix_cli, cluster, "status")
    assert status.returncode == 0, status.stderr
    rows = _status_rows(status.stdout)
    assert "OBSERVERS" in status.stdout.splitlines()[0]
    for n in OBSERVERS:
        assert rows[str(n)][2] == "observer", status.stdout
    leader_row = next(r for r in rows.values() if r[2] == "leader")
    assert sorted(leader_row[-1].split(",")) == ["101", "102"], status.stdout  # join order
    assert leader_row[-2] == "-", status.stdout  # no learners waiting for promotion
    for n in (1, 2, 3):
        assert rows[str(n)][2] in ("leader", "follower"), status.stdout


async def test_observer_without_pods_forwards_writes_refuses_promotion_and_leaves(
    plain: ProcessCluster,
) -> None:
    cluster = plain
    await trio.to_thread.run_sync(observers_joined, cluster, [101])
    (observer,) = cluster.observers
    with trio.fail_after(20):
        conn = await cluster.creds.open(observer.client_port, host=observer.host)
        try:
            await conn.send(WriteRequest(1, "set_tenant", {"name": "t", "display_name": "v"}, None))
            reply = await conn.receive()
        finally:
            await conn.aclose()
    assert isinstance(reply, WriteResult), reply
    await trio.to_thread.run_sync(cluster.wait_caught_up, 101, reply.version)
    assert await trio.to_thread.run_sync(cluster.local_items, 101, ["t"]) == {"t": "v"}

    promote = await trio.to_thread.run_sync(felix_cli, cluster, "member", "promote", "101")
    assert promote.returncode == 1 and "is an observer" in promote.stderr, promote.stderr
    leader = cluster.status(cluster.wait_for_leader()) or {}
    assert leader["observers"] == [101] and 101 not in leader["voters"]

    # A PVC-less restart: the observer comes back with an empty data dir, asks to join
    # again and is an observer with every record once more.
    observer.stop()
    shutil.rmtree(observer.data_dir)
    observer.start()
    last = await trio.to_thread.run_sync(cluster.put, "u", "w")
    await trio.to_thread.run_sync(observers_joined, cluster, [101])
    await trio.to_thread.run_sync(cluster.wait_caught_up, 101, last)
    items = await trio.to_thread.run_sync(cluster.local_items, 101, ["t", "u"])
    assert items == {"t": "v", "u": "w"}
    assert (cluster.status(101) or {}).get("role") == "observer"

    remove = await trio.to_thread.run_sync(felix_cli, cluster, "member", "remove", "101")
    assert remove.returncode == 0, remove.stderr
    observer.stop()
    leader = cluster.status(cluster.wait_for_leader()) or {}
    assert leader["observers"] == [] and sorted(leader["voters"]) == [1, 2, 3]
