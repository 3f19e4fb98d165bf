"""Broker liveness as leader soft state, on MockClock: transitions only, grace on failover."""

from __future__ import annotations

import trio

from felix.metadata.commands import RegisterNode, encode_command
from felix.proto.client_messages import HealthStatus, ReportHealth
from felix.proto.raft_messages import ForwardKind
from felix.server.graph import MetadataServices
from felix.server.metadata_sm import MetadataStateMachine
from felix.server.raft_node import NodeSettings, RaftNode
from felix.server.sessions import SESSION_TIMEOUT_S, encode_report
from felix.testing.cluster import TICK_S, TrioCluster


async def start(cluster: TrioCluster, nursery: trio.Nursery, node_id: int) -> MetadataServices:
    sim, services = await cluster.start_metadata(node_id)

    async def run_services(task_status: trio.TaskStatus[None]) -> None:
        """Forwarding and session expiry live as long as this incarnation of the node."""
        node = sim.node
        async with trio.open_nursery() as inner:
            await inner.start(services.forwarder.run)
            inner.start_soon(services.sessions.run)
            task_status.started()
            while sim.node is node and sim.running:
                await trio.sleep(TICK_S)
            inner.cancel_scope.cancel()

    await nursery.start(run_services)
    return services


def state_of(node: RaftNode, broker: int) -> tuple[str, bool]:
    sm = node.state_machine
    assert isinstance(sm, MetadataStateMachine)
    record = sm.state.nodes[broker]
    return record.state, record.draining


async def report(
    services: MetadataServices, broker: int, status: HealthStatus = HealthStatus.UP
) -> str:
    outcome = await services.forwarder.submit(
        ForwardKind.HEALTH, encode_report(ReportHealth(broker, status, 0)), timeout_s=5
    )
    return "ok" if outcome.ok else f"{outcome.error}: {outcome.detail}"


async def test_heartbeats_transitions_expiry_and_failover_grace(
    autojump_clock: trio.abc.Clock,
) -> None:
    settings = NodeSettings(tick_s=TICK_S, snapshot_in_thread=False)
    async with trio.open_nursery() as nursery:
        cluster = TrioCluster(
            nursery,
            [1, 2, 3],
            seed=11,
            settings=settings,
            state_machine_factory=MetadataStateMachine,
        )
        services = {n: await start(cluster, nursery, n) for n in (1, 2, 3)}
        leader = await cluster.wait_for_leader()
        assert leader.node is not None
        for broker in (101, 102, 103):
            await leader.node.propose(encode_command(RegisterNode(broker, f"b{broker}:1")))
        follower = next(s for s in cluster.running() if s is not leader)
        assert follower.node is not None

        # Unknown brokers are refused; a first report through a follower marks one up.
        assert "not registered" in await report(services[follower.node_id], 999)
        for broker in (101, 102, 103):
            assert await report(services[follower.node_id], broker) == "ok"
        await cluster.wait_converged()
        assert state_of(leader.node, 101) == ("up", False)

        # 101 and 103 keep reporting; 102 goes silent and is marked down after the timeout.
        stop_beats = trio.Event()

        async def beat(broker: int) -> None:
            while not stop_beats.is_set():
                for sim in cluster.running():  # any node will do: followers forward
                    await report(services[sim.node_id], broker)
                    break
                await trio.sleep(1.0)

        nursery.start_soon(beat, 101)
        nursery.start_soon(beat, 103)
        await trio.sleep(SESSION_TIMEOUT_S + 2)
        assert state_of(leader.node, 102)[0] == "down"
        assert state_of(leader.node, 101)[0] == "up"

        # Failover: the new leader must not mark heartbeating brokers down.
        await cluster.stop(leader.node_id)
        new = await cluster.wait_for_leader()
        assert new.node is not None
        await trio.sleep(SESSION_TIMEOUT_S * 2)
        assert state_of(new.node, 101)[0] == "up" and state_of(new.node, 103)[0] == "up"

        # A draining report starts a drain.
        assert await report(services[new.node_id], 103, HealthStatus.DRAINING) == "ok"
        await cluster.wait_converged()
        assert state_of(new.node, 103)[1] is True
        stop_beats.set()
        nursery.cancel_scope.cancel()
