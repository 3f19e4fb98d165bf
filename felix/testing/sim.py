"""Tier-A deterministic whole-cluster simulation of the pure Raft cores (docs/architecture.md §10).

Theory of operation
-------------------
N `RaftCore`s (3 or 5) live in one process with no Trio, no clock and no threads.  One
heap of ``(time, seq, event)`` is the only scheduler and one ``random.Random(seed)`` the
only source of chance, so a seed replays bit for bit.  Each seed draws a `FaultPlan`
(`felix.testing.faults`): message drop, duplication, delay and reorder, symmetric,
non-transitive and one-way partitions (also around the current leader), crashes that lose
unsynced (possibly torn) writes, per-node clock rates, leadership transfers, forced
campaigns and snapshot/compaction every K applied entries.

A node is driven exactly as `felix.raft.ready` says: ``send_now`` goes out at once, the
batch is written to the node's real WAL (`felix.storage.memory_wal.MemoryWal` on
simulated files) without fsync, and becomes durable only when the simulated fsync
completes and the driver calls ``sync`` (so a crash between "sent" and "durable"
happens); then ``Persisted`` is stepped, ``send_after_persist`` goes out, committed
entries are applied, reads are answered, and ``compact_to`` compacts the WAL.  One batch
is on disk at a time; inputs keep reaching the core meanwhile.  A snapshot the node takes
itself is saved to the WAL's snapshot store before the core hears ``SnapshotTaken``.

A crash is a power loss of the simulated disk (`MemoryWal.crash`): the unsynced batch
record is lost, kept whole, or torn (a prefix kept), and a restart is the production
recovery, ``open`` -> `BootState` -> a fresh `RaftCore`.  Next to each WAL runs a model of
its durable image (`felix.testing.simdisk.SimDisk`); the checkers read "durable" from
the model, and every recovery -- and a final power loss at the end of each run -- must
give back exactly the model's image (the ``recovery`` invariant), so a WAL that loses or
invents anything fails the seed.

Some seeds open with a scripted schedule (`felix.testing.sim_scripts.Script`: Raft's figure
8, followers crashing right after an acknowledgement) before the random faults start.

Clients (`felix.testing.clients`) write unique values and read keys of a replicated
register through the node they believe leads; the history feeds the linearizability
checker.  After the fault phase everything heals and the cluster must elect a leader and
commit a fresh probe on every node within `FaultPlan.liveness_ms` (liveness).
`ClusterChecker` watches every step.

Usage
-----
Soak many seeds and print a summary (exit status 1 if any seed failed)::

    python -m felix.testing.sim --seeds 20000 --start 0

Replay one seed with a full event trace (also ``FELIX_SIM_SEED=<n> pytest tests/sim``)::

    python -m felix.testing.sim --seed 1234 --verbose

Run with a sabotaged core to see the checkers fire (``--disable`` turns checkers off,
``--script figure8`` / ``ack_crash`` opens every seed with that schedule)::

    python -m felix.testing.sim --seeds 50 --sabotage ack_before_persist
    python -m felix.testing.sim --seeds 5 --script figure8 --sabotage commit_old_term \\
        --disable leader_commit_rule
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from felix.proto.raft_messages import (
    ConfState,
)
from felix.raft.types import (
    Campaign,
    Propose,
    Role,
    TransferLeader,
)
from felix.testing.checkers import ClusterChecker, InvariantViolation
from felix.testing.clients import (
    ClientOp,
    ClientRequest,
    ReplyOutcome,
)
from felix.testing.faults import (
    HEALTHY_NETWORK,
    SCRIPTS,
    ChurnKind,
    FaultPlan,
    generate_plan,
    script_plan,
)
from felix.testing.linearizability import Operation, OpKind, check_register_history
from felix.testing.sim_events import (
    CLIENT_LINK_MS,
    Scheduler,
    _Churn,
    _ClientArrive,
    _ClientIssue,
    _ClientReplyArrive,
    _ClientRetry,
    _ClientTimeout,
    _Crash,
    _CrashNow,
    _Deliver,
    _FsyncDone,
    _Heal,
    _LivenessDeadline,
    _PartitionEnd,
    _PartitionStart,
    _PowerLoss,
    _Restart,
    _ScriptWake,
    _Tick,
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

__all__ = ["SimResult", "Simulation", "main", "replay_line", "run_seed"]

EVENTS_MAX = 3_000_000  # a runaway (zero-delay loop) fails instead of hanging
SCRIPT_FSYNC_MS_MAX = 2.0  # while a script runs: its waits assume a quick disk


def replay_line(seed: int) -> str:
    return f"FELIX_SIM_SEED={seed} pytest tests/sim"


@dataclass(slots=True)
class _Client:
    client_id: int
    believed_leader: int
    op: ClientOp | None = None
    next_seq: int = 0


@dataclass(frozen=True, slots=True)
class SimResult:
    seed: int
    plan: FaultPlan
    violation: InvariantViolation | None
    fired: dict[str, int]
    history_ops: int
    client_acks: int
    events: int
    sim_ms: float
    trace_hash: str
    leaders_elected: int
    script_steps: tuple[str, ...] = ()  # per script step: "ok" or "timeout"

    @property
    def ok(self) -> bool:
        return self.violation is None

    def report(self) -> str:
        """What a failing run prints: the plan, the violation, the replay command."""
        return (
            f"FAULT PLAN {self.plan.describe()}\n"
            f"VIOLATION {self.violation}\n"
            f"replay: {replay_line(self.seed)}"
        )


# --------------------------------------------------------------------------- simulation


class Simulation:
    """One seeded run: build with a plan, call `run` once."""

    def __init__(
        self,
        plan: FaultPlan,
        *,
        sabotage: frozenset[str] = frozenset(),
        disabled: frozenset[str] = frozenset(),
        trace: list[str] | None = None,
        hash_trace: bool = False,
        voters: int | None = None,
    ) -> None:
        """``voters``: only the plan's first ``voters`` nodes vote, the others boot as
        learners (thesis §4.2.1); ``voters=1`` is how a cluster grown from one node
        starts.  None: every node votes."""
        self.plan = plan
        self.sched = Scheduler(plan.seed, trace=trace, hash_trace=hash_trace)
        self.checker = ClusterChecker(disabled)
        voter_count = plan.nodes if voters is None else voters
        assert 0 < voter_count <= plan.nodes, f"{voter_count} voters of {plan.nodes} nodes"
        self.conf = ConfState(
            voters=tuple(range(1, voter_count + 1)),
            learners=tuple(range(voter_count + 1, plan.nodes + 1)),
        )
        self.fired: Counter[str] = Counter()
        self.network = Network(plan.network, self.conf.voters, self.sched, self.fired)
        self.world = World(
            plan, self.conf, self.sched, self.network, self.checker, self.fired, sabotage=sabotage
        )
        self.nodes = self.world.nodes
        self.clients = [
            _Client(c, self.sched.rng.choice(self.conf.voters)) for c in range(plan.clients)
        ]
        self.history: list[Operation] = []
        self.in_liveness = False
        self.live = False
        self.probe_terms: set[int] = set()
        self.probe_count = 0
        self.script: Script | None = None  # while the plan's script runs
        self.script_step = 0
        self.script_deadline = 0.0
        self.script_retry_at = math.inf
        self.script_mark = 0
        self.script_steps: list[str] = []
        self.handlers: dict[type, Callable[[Any], None]] = {
            _Tick: self.world.on_tick,
            _Deliver: self.world.on_deliver,
            _FsyncDone: self.world.on_fsync,
            _ClientArrive: self.world.on_client_arrive,
            _ClientReplyArrive: self._on_client_reply,
            _ClientTimeout: self._on_client_timeout,
            _ClientIssue: self._on_client_issue,
            _ClientRetry: self._on_client_retry,
            _PartitionStart: self._on_partition_start,
            _PartitionEnd: self._on_partition_end,
            _Crash: self._on_crash,
            _CrashNow: self.world.on_crash_now,
            _PowerLoss: self._on_power_loss,
            _Restart: self.world.on_restart,
            _Churn: self._on_churn,
            _Heal: self._on_heal,
            _LivenessDeadline: self._on_liveness_deadline,
            _ScriptWake: lambda _event: None,  # the loop re-evaluates the script
        }

    # ------------------------------------------------------------------ scheduling

    def _schedule_plan(self) -> None:
        for node in self.nodes.values():
            self.world.boot(node)
        if self.plan.script is not None:
            self._start_script(self.plan.script)
        else:
            self._schedule_faults()

    def _schedule_faults(self) -> None:
        """Clients and the random faults, from now on (after the script, if any)."""
        plan = self.plan
        for client in self.clients:
            self.sched.at(
                self.sched.rng.uniform(0, plan.client_think_ms_max), _ClientIssue(client.client_id)
            )
        for i, episode in enumerate(plan.partitions):
            self.sched.at(episode.start_ms, _PartitionStart(i, episode))
            self.sched.at(episode.start_ms + episode.duration_ms, _PartitionEnd(i))
        for crash in plan.crashes:
            self.sched.at(crash.start_ms, _Crash(crash))
        for i, at_ms in enumerate(plan.power_losses):
            self.sched.at(at_ms, _PowerLoss(at_commit=i % 2 == 0))
        for churn in plan.churn:
            self.sched.at(churn.at_ms, _Churn(churn))
        self.sched.at(plan.fault_phase_ms, _Heal())

    def run(self) -> SimResult:
        violation: InvariantViolation | None = None
        try:
            self._schedule_plan()
            self._loop()
            self._final_checks()
        except InvariantViolation as exc:
            violation = exc
        except Exception as exc:  # a crash inside the core is a finding too
            detail = "".join(traceback.format_exception(exc)[-6:])
            violation = InvariantViolation("exception", f"at step {self.sched.step_no}: {detail}")
        return SimResult(
            seed=self.plan.seed,
            plan=self.plan,
            violation=violation,
            fired=dict(self.fired),
            history_ops=len(self.history),
            client_acks=len(self.checker.acked),
            events=self.sched.step_no,
            sim_ms=self.sched.now,
            trace_hash=self.sched.trace_hash(),
            leaders_elected=len(self.world.leader_terms),
            script_steps=tuple(self.script_steps),
        )

    def _loop(self) -> None:
        while self.sched.queue and not self.live:
            event = self.sched.pop()
            if self.sched.step_no > EVENTS_MAX:
                self.checker.fail("liveness", f"more than {EVENTS_MAX} events")
            self.sched.record(event)
            self.handlers[type(event)](event)
            if self.script is not None:
                self._script_progress()
            if self.in_liveness:
                self._liveness_progress()
        if not self.live:
            self.checker.fail("liveness", "event queue ran dry")

    def _settled_history(self) -> list[Operation]:
        """Drop unknown writes whose unique value no node ever applied: they never took
        effect (as etcd's robustness suite patches its histories).  Keeps the search
        small; unknown writes that were applied stay unknown-but-possible."""
        return [
            op
            for op in self.history
            if not (
                op.unknown and op.kind is OpKind.WRITE and op.value not in self.world.applied_values
            )
        ]

    def _final_checks(self) -> None:
        for client in self.clients:  # still in flight when the run stopped: unknown
            op = client.op
            if op is not None and op.kind is OpKind.WRITE:
                self.history.append(
                    Operation(client.client_id, op.call, math.inf, op.kind, op.key, op.value)
                )
        self.world.final_power_loss()
        self.checker.check_durability()
        result = check_register_history(self._settled_history())
        if not result.ok:
            why = "check ran out of budget" if result.exhausted else "not linearizable"
            ops = [op for op in self.history if op.key == result.key]
            path = _dump_history(self.plan.seed, ops)
            self.checker.fail(
                "linearizability", f"key {result.key}: {why}; {len(ops)} ops written to {path}"
            )

    # ------------------------------------------------------------------ clients

    def _on_client_issue(self, event: _ClientIssue) -> None:
        client = self.clients[event.client]
        if self.in_liveness or self.script is not None or client.op is not None:
            return  # (a paused client is restarted when the script ends)
        client.next_seq += 1
        key = f"k{self.sched.rng.randrange(self.plan.keys)}"
        if self.sched.rng.random() < 0.5:
            self._issue(client, OpKind.WRITE, key, client.believed_leader)
        else:
            self._issue(client, OpKind.READ, key, client.believed_leader)

    def _issue(self, client: _Client, kind: OpKind, key: str, target: int) -> None:
        value = f"c{client.client_id}.{client.next_seq}" if kind is OpKind.WRITE else None
        client.op = ClientOp(client.next_seq, kind, key, value, self.sched.step_no)
        client.op.target = target
        self._send_request(client, client.op)
        self.sched.at(self.plan.client_timeout_ms, _ClientTimeout(client.client_id, client.op.seq))

    def _send_request(self, client: _Client, op: ClientOp) -> None:
        op.attempt += 1
        request = ClientRequest(client.client_id, op.seq, op.attempt, op.kind, op.key, op.value)
        self.sched.at(self.sched.rng.uniform(*CLIENT_LINK_MS), _ClientArrive(op.target, request))

    def _on_client_reply(self, event: _ClientReplyArrive) -> None:
        reply = event.reply
        client = self.clients[reply.client]
        op = client.op
        if op is None or op.seq != reply.op_seq or op.attempt != reply.attempt:
            return  # an answer to an attempt the client gave up on
        if reply.outcome is ReplyOutcome.REFUSED:
            client.believed_leader = reply.leader_hint or self.sched.rng.choice(self.conf.voters)
            op.target = client.believed_leader
            self.sched.at(self.sched.rng.uniform(1.0, 10.0), _ClientRetry(client.client_id, op.seq))
            return
        if reply.outcome is ReplyOutcome.OK:
            client.believed_leader = op.target
            self.history.append(
                Operation(client.client_id, op.call, self.sched.step_no, op.kind, op.key,
                          op.value if op.kind is OpKind.WRITE else reply.value)
            )  # fmt: skip
            if op.kind is OpKind.WRITE:
                self.checker.observe_client_ack(reply.index, reply.term)
        self._finish_op(client)

    def _on_client_retry(self, event: _ClientRetry) -> None:
        client = self.clients[event.client]
        if client.op is not None and client.op.seq == event.op_seq:
            self._send_request(client, client.op)

    def _on_client_timeout(self, event: _ClientTimeout) -> None:
        client = self.clients[event.client]
        op = client.op
        if op is None or op.seq != event.op_seq:
            return
        if op.kind is OpKind.WRITE:
            self.history.append(
                Operation(client.client_id, op.call, math.inf, op.kind, op.key, op.value)
            )
        client.believed_leader = self.sched.rng.choice(self.conf.voters)
        self._finish_op(client)

    def _finish_op(self, client: _Client) -> None:
        client.op = None
        self.sched.at(
            self.sched.rng.uniform(0, self.plan.client_think_ms_max), _ClientIssue(client.client_id)
        )

    # ------------------------------------------------------------------ faults

    def _on_partition_start(self, event: _PartitionStart) -> None:
        if self.in_liveness:
            return
        leader = self.world.current_leader()
        leader_id = leader.node_id if leader is not None else None
        self.network.start_partition(event.episode_id, event.episode, leader_id)

    def _on_partition_end(self, event: _PartitionEnd) -> None:
        self.network.end_partition(event.episode_id)

    def _on_crash(self, event: _Crash) -> None:
        if self.in_liveness:
            return
        victim = self.world.crash_victim(event.episode.node)
        if victim is None:
            return
        if event.episode.at_storage_op:
            victim.crash_armed_ms = event.episode.downtime_ms
        else:
            self.world.crash(victim, event.episode.downtime_ms)

    def _on_power_loss(self, event: _PowerLoss) -> None:
        """Every running node loses power at once; each comes back on its own.  Armed
        "at commit", it strikes right after a leader advances its commit index, when
        followers' acks may still be unsynced (the window a persist-order bug opens)."""
        if self.in_liveness:
            return
        if event.at_commit:
            self.world.power_loss_armed = True
            return
        self.fired["power_loss"] += 1
        self.world.power_loss()

    def _on_churn(self, event: _Churn) -> None:
        if self.in_liveness:
            return
        if event.event.kind is ChurnKind.TRANSFER_LEADER:
            leader = self.world.current_leader()
            if leader is None:
                return
            targets = [n for n in self.conf.voters if n != leader.node_id]
            if not targets:
                return  # a single voter has no one to hand leadership to
            target = self.sched.rng.choice(targets)
            self.fired["leader_transfer"] += 1
            self.world.step(leader, TransferLeader(target))
        else:
            alive = [n for n in self.nodes.values() if n.alive]
            if alive:
                self.fired["campaign"] += 1
                self.world.step(self.sched.rng.choice(alive), Campaign())

    # ------------------------------------------------------------------ scripts

    def _start_script(self, script: Script) -> None:
        """Run ``script`` on a healthy network, on-time clocks and a quick disk; clients
        wait (one writes when the script says); the random faults start afterwards."""
        self.script = script
        self.network.faults = HEALTHY_NETWORK
        self.world.clock_rates = [1.0] * self.plan.nodes
        self.world.fsync_ms_max = min(self.plan.fsync_ms_max, SCRIPT_FSYNC_MS_MAX)
        self.script_step = -1
        self._next_script_step()

    def _next_script_step(self) -> None:
        """Start steps until one has to wait (or the script is over)."""
        script = self.script
        assert script is not None
        while True:
            self.script_step += 1
            if self.script_step == len(script.steps):
                self._end_script(script)
                return
            step = script.steps[self.script_step]
            self.sched.note(f"script {script.name} step {self.script_step}: {step}")
            self._script_do(step.do)
            if step.until is None or self._script_holds(step.until):
                self.script_steps.append("ok")
                continue
            self.script_deadline = self.sched.now + step.timeout_ms
            self.sched.at(step.timeout_ms, _ScriptWake(self.script_step))
            self.script_retry_at = math.inf
            if step.retry_ms is not None:
                self.script_retry_at = self.sched.now + step.retry_ms
                self.sched.at(step.retry_ms, _ScriptWake(self.script_step))
            return

    def _script_progress(self) -> None:
        """After every event: has the waiting step's condition come true (or timed out)?"""
        script = self.script
        assert script is not None
        step = script.steps[self.script_step]
        assert step.until is not None
        if self._script_holds(step.until):
            self.script_steps.append("ok")
        elif self.sched.now >= self.script_deadline:
            self.script_steps.append("timeout")
            self.sched.note(f"script {script.name} step {self.script_step}: timed out")
        else:
            if step.retry_ms is not None and self.sched.now >= self.script_retry_at:
                self._script_do(step.do)
                self.script_retry_at = self.sched.now + step.retry_ms
                self.sched.at(step.retry_ms, _ScriptWake(self.script_step))
            return
        self._next_script_step()

    def _end_script(self, script: Script) -> None:
        self.script = None
        self.fired[script.name] += 1
        self.network.reset(self.plan.network)
        self.world.clock_rates = list(self.plan.clock_rates)
        self.world.fsync_ms_max = self.plan.fsync_ms_max
        for node in self.nodes.values():
            node.crash_on_write = False
            if node.core is None:
                self.sched.at(self.sched.rng.uniform(10.0, 100.0), _Restart(node.node_id))
        self._schedule_faults()

    def _script_do(self, actions: Sequence[ScriptAction]) -> None:
        for action in actions:
            if isinstance(action, Links):
                self.network.set_links(action)
            elif isinstance(action, CrashNodes):
                for node_id in action.nodes:
                    if self.nodes[node_id].core is not None:
                        self.world.crash(self.nodes[node_id], None, lose_unsynced=True)
            elif isinstance(action, CrashOnWrite):
                for node_id in action.nodes:
                    self.nodes[node_id].crash_on_write = True
            elif isinstance(action, RestartNodes):
                for node_id in action.nodes:
                    node = self.nodes[node_id]
                    node.crash_on_write = False
                    if node.core is None:
                        self.world.boot(node)
            elif isinstance(action, StartCampaign):
                node = self.nodes[action.node]
                if node.core is not None:
                    self.world.step(node, Campaign())
            else:
                self._script_write(action)

    def _script_write(self, action: Write) -> None:
        core = self.nodes[action.node].core
        client = self.clients[0]
        if core is None or client.op is not None:
            return
        self.script_mark = self.world.crash_mark = core.last_index + 1
        client.next_seq += 1
        self._issue(client, OpKind.WRITE, "k0", action.node)

    def _script_holds(self, cond: ScriptCondition) -> bool:
        mark = self.script_mark
        if isinstance(cond, IsLeader):
            return any(self._role(n) is Role.LEADER for n in cond.nodes)
        if isinstance(cond, CaughtUp):
            leader = self.world.current_leader()
            if leader is None or leader.core is None:
                return False
            last = leader.core.last_index
            return all(n.applied >= last for n in self.nodes.values() if n.core is not None)
        if isinstance(cond, Holds):
            return all(self._holds_mark(self.nodes[n], cond.durable) for n in cond.nodes)
        node = self.nodes[cond.node]
        if node.core is None:
            return False
        if isinstance(cond, Committed):
            return node.core.commit_index >= mark
        assert isinstance(cond, Applied)
        return node.applied >= mark

    def _holds_mark(self, node: _Node, durable: bool) -> bool:
        if durable:
            return node.model.last_index >= self.script_mark
        return node.core is not None and node.core.last_index >= self.script_mark

    def _role(self, node_id: int) -> Role | None:
        core = self.nodes[node_id].core
        return core.role if core is not None else None

    # ------------------------------------------------------------------ liveness

    def _on_heal(self, _event: _Heal) -> None:
        """End of the fault phase: heal the network, clocks and crashed nodes."""
        self.in_liveness = True
        self.network.heal()
        self.world.heal()
        self.sched.at(self.plan.liveness_ms, _LivenessDeadline())

    def _liveness_progress(self) -> None:
        """Propose a probe to each new leader; done once one probe is applied everywhere."""
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
        applied_everywhere = min(n.applied for n in self.nodes.values())
        for index, term in probes.accepted:
            record = self.checker.applied.get(index)
            if record and record.term == term and applied_everywhere >= index:
                self.live = True

    def _on_liveness_deadline(self, _event: _LivenessDeadline) -> None:
        if not self.live:
            states = ", ".join(
                f"{n.node_id}:{n.core.role.value}/t{n.core.term}/c{n.core.commit_index}"
                f"/a{n.applied}"
                for n in self.nodes.values()
                if n.core is not None
            )
            self.checker.fail(
                "liveness",
                f"no probe applied on every node {self.plan.liveness_ms:.0f}ms after healing "
                f"[{states}]",
            )


def _dump_history(seed: int, ops: Sequence[Operation]) -> str:
    """Write a failing key's history where a human can read it, one op per line."""
    path = Path(tempfile.gettempdir()) / f"felix_sim_history_{seed}.txt"
    lines = [
        f"client={op.client} call={op.call} ret={op.ret} {op.kind.value} {op.value}" for op in ops
    ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# --------------------------------------------------------------------------- entry points


def run_seed(
    seed: int,
    *,
    sabotage: Iterable[str] = (),
    disabled: Iterable[str] = (),
    trace: list[str] | None = None,
    hash_trace: bool = False,
    fault_phase_ms: float = 3000.0,
    script: str | None = None,
    voters: int | None = None,
) -> SimResult:
    """Run one seed: its plan, the simulation, the checkers.  ``script`` makes the seed
    open with that scripted schedule (`felix.testing.faults.SCRIPTS`) whatever it drew.
    ``voters`` makes only that many of the plan's nodes voters, the rest learners (the
    scripts, written for all-voter clusters, are dropped then)."""
    if script is not None:
        plan = script_plan(seed, script, fault_phase_ms)
    else:
        plan = generate_plan(seed, fault_phase_ms)
    if voters is not None:
        plan = replace(plan, script=None)
    sim = Simulation(
        plan,
        sabotage=frozenset(sabotage),
        disabled=frozenset(disabled),
        trace=trace,
        hash_trace=hash_trace,
        voters=voters,
    )
    return sim.run()


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m felix.testing.sim", description="Felix tier-A simulation soak."
    )
    parser.add_argument("--seeds", type=int, default=100, help="how many seeds to run")
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--seed", type=int, help="run only this seed (replay)")
    parser.add_argument("--verbose", action="store_true", help="print every event")
    parser.add_argument(
        "--sabotage", action="append", default=[], help="break the core (or lying_fsync)"
    )
    parser.add_argument("--disable", action="append", default=[], help="turn a checker off")
    parser.add_argument("--script", choices=SCRIPTS, help="open every seed with this script")
    parser.add_argument("--phase-ms", type=float, default=3000.0, help="fault phase length")
    parser.add_argument("--stop-on-failure", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.seeds)
    fired: Counter[str] = Counter()
    failures: list[SimResult] = []
    events = 0
    for seed in seeds:
        trace: list[str] | None = [] if args.verbose else None
        result = run_seed(
            seed,
            sabotage=args.sabotage,
            disabled=args.disable,
            trace=trace,
            fault_phase_ms=args.phase_ms,
            script=args.script,
        )
        for line in trace or ():
            print(line)
        events += result.events
        fired.update(kind for kind, count in result.fired.items() if count)
        if not result.ok:
            failures.append(result)
            print(result.report(), flush=True)
            if args.stop_on_failure:
                break
    _print_summary(len(seeds), events, fired, failures)
    return 1 if failures else 0


def _print_summary(
    seed_count: int, events: int, fired: Counter[str], failures: list[SimResult]
) -> None:
    print(f"seeds={seed_count} events={events} failures={len(failures)}")
    for kind, count in sorted(fired.items()):
        print(f"  {kind:<18} fired in {count} seeds")
    for result in failures:
        print(f"  FAILED seed {result.seed}: {result.violation}".splitlines()[0])
        print(f"    {replay_line(result.seed)}")


if __name__ == "__main__":
    sys.exit(main())
