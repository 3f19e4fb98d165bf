"""The leader's replica manager: leader soft state that turns time and broker reports
into replicated commands (docs/architecture.md §13).

Only the control-plane leader acts; a follower's `Rebalancer` keeps nothing.  Every
``TICK_S`` the leader:

- marks a broker whose state is ``down`` for longer than ``replica_down_timeout_s``
  (counted from when this leader first saw it down: a new leader starts the clock
  again, which can only delay re-replication) with ``expire_node``;
- completes a drain (``ack_drain``) once every live broker has reported
  ``applied_version`` >= the drain's ``drained_version`` (KRaft-style controlled
  shutdown: nobody still routes to the draining broker);
- removes a decommissioned broker that holds nothing (``remove_node``);
- runs the pure planner (`felix.metadata.planner`) when the inputs that matter changed
  (nodes, streams' replication factors, config, moves in flight), every
  ``rebalance_interval_s``, or on request (`run_now`: ``felix ctl rebalance run``,
  forwarded to the leader), and proposes its steps as ordinary commands.

A leader change loses nothing: the new leader plans again from the replicated state,
and every command is validated at apply, so a stale plan is refused, not applied.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass

import trio

from felix.metadata import commands as cmds
from felix.metadata.config import config_bool, config_int
from felix.metadata.model import EVACUATE_DECOMMISSION, NodeState
from felix.metadata.planner import Plan, cluster_health, commands_for, input_of, limits_of, plan
from felix.metadata.state import MetadataState
from felix.proto.codes import ErrorCode
from felix.raft.types import Role
from felix.server.metadata_sm import MetadataStore
from felix.server.outcome import Outcome
from felix.server.raft_node import RaftNode
from felix.server.sessions import SessionTracker

log = logging.getLogger("felix.rebalancer")

TICK_S = 0.5


@dataclass(slots=True)
class RebalanceStats:
    """What /metrics shows (docs/architecture.md §9)."""

    passes: int = 0
    pass_seconds: float = 0.0  # the last pass: input + plan + commands
    moves_proposed: int = 0
    moves_completed: int = 0
    moves_cancelled: int = 0
    leader_moves_proposed: int = 0
    refused: int = 0  # commands of a plan the state refused (stale plans)
    under_replicated: int = 0
    offline: int = 0
    reassigning: int = 0
    replica_skew: int = 0
    leader_skew: int = 0


class Rebalancer:
    def __init__(self, node: RaftNode, store: MetadataStore, sessions: SessionTracker) -> None:
        self.node = node
        self.store = store
        self.sessions = sessions
        self.stats = RebalanceStats()
        self.ticks = 0
        self._term: int | None = None
        self._down_since: dict[tuple[int, int], float] = {}  # (node, epoch) -> first seen
        self._signature: Hashable = None
        self._last_pass = -float("inf")
        self._targets: dict[str, frozenset[int]] = {}  # in-flight shard -> target set
        self._pass_lock = trio.Lock()  # one tick or requested pass at a time

    async def run(self) -> None:
        while True:
            await trio.sleep(TICK_S)
            await self.tick()

    async def run_now(self, _: bytes) -> Outcome:
        """The `ForwardKind.REBALANCE` handler (``felix ctl rebalance run``), on the
        leader: one planner pass now, whatever ``auto_rebalance`` says, serialised with
        the ticks; the outcome's index is the applied version after its steps."""
        async with self._pass_lock:
            if self.node.core.role is not Role.LEADER:
                return Outcome.failed(ErrorCode.NOT_LEADER, "this node no longer leads")
            steps, accepted, refused = await self._pass(self.store.state)
        summary = (
            f"proposed {accepted} command(s): {len(steps.moves)} move(s),"
            f" {len(steps.leader_moves)} leader step(s), {len(steps.finishes)} finish(es)"
        )
        if refused:
            summary += f"; {refused} refused at apply (the state moved on; see the leader's log)"
        return Outcome(self.store.version, detail=summary)

    async def tick(self) -> None:
        """One round of the leader's duties (a no-op on followers)."""
        async with self._pass_lock:
            await self._tick()

    async def _tick(self) -> None:
        self.ticks += 1
        core = self.node.core
        if core.role is not Role.LEADER:
            self._term = None
            self._down_since.clear()
            return
        if self._term != core.term:  # a new leadership: soft state starts afresh
            self._term = core.term
            self._down_since.clear()
            self._signature = None
        state = self.store.state
        self._count_ended(state)
        await self._expire(state)
        await self._ack_drains(state)
        await self._remove_emptied(state)
        await self._maybe_plan(self.store.state)

    def _count_ended(self, state: MetadataState) -> None:
        """Moves that left the in-flight set since the last tick: completed if the shard
        reached its target, else cancelled."""
        for key, target in self._targets.items():
            if key in state.reassigning:
                continue
            shard = state.shards.get(key)
            if shard is not None and frozenset(shard.replicas) == target:
                self.stats.moves_completed += 1
            else:
                self.stats.moves_cancelled += 1
        self._targets = {k: frozenset(state.shards[k].target) for k in state.reassigning}

    async def _propose(self, command: cmds.Command) -> bool:
        outcome = await self.node.propose_outcome(cmds.encode_command(command))
        if outcome.error is not None:
            self.stats.refused += 1
            log.info("rebalancer: %s refused: %s %s", command.NAME, outcome.error, outcome.detail)
            return False
        return True

    async def _expire(self, state: MetadataState) -> None:
        now = trio.current_time()
        timeout_s = config_int(state.config_values(), "replica_down_timeout_s")
        down = {(n.id, n.epoch) for n in state.nodes.values() if n.state == NodeState.DOWN}
        self._down_since = {k: self._down_since.get(k, now) for k in down}
        for (node_id, epoch), since in sorted(self._down_since.items()):
            node = state.nodes[node_id]
            if not node.evacuate and now - since >= timeout_s:
                log.info("broker %d down for %d s: re-replicating its shards", node_id, timeout_s)
                await self._propose(cmds.ExpireNode(node_id, epoch))

    async def _ack_drains(self, state: MetadataState) -> None:
        live = [n.id for n in state.nodes.values() if n.state == NodeState.UP]
        for node in sorted(state.nodes.values(), key=lambda n: n.id):
            version = node.drained_version
            if not node.draining or version is None or node.drain_acked:
                continue
            behind = [b for b in live if self.sessions.applied.get(b, -1) < version]
            if not behind:
                await self._propose(cmds.AckDrain(node.id, version))

    async def _remove_emptied(self, state: MetadataState) -> None:
        for node in sorted(state.nodes.values(), key=lambda n: n.id):
            if node.evacuate == EVACUATE_DECOMMISSION and not state.node_shards(node.id):
                log.info("broker %d decommissioned and empty: removing it", node.id)
                await self._propose(cmds.RemoveNode(node.id))

    def _inputs(self, state: MetadataState) -> Hashable:
        """What a plan depends on besides shard placement: nodes, factors, config, moves
        in flight.  Placement changes by this leader's steps (after which it plans again
        anyway) or an operator's, which also change one of these."""
        moving = tuple(
            (k, state.shards[k].catching_up, state.shards[k].leader)
            for k in sorted(state.reassigning)
        )
        return (
            tuple(sorted((n.id, n.state, n.draining, n.evacuate) for n in state.nodes.values())),
            tuple(sorted((s.name, s.replication_factor, s.shards) for s in state.streams.values())),
            tuple(sorted(state.config_values().items())),
            moving,
        )

    async def _maybe_plan(self, state: MetadataState) -> None:
        values = state.config_values()
        interval_s = config_int(values, "rebalance_interval_s")
        now = trio.current_time()
        if not config_bool(values, "auto_rebalance"):
            return
        signature = self._inputs(state)
        due = now - self._last_pass >= interval_s
        if not due and signature == self._signature:
            return
        self._last_pass = now
        _, accepted, _ = await self._pass(state)
        if not accepted:
            self._signature = signature

    async def _pass(self, state: MetadataState) -> tuple[Plan, int, int]:
        """Plan over ``state`` and propose the steps: (plan, accepted, refused).  After
        any accepted step the next tick plans again: the plan was cut by the budgets,
        and brokers may finish moves while we propose, so the inputs seen now could
        already include their effect.  Otherwise ticks wait for the inputs to change."""
        steps, commands = self.plan_now(state)
        accepted = 0
        for command in commands:
            accepted += await self._propose(command)
        self._signature = None
        self.stats.moves_proposed += len(steps.moves)
        self.stats.leader_moves_proposed += len(steps.leader_moves)
        return steps, accepted, len(commands) - accepted

    def plan_now(self, state: MetadataState) -> tuple[Plan, list[cmds.Command]]:
        """One planner pass over ``state``, timed, with the cluster-health gauges."""
        started = time.perf_counter()
        steps = plan(input_of(state), limits_of(state))
        commands = commands_for(state, steps)
        stats = self.stats
        stats.pass_seconds = time.perf_counter() - started
        stats.passes += 1
        stats.reassigning = len(state.reassigning)
        health = cluster_health(state)
        stats.under_replicated, stats.offline, stats.replica_skew, stats.leader_skew = health
        return steps, commands
