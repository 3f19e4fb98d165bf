"""The broker library (`open_metadata_client`) against real `felix serve` processes.

* Six brokers (four registered, owning shards, and two read-only watchers), spread over
  the three nodes, while a writer keeps writing through the library's ``write`` and the
  Raft leader is killed with ``kill -9`` mid-stream: every broker ends with exactly the
  new leader's records and digest, having resumed from its version (one snapshot, no
  resync), its version never going backwards, and ownership consumers that saw every
  change exactly once.  The killed node is then restarted and everybody keeps up.
* A broker whose kept cache is older than the servers' retained history
  (``watch.history_versions_max``): it resyncs from one snapshot (reason ``history``) and
  its ownership events are only what changed while it was away.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from felix.broker import MetadataView, ShardRole, WriteError, open_metadata_client
from felix.broker.cache import ShardId
from felix.broker.client import endpoint_order, parse_endpoint
from felix.broker.connection import ConnectionClosed
from felix.proto.client_messages import ErrorCode, GetSnapshot, Record, SnapshotChunk
from felix.testing.processes import ProcessCluster
from tests.broker.harness import wait_for
from tests.broker.test_client import FAST, Owned, all_up

SHARDS = 8
REGISTERED = (10, 11, 12, 13)
FAILOVER_CODES = frozenset({ErrorCode.UNAVAILABLE, ErrorCode.NOT_LEADER, ErrorCode.TIMEOUT})

Records = dict[tuple[str, str], Any]


def _running(root: Path, *settings: str) -> Iterator[ProcessCluster]:
    procs = ProcessCluster(root)
    for node in procs.nodes.values():
        for setting in settings:
            node.args += ["--set", setting]
    try:
        procs.start_all()
        yield procs
    finally:
        procs.stop_all()  # every process, by PID, even if start_all failed half-way


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    yield from _running(tmp_path)


@pytest.fixture
def short_history_cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    yield from _running(tmp_path, "watch.history_versions_max=4")


def endpoints(cluster: ProcessCluster) -> list[str]:
    return [f"127.0.0.1:{node.client_port}" for node in cluster.nodes.values()]


def node_of(cluster: ProcessCluster, endpoint: str | None) -> int:
    return next(
        n for n, node in cluster.nodes.items() if endpoint == f"127.0.0.1:{node.client_port}"
    )


def aimed(eps: Sequence[str], target: str, node_id: int | None, seed: int) -> list[str]:
    """``eps`` in an order that makes a client with this ``node_id`` and ``Random(seed)``
    try ``target`` first, so the test puts brokers on every node (not by luck)."""
    for order in itertools.permutations(eps):
        parsed = [parse_endpoint(e) for e in order]
        if endpoint_order(parsed, node_id, random.Random(seed))[0] == parse_endpoint(target):
            return list(order)
    raise AssertionError(f"no order of {eps} starts at {target}")


@asynccontextmanager
async def client(
    eps: Sequence[str],
    node_id: int | None,
    cluster: ProcessCluster,
    *,
    first: str | None = None,
    **kwargs: Any,
) -> AsyncIterator[MetadataView]:
    seed = node_id or 0
    order = aimed(eps, first, node_id, seed) if first is not None else list(eps)
    creds = await cluster.credentials_for(node_id)  # a broker token for a broker's own id
    async with open_metadata_client(
        order,
        node_id=node_id,
        address=f"10.9.0.{node_id}:9092" if node_id is not None else None,
        rack=f"r{(node_id or 0) % 3}",
        rng=random.Random(seed),
        token=creds.token,
        ssl_context=creds.ssl_context(),
        **(FAST | kwargs),
    ) as view:
        yield view


async def linearizable_view(cluster: ProcessCluster) -> tuple[int, bytes, Records]:
    """A linearizable snapshot from whoever leads now (retried across leader changes)."""
    with trio.fail_after(20):
        while True:
            leader = cluster.nodes[await trio.to_thread.run_sync(cluster.wait_for_leader)]
            try:
                conn = await cluster.creds.open(leader.client_port, host=leader.host)
            except OSError:
                await trio.sleep(0.02)
                continue
            try:
                await conn.send(GetSnapshot(1, True))
                records: Records = {}
                while True:
                    chunk = await conn.receive()
                    if not isinstance(chunk, SnapshotChunk):
                        break  # an Error: not the leader any more
                    records.update({(c.kind, c.key): c.value for c in chunk.records})
                    if chunk.last:
                        return chunk.version, chunk.digest, records
            except ConnectionClosed:
                pass
            finally:
                await conn.aclose()
            await trio.sleep(0.02)


class Monotonic:
    """Records the view's version after every applied batch; it must never go back."""

    def __init__(self, view: MetadataView) -> None:
        self.view = view
        self.seen: list[int] = []

    def _check(self) -> bool:
        version = self.view.version or 0
        if not self.seen or self.seen[-1] != version:
            self.seen.append(version)
        return False  # never satisfied: keep watching

    async def run(self) -> None:
        await self.view.wait_until(self._check)

    @property
    def forward(self) -> bool:
        return self.seen == sorted(self.seen)


class Writer:
    """Sequential writes through the library's ``view.write`` (set_config with an
    increasing value, set_tenant); writes whose outcome a failover makes unknown are
    counted and the writer moves on."""

    def __init__(self, view: MetadataView) -> None:
        self.view = view
        self.acked = 0
        self.failed = 0
        self.versions: list[int] = []
        self.last_value = 0  # the last acknowledged streams_max
        self.stopping = False
        self.done = trio.Event()
        self._seq = itertools.count(1)

    async def run(self) -> None:
        try:
            while not self.stopping:
                i = next(self._seq)
                args: Record
                if i % 2:
                    command, args = "set_config", {"name": "streams_max", "value": 1000 + i}
                else:
                    command, args = "set_tenant", {"name": f"w{i % 4}", "display_name": f"v{i}"}
                try:
                    version = await self.view.write(command, args, timeout_s=5)
                except WriteError as exc:
                    if exc.code not in FAILOVER_CODES:
                        raise
                    self.failed += 1
                    continue
                except trio.TooSlowError:
                    self.failed += 1
                    continue
                self.acked += 1
                self.versions.append(version)
                if command == "set_config":
                    self.last_value = 1000 + i
        finally:
            self.done.set()

    async def stop(self) -> None:
        self.stopping = True
        with trio.fail_after(10):
            await self.done.wait()


def roles(view: MetadataView) -> dict[ShardId, ShardRole]:
    return {k: o.role for k, o in view.cache.owned.items()}


async def all_at(views: Sequence[MetadataView], version: int, timeout_s: float = 20) -> None:
    with trio.fail_after(timeout_s):
        for view in views:
            await view.wait_until(lambda v=view: v.version == version)  # type: ignore[misc]


async def test_brokers_keep_up_through_kill9_of_the_leader(cluster: ProcessCluster) -> None:
    leader = await trio.to_thread.run_sync(cluster.wait_for_leader)
    eps = endpoints(cluster)
    async with AsyncExitStack() as stack:
        ids: list[int | None] = [*REGISTERED, None, None]
        views: list[MetadataView] = []
        for i, node_id in enumerate(ids):  # two brokers first try each node
            first = eps[i % len(eps)]
            views.append(
                await stack.enter_async_context(client(eps, node_id, cluster, first=first))
            )
        registered = views[: len(REGISTERED)]
        # The writer starts on the leader: its writes in flight are cut by the kill.
        writer_view = await stack.enter_async_context(
            client(eps, None, cluster, first=eps[leader - 1])
        )
        everyone = [*views, writer_view]
        assert {node_of(cluster, v.endpoint) for v in views} == set(cluster.nodes)
        await writer_view.write("set_tenant", {"name": "acme"})
        with trio.fail_after(15):
            for view in registered:
                await view.wait_until(lambda v=view: all_up(v, *REGISTERED))  # type: ignore[misc]
        consumers = [Owned(v) for v in registered]
        monitors = [Monotonic(v) for v in everyone]
        async with trio.open_nursery() as nursery:
            for consumer in consumers:
                nursery.start_soon(consumer.run)
            for monitor in monitors:
                nursery.start_soon(monitor.run)
            stream: Record = {"name": "orders", "shards": SHARDS, "tenant": "acme",
                              "replication_factor": 2}  # fmt: skip
            await writer_view.write("create_stream", stream)
            for consumer in consumers:
                await wait_for(lambda c=consumer: bool(c.roles) and c.matches())  # type: ignore[misc]
            owners = Counter(r for c in consumers for r in c.roles.values())
            assert owners == {ShardRole.LEADER: SHARDS, ShardRole.REPLICA: SHARDS}

            writer = Writer(writer_view)
            nursery.start_soon(writer.run)
            await wait_for(lambda: writer.acked >= 15)
            killed = await trio.to_thread.run_sync(cluster.wait_for_leader)
            on_killed = [v for v in everyone if node_of(cluster, v.endpoint) == killed]
            assert len(on_killed) >= 2  # two brokers started on every node
            await trio.to_thread.run_sync(cluster.nodes[killed].kill9)
            acked_at_kill = writer.acked
            await wait_for(lambda: writer.acked >= acked_at_kill + 15, timeout_s=20)
            await writer.stop()

            version, digest, records = await linearizable_view(cluster)
            assert version >= writer.versions[-1]
            await all_at(everyone, version)
            for view in everyone:
                stats = view.stats
                assert view.cache.records == records, view.node_id
                assert view.cache.digest_bytes == digest
                assert stats.snapshots == 1, f"{view.node_id}: second snapshot"
                assert stats.resyncs == 0 and stats.resync_reasons == {}, stats.resync_reasons
                assert stats.digest_mismatches == 0
                streams_max = view.config["streams_max"]  # the last acked, or a later one
                assert isinstance(streams_max, int) and streams_max >= writer.last_value
            for view in on_killed:  # resumed on a survivor
                assert view.stats.reconnects >= 1
                assert node_of(cluster, view.stats.endpoint) != killed
            assert writer.versions == sorted(set(writer.versions))  # acked: strictly after
            for consumer in consumers:
                await wait_for(consumer.matches)
            owners = Counter(r for c in consumers for r in c.roles.values())
            assert owners == {ShardRole.LEADER: SHARDS, ShardRole.REPLICA: SHARDS}

            # The killed node comes back: it catches up and serves; nobody else notices.
            await trio.to_thread.run_sync(cluster.nodes[killed].start)
            last = 0
            for n in range(5):
                last = await writer_view.write(
                    "set_config", {"name": "streams_max", "value": 5000 + n}, timeout_s=10
                )
            await trio.to_thread.run_sync(cluster.wait_caught_up, killed, last)
            async with client([eps[killed - 1]], None, cluster) as fresh:  # only the restarted node
                version, digest, records = await linearizable_view(cluster)
                await all_at([*everyone, fresh], version)
                for view in [*everyone, fresh]:
                    assert view.cache.records == records and view.cache.digest_bytes == digest
                    assert view.config["streams_max"] == 5004
                    assert view.stats.snapshots == 1 and view.stats.resyncs == 0
            for consumer in consumers:
                await wait_for(consumer.matches)
            for monitor in monitors:
                assert monitor.forward, monitor.seen
                assert monitor.seen[-1] == version
            nursery.cancel_scope.cancel()


async def test_resume_below_the_retained_history_takes_one_snapshot(
    short_history_cluster: ProcessCluster,
) -> None:
    cluster = short_history_cluster
    await trio.to_thread.run_sync(cluster.wait_for_leader)
    eps = endpoints(cluster)
    async with client(eps, None, cluster) as admin, client(eps, 11, cluster) as other:
        await admin.write("set_tenant", {"name": "acme"})
        # Leadership must stay where the failover put it: no preferred-leader passes.
        await admin.write("set_config", {"name": "auto_rebalance", "value": False})
        async with client(eps, 10, cluster, report_down_on_exit=False) as view:
            consumer = Owned(view)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consumer.run)
                await wait_for(lambda: all_up(view, 10, 11))
                await admin.write("create_stream", {"name": "s", "shards": 4, "tenant": "acme",
                                                    "replication_factor": 2})  # fmt: skip
                await wait_for(lambda: len(view.cache.owned) == 4 and consumer.matches())
                nursery.cancel_scope.cancel()
            kept = view.cache
        old_owned = dict(kept.owned)
        led = {k for k, o in old_owned.items() if o.role is ShardRole.LEADER}
        assert led and old_owned.keys() == {("s", i) for i in range(4)}
        # Broker 10 is gone: its shards' leadership moves to 11; then more versions than
        # the servers retain, so 10's resume point is gone when it comes back.
        await admin.write("node_health", {"node_id": 10, "status": "down"})
        for n in range(8):
            last = await admin.write("set_config", {"name": "streams_max", "value": 100 + n})
        assert kept.version is not None and last - kept.version > 4
        await all_at([other], last)
        assert all(other.cache.owned[k].role is ShardRole.LEADER for k in old_owned)

        async with client(eps, 10, cluster, cache=kept) as view:
            consumer = Owned(view)  # events are relative to the kept view: start from it
            consumer.roles = {k: o.role for k, o in old_owned.items()}
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consumer.run)
                await wait_for(lambda: all_up(view, 10, 11))
                version, digest, records = await linearizable_view(cluster)
                await all_at([view, other], version)
                assert view.cache.records == records and view.cache.digest_bytes == digest
                stats = view.stats
                assert stats.resync_reasons == {"history": 1} and stats.snapshots == 1
                assert stats.reconnects == 0 and view.config["streams_max"] == 107
                await wait_for(consumer.matches)
                nursery.cancel_scope.cancel()
        # Only what changed while it was away: the shards it led, now as a replica.
        assert {e.shard for e in consumer.events} == led
        assert all(
            (e.previous, e.role) == (ShardRole.LEADER, ShardRole.REPLICA) for e in consumer.events
        )
        assert roles(view) == dict.fromkeys(old_owned, ShardRole.REPLICA)
