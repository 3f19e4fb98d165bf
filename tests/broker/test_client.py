"""The broker client against an in-process 3-node control plane (real clock, loopback).

Covers registration and heartbeats (node up), routing and ownership events, resume on
another node after the serving node stops (no second snapshot), the resync paths
(server ``Resync``, a resume point below the retained history, the periodic resync, a
corrupted local record found by the digest audit), drain completion, and metrics.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
from prometheus_client import CollectorRegistry

from felix.broker import (
    BrokerMetrics,
    MetadataCache,
    MetadataView,
    OwnershipEvent,
    ShardRole,
    WriteError,
    open_metadata_client,
)
from felix.broker.cache import ShardId
from felix.broker.client import endpoint_order
from felix.metadata.view import view_of
from felix.server.watch_hub import HubLimits
from tests.broker.harness import ControlPlane, control_plane, wait_for

FAST = {"heartbeat_s": 0.1, "backoff_s_min": 0.02, "backoff_s_max": 0.2, "ready_timeout_s": 15}


@asynccontextmanager
async def brokers(
    cp: ControlPlane, *ids: int, **kwargs: object
) -> AsyncIterator[list[MetadataView]]:
    async with AsyncExitStack() as stack:
        views = [
            await stack.enter_async_context(
                open_metadata_client(
                    cp.endpoints, node_id=n, address=f"10.9.0.{n}:9092", rack=f"r{n % 3}",
                    **(FAST | kwargs),  # type: ignore[arg-type]
                )
            )
            for n in ids
        ]  # fmt: skip
        yield views


async def caught_up(cp: ControlPlane, *views: MetadataView) -> None:
    state = await cp.state()
    for view in views:
        await wait_for(lambda v=view: (v.version or 0) >= state.version)  # type: ignore[misc]
        assert view.cache.records == view_of(state.records())
        assert view.cache.digest_bytes == state.digest


class Owned:
    """A consumer of ownership events that checks they are never duplicated or missed."""

    def __init__(self, view: MetadataView) -> None:
        self.view = view
        self.roles: dict[ShardId, ShardRole] = {}
        self.events: list[OwnershipEvent] = []

    async def run(self) -> None:
        async for event in self.view.ownership_events():
            assert self.roles.get(event.shard) == event.previous, event
            self.events.append(event)
            if event.role is None:
                del self.roles[event.shard]
            else:
                self.roles[event.shard] = event.role

    def matches(self) -> bool:
        return self.roles == {k: o.role for k, o in self.view.cache.owned.items()}


def all_up(view: MetadataView, *ids: int) -> bool:
    return all(n in view.nodes and view.nodes[n].state == "up" for n in ids)


def routing_of(view: MetadataView) -> dict[ShardId, str | None]:
    return {
        k: view.nodes[s.leader].address if s.leader is not None else None
        for k, s in view.shards.items()
    }


def test_brokers_spread_over_endpoints() -> None:
    eps = [("h", 1), ("h", 2), ("h", 3)]
    firsts = Counter(endpoint_order(eps, n, random.Random(n))[0] for n in range(300))
    assert set(firsts) == set(eps) and min(firsts.values()) > 60
    order = endpoint_order(eps, 5, random.Random(0))
    assert sorted(order) == eps and order[0] == endpoint_order(eps, 5, random.Random(1))[0]


async def test_register_heartbeat_routing_and_ownership() -> None:
    async with control_plane() as cp, brokers(cp, 10, 11, 12) as views:
        for view in views:  # registered, and heartbeats made every node up
            await wait_for(lambda v=view: all_up(v, 10, 11, 12))  # type: ignore[misc]
            assert view.registered_version is not None
            assert view.node is not None and view.node.epoch == view.registered_version
        consumers = [Owned(v) for v in views]
        async with trio.open_nursery() as nursery:
            for consumer in consumers:
                nursery.start_soon(consumer.run)
            await cp.write("create_stream", {"name": "orders", "shards": 6, "tenant": "acme",
                                             "replication_factor": 2})  # fmt: skip
            await caught_up(cp, *views)
            for view, consumer in zip(views, consumers, strict=True):
                assert len(view.routing) == 6
                assert dict(view.routing) == routing_of(view)
                assert set(view.routing.values()) <= {"10.9.0.10:9092", "10.9.0.11:9092",
                                                      "10.9.0.12:9092"}  # fmt: skip
                await wait_for(consumer.matches)
            owners = Counter(role for c in consumers for role in c.roles.values())
            assert owners == {ShardRole.LEADER: 6, ShardRole.REPLICA: 6}
            assert all(v.stats.heartbeats >= 1 and v.stats.resyncs == 0 for v in views)
            nursery.cancel_scope.cancel()


async def test_resume_on_another_node_after_the_serving_node_stops() -> None:
    limits = HubLimits(message_bytes_max=1500)  # big deltas travel as DeltaParts
    async with control_plane(limits, seed=2) as cp, brokers(cp, 10) as (view,):
        await cp.write("create_stream", {"name": "a", "shards": 40, "tenant": "acme",
                                         "replication_factor": 1})  # fmt: skip
        await caught_up(cp, view)
        assert len(view.routing) == 40 and view.stats.delta_parts > 1
        serving = cp.node_at(view.endpoint)
        await cp.stop(serving)
        for n in range(5):
            await cp.write("set_config", {"name": "streams_max", "value": 100 + n})
        await caught_up(cp, view)
        stats = view.stats
        assert stats.reconnects >= 1 and cp.node_at(stats.endpoint) != serving
        assert stats.snapshots == 1 and stats.resyncs == 0  # resumed, no second snapshot
        assert view.config["streams_max"] == 104
        await cp.serve(serving)  # it comes back; nobody needs to notice
        await cp.write("set_config", {"name": "streams_max", "value": 200})
        await caught_up(cp, view)
        assert view.stats.snapshots == 1


async def test_server_resync_and_resume_below_history_take_snapshots() -> None:
    async with control_plane(HubLimits(history_versions_max=3), seed=3) as cp:
        # Leadership must stay where the failover put it: no preferred-leader passes.
        await cp.write("set_config", {"name": "auto_rebalance", "value": False})
        async with brokers(cp, 10, 11, report_down_on_exit=False) as (view, other):
            consumer = Owned(view)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(consumer.run)
                both = (view, other)  # both live before placing two replicas per shard
                await wait_for(lambda: all(all_up(v, 10, 11) for v in both))
                await cp.write("create_stream", {"name": "a", "shards": 4, "tenant": "acme",
                                                 "replication_factor": 2})  # fmt: skip
                await caught_up(cp, view)
                await wait_for(consumer.matches)
                before = len(consumer.events)
                # The serving node replaces its state: every watcher is told to resync.
                hub = cp.hubs[cp.node_at(view.endpoint)]
                hub.reset(hub.version)
                await wait_for(lambda: view.stats.snapshots == 2)
                await caught_up(cp, view)
                assert view.stats.resync_reasons == {"resync": 1}
                assert len(consumer.events) == before  # the same view again: no events
                nursery.cancel_scope.cancel()
            kept = view.cache
        # Broker 10 restarts with its old view after more versions than the history
        # holds: its resume point is gone, so it gets a snapshot; ownership events are
        # only what changed meanwhile (its shards moved to 11 when it went down).
        await cp.write("node_health", {"node_id": 10, "status": "down"})
        for n in range(6):
            await cp.write("set_config", {"name": "streams_max", "value": 100 + n})
        old_owned = dict(kept.owned)
        events: list[OwnershipEvent] = []
        async with brokers(cp, 10, cache=kept, on_ownership=events.append) as (view,):
            await caught_up(cp, view)
            assert view.stats.resync_reasons == {"history": 1} and view.stats.snapshots == 1
            for event in events:
                old = old_owned.get(event.shard)
                assert (old.role if old else None) == event.previous
            assert {e.shard for e in events} <= set(old_owned) | set(view.cache.owned)
            assert any(
                (e.previous, e.role) == (ShardRole.LEADER, ShardRole.REPLICA) for e in events
            )
            assert {k: o.role for k, o in view.cache.owned.items()} == {
                k: ShardRole.REPLICA for k in old_owned
            }


async def test_ownership_then_drain_until_done() -> None:
    async with control_plane(seed=4) as cp, brokers(cp, 10, 11, 12) as views:
        view = views[0]
        consumer = Owned(view)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer.run)
            await wait_for(lambda: all_up(view, 10, 11, 12))
            await cp.write("create_stream", {"name": "s", "shards": 6, "tenant": "acme",
                                             "replication_factor": 3})  # fmt: skip
            await caught_up(cp, *views)
            await wait_for(consumer.matches)
            led = {k for k, r in consumer.roles.items() if r is ShardRole.LEADER}
            assert led and all(e.started for e in consumer.events)
            assert not view.drained
            with trio.fail_after(10):
                await view.drain()
            node = view.node
            assert node is not None and node.draining and node.drained_version is not None
            await wait_for(consumer.matches)
            moved = [e for e in consumer.events if not e.started]
            assert {e.shard for e in moved} == led
            assert all((e.previous, e.role) == (ShardRole.LEADER, ShardRole.REPLICA) for e in moved)
            assert all(r is ShardRole.REPLICA for r in consumer.roles.values())
            assert all(view.routing[k] != view.address for k in view.routing)
            nursery.cancel_scope.cancel()


async def test_periodic_resync_and_digest_audit() -> None:
    registry = CollectorRegistry()
    metrics = BrokerMetrics(registry)
    async with (
        control_plane(seed=5) as cp,
        brokers(cp, 10, snapshot_resync_s=0.3, digest_check_s=0.05, metrics=metrics) as (view,),
    ):
        await wait_for(lambda: view.stats.resync_reasons.get("periodic", 0) >= 1)
        await wait_for(lambda: view.stats.snapshots >= 2)
        ident = ("node", "10")
        record = view.cache.records[ident]
        record["rack"] = "tampered"
        await wait_for(lambda: view.stats.digest_mismatches >= 1)
        await wait_for(lambda: view.cache.records[ident]["rack"] == "r1")
        assert view.stats.resync_reasons.get("digest", 0) >= 1
        await caught_up(cp, view)
        sample = registry.get_sample_value
        assert sample("felix_broker_applied_version", {"node": "10"}) == view.version
        assert (sample("felix_broker_digest_mismatches_total", {"node": "10"}) or 0) >= 1
        periodic = {"node": "10", "reason": "periodic"}
        assert (sample("felix_broker_resyncs_total", periodic) or 0) >= 1
        assert sample("felix_broker_lag_versions", {"node": "10"}) == 0


async def test_exit_reports_down_and_a_refused_registration_raises() -> None:
    async with control_plane(seed=6) as cp:
        async with brokers(cp, 10) as (view,):
            await wait_for(lambda: view.node is not None and view.node.state == "up")
            with pytest.raises(WriteError, match="in use"):
                async with open_metadata_client(
                    cp.endpoints,
                    node_id=11,
                    address="10.9.0.10:9092",
                    **FAST,  # type: ignore[arg-type]
                ):
                    pass
        assert (await cp.state()).nodes[10].state == "down"
        async with open_metadata_client(cp.endpoints, node_id=None, **FAST) as watcher:  # type: ignore[arg-type]
            assert watcher.nodes[10].state == "down" and watcher.registered_version is None
            with pytest.raises(ValueError, match="error in body"):
                async with open_metadata_client(cp.endpoints, node_id=None, **FAST):  # type: ignore[arg-type]
                    raise ValueError("error in body")  # not wrapped in an ExceptionGroup
    assert isinstance(MetadataCache(), MetadataCache)


async def test_leader_stops_while_a_writer_is_mid_stream() -> None:
    """The Raft leader stops while writes keep coming: the brokers it served resume on a
    survivor; every broker (one per node) ends equal to the state, with no second
    snapshot, no resync, and every acknowledged write in its view."""
    async with control_plane(seed=7) as cp, brokers(cp, 10, 11, 13) as views:
        assert {cp.node_at(v.endpoint) for v in views} == {1, 2, 3}  # one broker per node
        await wait_for(lambda: all(all_up(v, 10, 11, 13) for v in views))
        consumers = [Owned(v) for v in views]
        acked: list[tuple[int, int]] = []  # (version, streams_max) per acknowledged write
        stopping = trio.Event()

        async def writer() -> None:
            value = 1000
            while not stopping.is_set():
                value += 1
                version = await cp.write("set_config", {"name": "streams_max", "value": value})
                acked.append((version, value))

        async with trio.open_nursery() as nursery:
            for consumer in consumers:
                nursery.start_soon(consumer.run)
            await cp.write("create_stream", {"name": "s", "shards": 6, "tenant": "acme",
                                             "replication_factor": 2})  # fmt: skip
            with trio.fail_after(20):
                async with trio.open_nursery() as writing:
                    writing.start_soon(writer)
                    await wait_for(lambda: len(acked) >= 10)
                    leader = (await cp.cluster.wait_for_leader()).node_id
                    served = [v for v in views if cp.node_at(v.endpoint) == leader]
                    await cp.stop(leader)
                    at_stop = len(acked)
                    await wait_for(lambda: len(acked) >= at_stop + 10)
                    stopping.set()  # the writer ends after its current write
            assert (await cp.cluster.wait_for_leader()).node_id != leader
            await caught_up(cp, *views)
            assert [v for v, _ in acked] == sorted({v for v, _ in acked})
            for view in views:
                stats = view.stats
                assert stats.snapshots == 1 and stats.resyncs == 0, stats
                assert view.config["streams_max"] == acked[-1][1]
            assert served and all(
                v.stats.reconnects >= 1 and cp.node_at(v.stats.endpoint) != leader for v in served
            )
            for consumer in consumers:
                await wait_for(consumer.matches)
            owners = Counter(role for c in consumers for role in c.roles.values())
            assert owners == {ShardRole.LEADER: 6, ShardRole.REPLICA: 6}
            nursery.cancel_scope.cancel()
