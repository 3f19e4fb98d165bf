"""Replica management end to end, tier B: a 3-node control plane in process (real Raft
drivers, loopback sockets, the real clock) and brokers from `felix.broker`.

- A broker dies for good: after ``replica_down_timeout_s`` (and not before: once on the
  real clock, once on MockClock) its shards are re-replicated
  make-before-break; each new replica's broker sees ``CATCHING_UP``, reports ready, and
  only then is the dead replica removed.  The control-plane leader is stopped in the
  middle of the moves; the new leader finishes them from the replicated state.  At no
  applied version does a shard have fewer than two live caught-up replicas, and every
  broker's ownership events (never duplicated, never missed) match the final state.
- Controlled shutdown: a live broker that has not applied the drain's leadership change
  holds the drain open; once it reports that version, the drain completes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
import trio.testing

from felix.broker import MetadataView, ShardRole, open_metadata_client
from felix.broker.connection import ClientConnection
from felix.proto.client_messages import GetSnapshot, HealthStatus, ReportHealth, SnapshotChunk
from tests.broker.harness import ControlPlane, control_plane, wait_for
from tests.broker.test_client import FAST, Owned

RF = 3


@asynccontextmanager
async def broker(cp: ControlPlane, n: int) -> AsyncIterator[MetadataView]:
    async with open_metadata_client(
        cp.endpoints, node_id=n, address=f"10.9.0.{n}:9092", rack=f"r{n % 3}",
        **FAST,  # type: ignore[arg-type]
    ) as view:  # fmt: skip
        yield view


class ReadyReporter(Owned):
    """Owned, and reports every catching-up replica ready once ``release`` is set."""

    def __init__(self, view: MetadataView, release: trio.Event) -> None:
        super().__init__(view)
        self.release = release
        self.caught_up_seen = 0

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            async for event in self.view.ownership_events():
                assert self.roles.get(event.shard) == event.previous, event
                self.events.append(event)
                if event.role is None:
                    del self.roles[event.shard]
                else:
                    self.roles[event.shard] = event.role
                if event.role is ShardRole.CATCHING_UP:
                    self.caught_up_seen += 1
                    nursery.start_soon(self._report, event.shard)

    async def _report(self, shard: tuple[str, int]) -> None:
        await self.release.wait()
        await self.view.report_replica_ready(*shard)


def live_floor(view: MetadataView) -> int:
    """The fewest live caught-up replicas of any shard in ``view``."""
    nodes = view.cache.nodes
    counts = [
        sum(1 for r in s.replicas if r not in s.catching_up and r in nodes and nodes[r].live)
        for s in view.cache.shards.values()
    ]
    return min(counts, default=RF)


@pytest.fixture
def mock_clock() -> trio.testing.MockClock:
    """Virtual time that jumps once every task has waited 2 ms of real time: the
    loopback sockets' I/O completes well within that, so only idle time is skipped."""
    return trio.testing.MockClock(autojump_threshold=0.002)


async def test_a_dead_broker_is_re_replicated_make_before_break_across_a_failover() -> None:
    await dead_broker_is_re_replicated(down_timeout_s=1)


async def test_the_same_on_mock_clock_nothing_moves_before_the_timeout(
    mock_clock: trio.testing.MockClock,
) -> None:
    """On virtual time, with a 30 s timeout: nothing moves until 30 s after the broker
    went down, then the same make-before-break sequence runs.  (The default, 600 s,
    works the same and costs 60,000 ticks of every node's real work: about five
    minutes here.)"""
    await dead_broker_is_re_replicated(down_timeout_s=30)


async def dead_broker_is_re_replicated(down_timeout_s: int) -> None:
    timeout_s = down_timeout_s
    async with control_plane(seed=11) as cp, AsyncExitStack() as stack:
        await cp.write("set_config", {"name": "replica_down_timeout_s", "value": timeout_s})
        stop_10 = trio.Event()

        async def run_10(*, task_status: trio.TaskStatus[MetadataView]) -> None:
            async with broker(cp, 10) as view:  # its own task: it stops before the others
                task_status.started(view)
                await stop_10.wait()

        views = {10: await cp.nursery.start(run_10)}
        views |= {n: await stack.enter_async_context(broker(cp, n)) for n in range(11, 16)}
        await wait_for(lambda: all(v.node is not None and v.node.up for v in views.values()))
        await cp.write("create_stream", {"name": "s", "shards": 6, "tenant": "acme",
                                         "replication_factor": RF})  # fmt: skip
        watcher = await stack.enter_async_context(
            open_metadata_client(cp.endpoints, node_id=None, **FAST)  # type: ignore[arg-type]
        )
        release = trio.Event()
        floors: list[int] = []
        async with trio.open_nursery() as nursery:
            reporters = {n: ReadyReporter(v, release) for n, v in views.items() if n != 10}
            for r in reporters.values():
                nursery.start_soon(r.run)

            async def watch_floor() -> None:
                await watcher.wait_ready()
                while True:
                    seen = watcher.version
                    if watcher.cache.shards:
                        dead = watcher.cache.nodes.get(10)
                        if dead is not None and not dead.live:
                            floors.append(live_floor(watcher))
                    await watcher.wait_until(lambda s=seen: watcher.version != s)  # type: ignore[misc]

            nursery.start_soon(watch_floor)
            state = await cp.state()
            held = state.node_shards(10)
            assert held  # broker 10 holds replicas of some shards
            del views[10]
            stop_10.set()  # broker 10 stops for good (and reports itself down)
            await wait_for(lambda: not watcher.cache.nodes[10].live)
            down_at = trio.current_time()
            with trio.fail_after(timeout_s + 30):  # moves start once the timeout passed
                while not any(r.caught_up_seen for r in reporters.values()):
                    await trio.sleep(0.02)
            assert trio.current_time() - down_at >= timeout_s  # not a moment before
            mid = await cp.state()
            assert mid.nodes[10].evacuate == "down_timeout" and mid.reassigning
            assert all(10 in mid.shards[k].replicas for k in mid.reassigning)  # not yet removed
            leader = (await cp.cluster.wait_for_leader()).node_id
            await cp.stop(leader)  # fail over in the middle of the moves
            release.set()
            with trio.fail_after(60):
                while True:
                    survivors = [n for n in (1, 2, 3) if n != leader]
                    new_leader = await cp.cluster.wait_for_leader()
                    assert new_leader.node_id in survivors
                    final = await cp.state()
                    if not final.node_shards(10) and not final.reassigning:
                        break
                    await trio.sleep(0.05)
            for shard in final.shards.values():
                assert len(shard.replicas) == RF and 10 not in shard.replicas
                assert not shard.catching_up and shard.leader in shard.replicas
            for n, r in reporters.items():
                await wait_for(lambda v=views[n]: (v.version or 0) >= final.version)  # type: ignore[misc]
                assert r.matches(), n
                mine = {(s.stream, s.index) for s in final.shards.values() if n in s.replicas}
                assert set(r.roles) == mine
            nursery.cancel_scope.cancel()
        assert floors and min(floors) >= RF - 1  # never fewer than two live copies


async def test_a_drain_waits_for_every_live_broker_to_apply_the_leadership_change() -> None:
    async with control_plane(seed=12) as cp, AsyncExitStack() as stack:
        views = {n: await stack.enter_async_context(broker(cp, n)) for n in (10, 11, 12)}
        await wait_for(lambda: all(v.node is not None and v.node.up for v in views.values()))
        await cp.write("create_stream", {"name": "s", "shards": 3, "tenant": "acme",
                                         "replication_factor": 2})  # fmt: skip
        await cp.write("register_node", {"node_id": 20, "address": "10.9.0.20:9092"})
        lagging = await ClientConnection.open("127.0.0.1", cp.ports[1])
        applied = [1]  # broker 20 heartbeats but is stuck at version 1

        async def heartbeats() -> None:
            while True:
                await lagging.send(ReportHealth(20, HealthStatus.UP, applied[0]))
                with trio.move_on_after(0.1):  # the heartbeat period, not a synchronisation
                    await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            await lagging.send(GetSnapshot(1, False))
            assert isinstance(await lagging.receive(), SnapshotChunk)
            nursery.start_soon(heartbeats)
            await wait_for(lambda: views[10].cache.nodes[20].up)
            drainer = views[10]
            await drainer.request_drain()
            await wait_for(lambda: drainer.node is not None and drainer.node.drained_version)
            node = drainer.node
            assert node is not None and node.drained_version is not None
            leader = (await cp.cluster.wait_for_leader()).node_id
            rebalancer = cp.services[leader].rebalancer
            ticks = rebalancer.ticks
            await wait_for(lambda: rebalancer.ticks >= ticks + 3)  # three rounds: still held
            assert not drainer.drained and not drainer.node.drain_acked  # type: ignore[union-attr]
            applied[0] = node.drained_version  # broker 20 catches up
            with trio.fail_after(10):
                await drainer.wait_drained()
            assert drainer.node.drain_acked  # type: ignore[union-attr]
            nursery.cancel_scope.cancel()
        await lagging.aclose()
