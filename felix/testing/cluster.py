"""Tier B (docs/architecture.md §10): real `RaftNode` drivers over the in-memory network and WAL.

Run it inside ``trio.run(..., clock=MockClock(autojump_threshold=0))``: every wait is a
`trio.sleep` or a channel, nothing touches a thread or socket, so virtual time runs as
fast as the CPU allows and a seeded scheduler makes a run repeatable.

Each node keeps its `MemoryWal` (its simulated disk) across stops, so a node can be
stopped cleanly (its nursery cancelled — the chaos tests' "cancel mid-replication"), or
stopped and then power-cut (`crash=True` drops everything not yet synced), and restarted
from what its disk holds.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import trio

from felix.broker.connection import ClientConnection, ConnectionClosed
from felix.proto.client_messages import Error, Record, WriteRequest, WriteResult
from felix.proto.raft_messages import ConfState, SnapshotMeta
from felix.raft.ready import Ready
from felix.raft.types import RaftConfig
from felix.server.auth import Authenticator
from felix.server.graph import MetadataParts, MetadataServices
from felix.server.metadata_sm import metadata_outcome
from felix.server.raft_node import NodeSettings, NodeStatus, RaftNode, StateMachine
from felix.server.requests import ResultOutcome, applied_ok
from felix.server.watch_hub import HubLimits
from felix.server.ws_server import ServerTls
from felix.storage.memory_wal import MemoryWal
from felix.storage.segmented_wal import SegmentedWal
from felix.testing.kv import KvStateMachine
from felix.transport.base import Deliver, PeerTransport
from felix.transport.memory import MemoryNetwork, MemoryTransport

TICK_S = 0.01
FSYNC_S = 0.0002  # a simulated fsync takes virtual time, as a real one takes real time


class DelayedWal:
    """The memory WAL with an fsync that takes (virtual) time.

    Without it, a write path that never sleeps would commit forever at one instant and
    MockClock would never advance.  The delay comes before the write, so a cancellation
    during it is a crash before the batch reached the disk."""

    def __init__(self, wal: SegmentedWal, fsync_s: float) -> None:
        self._wal = wal
        self._fsync_s = fsync_s

    async def save(self, ready: Ready) -> None:
        await trio.sleep(self._fsync_s)
        await self._wal.save(ready)

    def start_save(self, ready: Ready) -> None:
        """Never started early: the delay must run on the awaiting task."""
        return None

    async def save_snapshot(self, meta: SnapshotMeta, data: bytes) -> None:
        await trio.sleep(self._fsync_s)
        await self._wal.save_snapshot(meta, data)

    async def aclose(self) -> None:
        await self._wal.aclose()


@dataclass
class SimNode:
    node_id: int
    disk: MemoryWal
    node: RaftNode | None = None
    scope: trio.CancelScope | None = None
    stopped: trio.Event = field(default_factory=trio.Event)
    incarnation: int = 0

    @property
    def running(self) -> bool:
        return self.node is not None and self.scope is not None and not self.stopped.is_set()

    @property
    def kv(self) -> KvStateMachine:
        assert self.node is not None
        sm = self.node.state_machine
        assert isinstance(sm, KvStateMachine)
        return sm


class TrioCluster:
    def __init__(
        self,
        nursery: trio.Nursery,
        voters: Iterable[int],
        *,
        seed: int = 0,
        all_ids: Iterable[int] = range(1, 6),
        settings: NodeSettings | None = None,
        raft_overrides: dict[str, object] | None = None,
        state_machine_factory: Callable[[], StateMachine] = KvStateMachine,
    ) -> None:
        self.state_machine_factory = state_machine_factory
        self.nursery = nursery
        self.seed = seed
        self.voters = tuple(sorted(voters))
        self.all_ids = set(all_ids) | set(self.voters)
        self.network = MemoryNetwork(seed)
        self.settings = settings or NodeSettings(
            tick_s=TICK_S, snapshot_entries=10_000, snapshot_in_thread=False
        )
        self.raft_overrides = raft_overrides or {}
        self.nodes: dict[int, SimNode] = {}

    def bootstrap_conf(self) -> ConfState:
        return ConfState(self.voters, ())

    async def start(
        self,
        node_id: int,
        *,
        conf: ConfState | None = None,
        state_machine: StateMachine | None = None,
        outcome_of: ResultOutcome = applied_ok,
    ) -> SimNode:
        """Start (or restart) a node; ``state_machine`` defaults to a fresh one from the
        factory (a metadata node passes the one its `MetadataParts` were built around)."""
        sim = self.nodes.get(node_id)
        if sim is None:
            sim = self.nodes[node_id] = SimNode(node_id, MemoryWal())
        assert not sim.running, f"node {node_id} is already running"
        sim.incarnation += 1
        wal = DelayedWal(sim.disk.as_async(), FSYNC_S)
        boot = sim.disk.open(conf or self.bootstrap_conf())
        config = RaftConfig(node_id=node_id, **self.raft_overrides)  # type: ignore[arg-type]

        def transport(deliver: Deliver) -> PeerTransport:
            return MemoryTransport(self.network, node_id, self.all_ids, deliver)

        rng = random.Random(f"{self.seed}:{node_id}:{sim.incarnation}")
        sim.node = RaftNode(
            config,
            boot,
            wal,
            transport,
            state_machine or self.state_machine_factory(),
            settings=self.settings,
            rng=rng,
            outcome_of=outcome_of,
        )
        sim.stopped = trio.Event()
        sim.scope = await self.nursery.start(self._run, sim)
        return sim

    async def _run(self, sim: SimNode, *, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        assert sim.node is not None
        try:
            with trio.CancelScope() as scope:
                await sim.node.run(task_status=_Started(task_status, scope))
        finally:
            sim.stopped.set()

    async def start_metadata(
        self,
        node_id: int,
        limits: HubLimits | None = None,
        *,
        bootstrap_token_file: Path | None = None,
        now_ms: Callable[[], int] | None = None,
        tls: ServerTls | None = None,
        cluster_id: str = "",
    ) -> tuple[SimNode, MetadataServices]:
        """Start a node serving metadata: its graph built whole before it runs (the
        caller runs ``services.run`` for the client API).  With a bootstrap token file
        the client API authenticates every connection (`felix.server.auth`)."""
        parts = MetadataParts.build(limits)
        sim = await self.start(
            node_id, state_machine=parts.state_machine, outcome_of=metadata_outcome
        )
        assert sim.node is not None
        auth = None
        if bootstrap_token_file is not None:
            clock = now_ms or (lambda: int(time.time() * 1000))
            auth = Authenticator(parts.store.tokens, bootstrap_token_file, clock, cluster_id)
        return sim, MetadataServices(sim.node, parts, auth=auth, tls=tls)

    async def start_all(self) -> None:
        for node_id in self.voters:
            await self.start(node_id)

    async def stop(self, node_id: int, *, crash: bool = False) -> None:
        """Cancel the node's nursery (anywhere it happens to be); with ``crash`` also lose
        every write that was not fsynced, like a power cut."""
        sim = self.nodes[node_id]
        if sim.scope is not None:
            sim.scope.cancel()
        await sim.stopped.wait()
        if crash:
            sim.disk.crash("lose")
        else:
            sim.disk.crash("keep")  # clean stop: reopen from what was written

    def running(self) -> list[SimNode]:
        return [sim for sim in self.nodes.values() if sim.running]

    def status(self) -> dict[int, NodeStatus]:
        return {s.node_id: s.node.status() for s in self.running() if s.node is not None}

    def leader(self) -> SimNode | None:
        leaders = [s for s in self.running() if s.node and s.node.status().role == "leader"]
        if not leaders:
            return None
        return max(leaders, key=lambda s: s.node.status().term if s.node else 0)

    async def wait_for_leader(self, timeout_s: float = 30.0) -> SimNode:
        with trio.fail_after(timeout_s):
            while True:
                leader = self.leader()
                if leader is not None and self._leader_is_stable(leader):
                    return leader
                await trio.sleep(TICK_S)

    def _leader_is_stable(self, leader: SimNode) -> bool:
        assert leader.node is not None
        term = leader.node.status().term
        return all(s.node is None or s.node.status().term <= term for s in self.running())

    async def wait_converged(self, timeout_s: float = 60.0) -> int:
        """Wait until every running node applied the same index as the leader's commit."""
        with trio.fail_after(timeout_s):
            while True:
                leader = self.leader()
                if leader is not None and leader.node is not None:
                    target = leader.node.status().commit_index
                    if target and all(
                        s.node is not None and s.node.applied_index >= target
                        for s in self.running()
                    ):
                        return target
                await trio.sleep(TICK_S)


class _Started:
    """Adapts ``task_status`` so the node's ``started()`` reports its cancel scope."""

    def __init__(self, outer: trio.TaskStatus[trio.CancelScope], scope: trio.CancelScope) -> None:
        self._outer = outer
        self._scope = scope

    def started(self, value: object = None) -> None:
        self._outer.started(self._scope)


RETRY_CODES = ("not_leader", "not_committed", "timeout", "unavailable")


async def write_metadata(
    ports: Mapping[int, int], cluster: TrioCluster, command: str, args: Record
) -> int:
    """One metadata write through the client API of whoever leads now, retried across
    leader changes like a real client; returns the version it was applied at."""
    while True:
        leader = await cluster.wait_for_leader()
        try:
            conn = await ClientConnection.open("127.0.0.1", ports[leader.node_id])
        except (OSError, ConnectionClosed):  # refused, or the node stopped mid-upgrade
            await trio.sleep(TICK_S)
            continue
        try:
            await conn.send(WriteRequest(1, command, args, None))
            reply = await conn.receive()
        except ConnectionClosed:
            await trio.sleep(TICK_S)
            continue
        finally:
            await conn.aclose()
        if isinstance(reply, WriteResult):
            return reply.version
        assert isinstance(reply, Error)
        if reply.code.value not in RETRY_CODES:
            raise AssertionError(f"{command} {args}: {reply.detail}")
        await trio.sleep(TICK_S)
