"""A 3-node in-process control plane for broker-client tests: Raft over the in-memory
network, the client API on real loopback sockets, the real clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from felix.metadata.state import MetadataState
from felix.server.graph import MetadataServices
from felix.server.metadata_sm import MetadataStateMachine
from felix.server.raft_node import NodeSettings
from felix.server.watch_hub import HubLimits, WatchHub
from felix.testing.cluster import TrioCluster, write_metadata


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll a condition (bounded): not a sleep used as synchronisation."""
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.01)


class ControlPlane:
    def __init__(self, nursery: trio.Nursery, limits: HubLimits | None, seed: int) -> None:
        settings = NodeSettings(tick_s=0.01, snapshot_in_thread=False)
        self.nursery = nursery
        self.limits = limits
        self.cluster = TrioCluster(
            nursery, [1, 2, 3], seed=seed, settings=settings,
            state_machine_factory=MetadataStateMachine,
        )  # fmt: skip
        self.ports: dict[int, int] = {}
        self.hubs: dict[int, WatchHub] = {}
        self.services: dict[int, MetadataServices] = {}
        self._scopes: dict[int, trio.CancelScope] = {}

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{self.ports[n]}" for n in sorted(self.ports)]

    def node_at(self, endpoint: str | None) -> int:
        return next(n for n, p in self.ports.items() if endpoint == f"127.0.0.1:{p}")

    async def serve(self, node_id: int) -> None:
        _, services = await self.cluster.start_metadata(node_id, self.limits)
        self.hubs[node_id] = services.hub
        self.services[node_id] = services

        async def run(*, task_status: trio.TaskStatus[int]) -> None:
            with trio.CancelScope() as scope:  # the API lives and dies with its node
                self._scopes[node_id] = scope
                port = self.ports.get(node_id, 0)
                await services.run("127.0.0.1", port, task_status=task_status)

        self.ports[node_id] = await self.nursery.start(run)

    async def stop(self, node_id: int) -> None:
        self._scopes[node_id].cancel()
        await self.cluster.stop(node_id)

    async def state(self) -> MetadataState:
        """The leader's state once every running node applied everything."""
        await self.cluster.wait_converged()
        leader = await self.cluster.wait_for_leader()
        assert leader.node is not None
        sm = leader.node.state_machine
        assert isinstance(sm, MetadataStateMachine)
        return sm.state

    async def write(self, command: str, args: dict[str, Any]) -> int:
        return await write_metadata(self.ports, self.cluster, command, args)


@asynccontextmanager
async def control_plane(
    limits: HubLimits | None = None, seed: int = 1
) -> AsyncIterator[ControlPlane]:
    async with trio.open_nursery() as nursery:
        cp = ControlPlane(nursery, limits, seed)
        for node_id in (1, 2, 3):
            await cp.serve(node_id)
        await cp.write("set_tenant", {"name": "acme"})
        yield cp
        nursery.cancel_scope.cancel()
