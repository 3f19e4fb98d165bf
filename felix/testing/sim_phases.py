"""The phases of one run: the opening script (if any), the random faults, then healing
and the liveness check.

Why a module: what happens *when* is the plan's, and these are the only parts that read
the plan's schedule.  They act on the cluster only through `World`, `Network` and
`Clients` (and schedule events); none of those knows which phase it is in.

* `ScriptRunner` runs a `felix.testing.sim_scripts.Script` on a healthy network, on-time
  clocks and a quick disk, with the clients paused, and tells the caller when it is over.
* `FaultInjector` schedules the clients and the plan's random faults and turns each
  fault event into what it does to the cluster (none once the run is healing).
* `Liveness` heals everything at the end of the fault phase; then a leader must commit a
  fresh probe on every node within `FaultPlan.liveness_ms`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

from felix.raft.types import Campaign, Propose, Role, TransferLeader
from felix.testing.checkers import ClusterChecker
from felix.testing.faults import HEALTHY_NETWORK, ChurnKind, FaultPlan
from felix.testing.sim_clients import Clients
from felix.testing.sim_events import (
    Scheduler,
    _Churn,
    _Crash,
    _Heal,
    _LivenessDeadline,
    _PartitionEnd,
    _PartitionStart,
    _PowerLoss,
    _Restart,
    _ScriptWake,
)
from felix.testing.sim_network import Network
from felix.testing.sim_scripts import (
    Applied,
    CaughtUp,
    Committed,
    CrashNodes,
    CrashOnWrite,
    Holds,
    IsLeader,
    Links,
    RestartNodes,
    Script,
    ScriptAction,
    ScriptCondition,
    StartCampaign,
    Write,
)
from felix.testing.sim_world import PROBE_REQUEST_BASE, World, _Node

if TYPE_CHECKING:
    from felix.testing.sim_membership import Operator

__all__ = ["FaultInjector", "Liveness", "ScriptRunner"]

SCRIPT_FSYNC_MS_MAX = 2.0  # while a script runs: its waits assume a quick disk


class ScriptRunner:
    """Runs the plan's script: `start` once, then `progress` after every event until it
    returns True (the script is over, the random faults may start)."""

    def __init__(
        self,
        script: Script,
        plan: FaultPlan,
        sched: Scheduler,
        world: World,
        network: Network,
        clients: Clients,
        fired: Counter[str],
    ) -> None:
        self.script, self.plan, self.sched = script, plan, sched
        self.world, self.network, self.clients, self.fired = world, network, clients, fired
        self.running = False
        self.step = 0
        self.deadline = 0.0
        self.retry_at = math.inf
        self.mark = 0  # the log index the steps talk about (see `felix.testing.sim_scripts`)
        self.steps: list[str] = []  # per step done: "ok" or "timeout"

    def start(self) -> bool:
        """Start the script; True if it is over already (no step had to wait)."""
        self.running = True
        self.clients.paused = True  # (one writes when the script says)
        self.network.faults = HEALTHY_NETWORK
        self.world.clock_rates = [1.0] * self.plan.nodes
        self.world.fsync_ms_max = min(self.plan.fsync_ms_max, SCRIPT_FSYNC_MS_MAX)
        self.step = -1
        return self._next_step()

    def progress(self) -> bool:
        """After every event: has the waiting step's condition come true (or timed out)?
        True once the script is over."""
        step = self.script.steps[self.step]
        assert step.until is not None
        if self._holds(step.until):
            self.steps.append("ok")
        elif self.sched.now >= self.deadline:
            self.steps.append("timeout")
            self.sched.note(f"script {self.script.name} step {self.step}: timed out")
        else:
            if step.retry_ms is not None and self.sched.now >= self.retry_at:
                self._do(step.do)
                self.retry_at = self.sched.now + step.retry_ms
                self.sched.at(step.retry_ms, _ScriptWake(self.step))
            return False
        return self._next_step()

    def _next_step(self) -> bool:
        """Start steps until one has to wait (False) or the script is over (True)."""
        script = self.script
        while True:
            self.step += 1
            if self.step == len(script.steps):
                self._end()
                return True
            step = script.steps[self.step]
            self.sched.note(f"script {script.name} step {self.step}: {step}")
            self._do(step.do)
            if step.until is None or self._holds(step.until):
                self.steps.append("ok")
                continue
            now = self.sched.now
            self.deadline = now + step.timeout_ms
            self.sched.at(step.timeout_ms, _ScriptWake(self.step))
            self.retry_at = math.inf
            if step.retry_ms is not None:
                self.retry_at = now + step.retry_ms
                self.sched.at(step.retry_ms, _ScriptWake(self.step))
            return False

    def _end(self) -> None:
        """Back to the plan's network, clocks and disk; nodes left down come back."""
        self.running = False
        self.clients.paused = False
        self.fired[self.script.name] += 1
        self.network.reset(self.plan.network)
        self.world.clock_rates = list(self.plan.clock_rates)
        self.world.fsync_ms_max = self.plan.fsync_ms_max
        for node in self.world.nodes.values():
            node.crash_on_write = False
            if node.core is None:
                self.sched.at(self.sched.rng.uniform(10.0, 100.0), _Restart(node.node_id))

    def _do(self, actions: Sequence[ScriptAction]) -> None:
        nodes = self.world.nodes
        for action in actions:
            if isinstance(action, Links):
                self.network.set_links(action)
            elif isinstance(action, CrashNodes):
                for node_id in action.nodes:
                    if nodes[node_id].core is not None:
                        self.world.crash(nodes[node_id], None, lose_unsynced=True)
            elif isinstance(action, CrashOnWrite):
                for node_id in action.nodes:
                    nodes[node_id].crash_on_write = True
            elif isinstance(action, RestartNodes):
                for node_id in action.nodes:
                    node = nodes[node_id]
                    node.crash_on_write = False
                    if node.core is None:
                        self.world.boot(node)
            elif isinstance(action, StartCampaign):
                node = nodes[action.node]
                if node.core is not None:
                    self.world.step(node, Campaign())
            else:
                self._write(action)

    def _write(self, action: Write) -> None:
        core = self.world.nodes[action.node].core
        if core is None:
            return
        mark = core.last_index + 1
        if self.clients.scripted_write(action.node):
            self.mark = self.world.crash_mark = mark

    def _holds(self, cond: ScriptCondition) -> bool:
        nodes, mark = self.world.nodes, self.mark
        if isinstance(cond, IsLeader):
            return any(_role(nodes[n]) is Role.LEADER for n in cond.nodes)
        if isinstance(cond, CaughtUp):
            leader = self.world.current_leader()
            if leader is None or leader.core is None:
                return False
            last = leader.core.last_index
            return all(n.applied >= last for n in nodes.values() if n.core is not None)
        if isinstance(cond, Holds):
            return all(self._holds_mark(nodes[n], cond.durable) for n in cond.nodes)
        node = nodes[cond.node]
        if node.core is None:
            return False
        if isinstance(cond, Committed):
            return node.core.commit_index >= mark
        assert isinstance(cond, Applied)
        return node.applied >= mark

    def _holds_mark(self, node: _Node, durable: bool) -> bool:
        if durable:
            return node.model.last_index >= self.mark
        return node.core is not None and node.core.last_index >= self.mark


def _role(node: _Node) -> Role | None:
    return node.core.role if node.core is not None else None


class Liveness:
    """From the end of the fault phase (``healing``): propose a probe to each new leader;
    ``live`` once one probe is applied on every node, a violation if not in time."""

    def __init__(
        self,
        plan: FaultPlan,
        sched: Scheduler,
        world: World,
        network: Network,
        clients: Clients,
        checker: ClusterChecker,
        operator: Operator | None = None,
    ) -> None:
        self.plan, self.sched, self.world = plan, sched, world
        self.network, self.clients, self.checker = network, clients, checker
        self.operator = operator  # makes no more membership changes once healing
        self.healing = False
        self.live = False
        self.probe_terms: set[int] = set()
        self.probe_count = 0

    def on_heal(self, _event: _Heal) -> None:
        """End of the fault phase: heal the network, clocks and crashed nodes."""
        self.healing = True
        self.clients.paused = True
        if self.operator is not None:
            self.operator.stop()
        self.network.heal()
        self.world.heal()
        self.sched.at(self.plan.liveness_ms, _LivenessDeadline())

    def progress(self) -> None:
        """After every event while healing: probe a new leader; live yet?"""
        leader = self.world.current_leader()
        probes = self.world.probes
        if probes.retry_at_ms is not None and self.sched.now >= probes.retry_at_ms:
            probes.retry_at_ms = None
            self.probe_terms.clear()
        if leader is not None and leader.core is not None:
            term = leader.core.term
            if term not in self.probe_terms:
                self.probe_terms.add(term)
                self.probe_count += 1
                request_id = PROBE_REQUEST_BASE + self.probe_count
                self.world.step(leader, Propose(request_id, f"probe|{term}".encode()))
        applied_everywhere = min(n.applied for n in self.world.serving_nodes())
        for index, term in probes.accepted:
            record = self.checker.applied.get(index)
            if record and record.term == term and applied_everywhere >= index:
                self.live = True

    def on_deadline(self, _event: _LivenessDeadline) -> None:
        if not self.live:
            states = ", ".join(
                f"{n.node_id}:{n.core.role.value}/t{n.core.term}/c{n.core.commit_index}"
                f"/a{n.applied}"
                for n in self.world.nodes.values()
                if n.core is not None
            )
            self.checker.fail(
                "liveness",
                f"no probe applied on every node {self.plan.liveness_ms:.0f}ms after healing "
                f"[{states}]",
            )


class FaultInjector:
    """The fault phase: `schedule` starts the clients and lays out the plan's faults;
    each fault event then strikes (unless `Liveness` is healing already)."""

    def __init__(
        self,
        plan: FaultPlan,
        sched: Scheduler,
        world: World,
        network: Network,
        clients: Clients,
        liveness: Liveness,
        fired: Counter[str],
    ) -> None:
        self.plan, self.sched, self.world, self.network = plan, sched, world, network
        self.clients, self.liveness, self.fired = clients, liveness, fired

    def schedule(self) -> None:
        """Clients and the random faults, from now on (after the script, if any)."""
        plan, at = self.plan, self.sched.at
        self.clients.start()
        for i, episode in enumerate(plan.partitions):
            at(episode.start_ms, _PartitionStart(i, episode))
            at(episode.start_ms + episode.duration_ms, _PartitionEnd(i))
        for crash in plan.crashes:
            at(crash.start_ms, _Crash(crash))
        for i, at_ms in enumerate(plan.power_losses):
            at(at_ms, _PowerLoss(at_commit=i % 2 == 0))
        for churn in plan.churn:
            at(churn.at_ms, _Churn(churn))
        at(plan.fault_phase_ms, _Heal())

    def on_partition_start(self, event: _PartitionStart) -> None:
        if self.liveness.healing:
            return
        leader = self.world.current_leader()
        leader_id = leader.node_id if leader is not None else None
        self.network.start_partition(event.episode_id, event.episode, leader_id)

    def on_partition_end(self, event: _PartitionEnd) -> None:
        self.network.end_partition(event.episode_id)

    def on_crash(self, event: _Crash) -> None:
        if self.liveness.healing:
            return
        victim = self.world.crash_victim(event.episode.node)
        if victim is None:
            return
        if event.episode.at_storage_op:
            victim.crash_armed_ms = event.episode.downtime_ms
        else:
            self.world.crash(victim, event.episode.downtime_ms)

    def on_power_loss(self, event: _PowerLoss) -> None:
        """Every running node loses power at once; each comes back on its own.  Armed
        "at commit", it strikes right after a leader advances its commit index, when
        followers' acks may still be unsynced (the window a persist-order bug opens)."""
        if self.liveness.healing:
            return
        if event.at_commit:
            self.world.power_loss_armed = True
            return
        self.fired["power_loss"] += 1
        self.world.power_loss()

    def on_churn(self, event: _Churn) -> None:
        if self.liveness.healing:
            return
        rng = self.sched.rng
        if event.event.kind is ChurnKind.TRANSFER_LEADER:
            leader = self.world.current_leader()
            if leader is None:
                return
            voters = self.world.conf.voters
            if self.world.members is not None and leader.core is not None:
                voters = leader.core.conf.voters  # membership changes: its configuration
            targets = [n for n in voters if n != leader.node_id]
            if not targets:
                return  # a single voter has no one to hand leadership to
            target = rng.choice(targets)
            self.fired["leader_transfer"] += 1
            self.world.step(leader, TransferLeader(target))
        else:
            alive = [n for n in self.world.nodes.values() if n.alive]
            if alive:
                self.fired["campaign"] += 1
                self.world.step(rng.choice(alive), Campaign())
