"""Brokers watching a 3-node cluster through the client API, across a leader failure.

Real sockets for the client API (loopback), in-memory network and WAL for Raft, on the
real clock.  Every broker applies what it receives exactly as the protocol says and the
test checks the watch guarantees: ordered, no duplicates, no gaps (prev_version chains),
resumable on another node without a snapshot, and the final view and digest equal the
leader's.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from felix.broker.connection import ClientConnection, ConnectionClosed
from felix.metadata.digest import digest_bytes, digest_int
from felix.metadata.view import RecordView, apply_changes
from felix.proto.client_messages import (
    Change,
    ClientHello,
    Delta,
    DeltaPart,
    Deltas,
    Error,
    GetSnapshot,
    Resync,
    SnapshotChunk,
    WatchProgress,
    WriteRequest,
    WriteResult,
)
from felix.server.graph import MetadataServices
from felix.server.metadata_sm import MetadataStateMachine
from felix.server.raft_node import NodeSettings
from felix.server.watch_hub import HubLimits
from felix.testing.cluster import TrioCluster, write_metadata
from felix.testing.processes import Credentials

PLAINTEXT = Credentials()


@dataclass
class Broker:
    name: str
    records: RecordView = field(default_factory=dict)
    digest: int = 0
    version: int | None = None
    applied: list[int] = field(default_factory=list)
    snapshots: int = 0
    reconnects: int = 0
    _chunks: list[Change] = field(default_factory=list)
    _parts: list[Change] = field(default_factory=list)

    def on_message(self, message: object) -> None:
        if isinstance(message, SnapshotChunk):
            self._chunks.extend(message.records)
            if message.last:
                self.records = {}
                self.digest = apply_changes(self.records, self._chunks)
                assert digest_bytes(self.digest) == message.digest, "snapshot digest"
                self._chunks, self.version = [], message.version
                self.snapshots += 1
        elif isinstance(message, Deltas):
            for delta in message.deltas:
                self.apply(delta)
        elif isinstance(message, DeltaPart):
            self._parts.extend(message.changes)
            if message.last:
                changes, self._parts = tuple(self._parts), []
                self.apply(Delta(message.prev_version, message.version, message.digest, changes))
        elif isinstance(message, WatchProgress):
            assert self.version is not None and message.version <= self.version
        elif isinstance(message, Resync):
            raise AssertionError(f"{self.name}: unexpected resync: {message.reason}")

    def apply(self, delta: Delta) -> None:
        assert self.version is not None, "delta before any snapshot"
        assert delta.prev_version == self.version, (
            f"{self.name}: gap or duplicate: at {self.version}, got {delta.prev_version}"
        )
        self.digest = apply_changes(self.records, delta.changes, self.digest)
        assert digest_bytes(self.digest) == delta.digest, f"{self.name}: digest at {delta.version}"
        self.version = delta.version
        self.applied.append(delta.version)


async def run_broker(
    broker: Broker,
    ports: list[int],
    start: int,
    stop: trio.Event,
    creds: Credentials = PLAINTEXT,
) -> None:
    """Watch from any node; on a dropped connection resume from the last version on the
    next node (with back-off), as the broker library will."""
    for attempt in itertools.count(start):
        port = ports[attempt % len(ports)]
        try:
            conn = await creds.open(port, timeout_s=2)
        except (OSError, trio.TooSlowError):
            await trio.sleep(0.02)
            continue
        try:
            await conn.send(ClientHello(None, broker.version, ""))
            while not stop.is_set():
                for message in await conn.receive_batch():
                    broker.on_message(message)
        except ConnectionClosed:
            broker.reconnects += 1
            await trio.sleep(0.02)
        finally:
            await conn.aclose()
        if stop.is_set():
            return


async def write(ports: dict[int, int], cluster: TrioCluster, command: str, args: dict) -> int:
    return await write_metadata(ports, cluster, command, args)


@pytest.mark.parametrize("seed", [1, 2])
async def test_brokers_follow_writes_across_a_leader_failure(seed: int) -> None:
    settings = NodeSettings(tick_s=0.01, snapshot_entries=40, snapshot_in_thread=False)
    async with trio.open_nursery() as nursery:
        cluster = TrioCluster(
            nursery,
            [1, 2, 3],
            seed=seed,
            settings=settings,
            state_machine_factory=MetadataStateMachine,
        )
        ports: dict[int, int] = {}
        api_scopes: dict[int, trio.CancelScope] = {}

        async def run_api(
            services: MetadataServices, node_id: int, *, task_status: trio.TaskStatus[int]
        ) -> None:
            with trio.CancelScope() as scope:  # the API lives and dies with its node
                api_scopes[node_id] = scope
                await services.run("127.0.0.1", 0, task_status=task_status)

        async def serve(node_id: int) -> None:
            _, services = await cluster.start_metadata(node_id)
            ports[node_id] = await nursery.start(run_api, services, node_id)

        for node_id in (1, 2, 3):
            await serve(node_id)
        await write(ports, cluster, "set_tenant", {"name": "acme"})
        for n in range(1, 6):
            await write(
                ports,
                cluster,
                "register_node",
                {"node_id": n, "address": f"10.0.0.{n}:9000", "rack": f"r{n % 3}"},
            )
            await write(ports, cluster, "node_health", {"node_id": n, "status": "up"})

        stop = trio.Event()
        brokers = [Broker(f"b{i}") for i in range(6)]
        port_list = [ports[1], ports[2], ports[3]]
        async with trio.open_nursery() as watchers:
            for i, broker in enumerate(brokers):
                watchers.start_soon(run_broker, broker, port_list, i, stop)
            for n in range(12):
                await write(
                    ports,
                    cluster,
                    "create_stream",
                    {"name": f"s{n}", "shards": 4, "tenant": "acme"},
                )
            leader = await cluster.wait_for_leader()
            snapshots_before = sum(b.snapshots for b in brokers)
            api_scopes[leader.node_id].cancel()
            await cluster.stop(leader.node_id)  # its brokers reconnect elsewhere and resume
            for n in range(12, 20):
                await write(
                    ports,
                    cluster,
                    "create_stream",
                    {"name": f"s{n}", "shards": 2, "tenant": "acme"},
                )
            await write(ports, cluster, "node_health", {"node_id": 2, "status": "down"})
            await serve(leader.node_id)  # the old leader restarts from its WAL
            # A partitioned follower: its brokers stall (it only serves what it applied,
            # never uncommitted state), then catch up when it heals.
            survivor = await cluster.wait_for_leader()
            cut_off = next(s.node_id for s in cluster.running() if s is not survivor)
            cluster.network.isolate(cut_off, {1, 2, 3})
            for n in range(20, 24):
                await write(
                    ports,
                    cluster,
                    "create_stream",
                    {"name": f"s{n}", "shards": 1, "tenant": "acme"},
                )
            cluster.network.heal()
            # The partitioned node restarts too; its brokers resume elsewhere or on it.
            api_scopes[cut_off].cancel()
            await cluster.stop(cut_off)
            await serve(cut_off)
            for n in range(24, 26):
                await write(
                    ports,
                    cluster,
                    "create_stream",
                    {"name": f"s{n}", "shards": 1, "tenant": "acme"},
                )
            final = await cluster.wait_converged()
            with trio.move_on_after(20):
                while any(b.version is None or b.version < final for b in brokers):
                    await trio.sleep(0.01)
            lagging = [
                (b.name, b.version, b.reconnects, b.snapshots)
                for b in brokers
                if b.version is None or b.version < final
            ]
            assert not lagging, f"final {final}: {lagging}"
            stop.set()
            watchers.cancel_scope.cancel()

        new_leader = await cluster.wait_for_leader()
        assert new_leader.node is not None
        sm = new_leader.node.state_machine
        assert isinstance(sm, MetadataStateMachine)
        expected = {(c.kind, c.key): c.value for c in sm.state.records()}
        for broker in brokers:
            assert broker.records == expected, broker.name
            assert digest_bytes(broker.digest) == sm.state.digest
            assert broker.applied == sorted(set(broker.applied))  # ordered, no duplicates
        # Resuming after the failure, the partition and the restart needed no snapshots
        # (one each at the start only).
        assert sum(b.snapshots for b in brokers) == snapshots_before
        assert sum(b.reconnects for b in brokers) >= 1
        assert digest_int(sm.state.digest) != 0
        nursery.cancel_scope.cancel()


async def test_get_snapshot_linearizable_and_bad_writes() -> None:
    settings = NodeSettings(tick_s=0.01, snapshot_in_thread=False)
    async with trio.open_nursery() as nursery:
        cluster = TrioCluster(
            nursery,
            [1, 2, 3],
            seed=3,
            settings=settings,
            state_machine_factory=MetadataStateMachine,
        )
        ports: dict[int, int] = {}
        for node_id in (1, 2, 3):
            _, services = await cluster.start_metadata(node_id)
            ports[node_id] = await nursery.start(services.run, "127.0.0.1", 0)
        await write(ports, cluster, "set_tenant", {"name": "acme"})
        leader = await cluster.wait_for_leader()
        conn = await ClientConnection.open("127.0.0.1", ports[leader.node_id])
        await conn.send(GetSnapshot(9, True))
        chunk = await conn.receive()
        assert isinstance(chunk, SnapshotChunk) and chunk.request_id == 9 and chunk.last
        assert any(c.kind == "tenant" and c.key == "acme" for c in chunk.records)
        # A rejected command changes nothing and says why; an unknown one too.
        await conn.send(
            WriteRequest(10, "create_stream", {"name": "x", "shards": 1, "tenant": "nobody"}, None)
        )
        reply = await conn.receive()
        assert isinstance(reply, Error) and reply.request_id == 10
        assert reply.code.value == "rejected" and "nobody" in reply.detail
        await conn.send(WriteRequest(11, "launch_rockets", {}, None))
        reply = await conn.receive()
        assert isinstance(reply, Error) and "unknown command" in reply.detail
        # A stale compare-and-set is a conflict.
        await conn.send(WriteRequest(12, "set_tenant", {"name": "b"}, 1))
        reply = await conn.receive()
        assert isinstance(reply, Error) and reply.code.value == "conflict"
        follower = next(n for n in ports if n != leader.node_id)
        fconn = await ClientConnection.open("127.0.0.1", ports[follower])
        # A write reaching a follower is forwarded to the leader over the peer link.
        await fconn.send(WriteRequest(13, "set_tenant", {"name": "c"}, None))
        reply = await fconn.receive()
        assert isinstance(reply, WriteResult) and reply.request_id == 13
        assert leader.node is not None
        sm = leader.node.state_machine
        assert isinstance(sm, MetadataStateMachine) and "c" in sm.state.tenants
        # ...and so is a rejection's reason.
        await fconn.send(
            WriteRequest(14, "create_stream", {"name": "y", "shards": 1, "tenant": "nobody"}, None)
        )
        reply = await fconn.receive()
        assert isinstance(reply, Error) and reply.code.value == "rejected"
        await conn.aclose()
        await fconn.aclose()
        nursery.cancel_scope.cancel()


async def test_a_broker_that_disconnects_leaves_the_hub_and_is_not_counted_slow() -> None:
    """A closed watch connection takes its subscriber out of the hub at once: the
    ``felix_watchers`` count drops, and neither the next delta nor the next
    ``WatchProgress`` finds it and counts it as a slow subscriber or a resync."""
    settings = NodeSettings(tick_s=0.01, snapshot_in_thread=False)
    async with trio.open_nursery() as nursery:
        cluster = TrioCluster(
            nursery, [1], seed=4, settings=settings, state_machine_factory=MetadataStateMachine
        )
        _, services = await cluster.start_metadata(1, HubLimits(progress_interval_s=0.05))
        ports = {1: await nursery.start(services.run, "127.0.0.1", 0)}
        await write(ports, cluster, "set_tenant", {"name": "acme"})
        hub = services.hub
        brokers = [Broker(f"b{i}") for i in range(3)]
        conns = []
        for broker in brokers:
            conn = await ClientConnection.open("127.0.0.1", ports[1])
            await conn.send(ClientHello(None, None, ""))
            with trio.fail_after(10):
                while broker.version is None:
                    for message in await conn.receive_batch():
                        broker.on_message(message)
            conns.append(conn)
        await trio.testing.wait_all_tasks_blocked()
        assert hub.watchers == 3
        for conn in conns[:2]:
            await conn.aclose()
        with trio.fail_after(10):  # the server reads each close, then the watch ends
            while hub.watchers > 1:
                await trio.testing.wait_all_tasks_blocked()
        version = await write(ports, cluster, "set_tenant", {"name": "bravo"})
        with trio.fail_after(10):  # the delta, then WatchProgress (every 50 ms when idle)
            progress = 0
            while progress < 2:
                for message in await conns[2].receive_batch():
                    brokers[2].on_message(message)
                    progress += isinstance(message, WatchProgress)
        assert brokers[2].version == version
        assert hub.watchers == 1
        assert hub.stats.slow_disconnects == 0 and hub.stats.resyncs == 0
        await conns[2].aclose()
        nursery.cancel_scope.cancel()
