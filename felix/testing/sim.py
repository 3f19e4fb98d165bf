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

With ``membership`` a run also grows and shrinks the cluster: spare nodes outside the
initial configuration boot (as non-members, or the legacy way) and an operator adds,
promotes and removes members one at a time through the leader
(`felix.testing.sim_membership`); `felix.testing.conf_checks` checks every node's
configuration against what its log gives.

Clients (`felix.testing.sim_clients`) write unique values and read keys of a replicated
register through the node they believe leads; the history feeds the linearizability
checker.  After the fault phase everything heals and the cluster must elect a leader and
commit a fresh probe on every node within `FaultPlan.liveness_ms` (liveness).
`ClusterChecker` watches every step.

Parts
-----
`Simulation` builds each part once and hands it its collaborators; each acts on the
ones below it only, and they meet otherwise only in the event heap:

* `felix.testing.sim_events`: the events and the `Scheduler` (heap, clock, random
  source, trace hash);
* `felix.testing.sim_network`: links, partitions, drop/duplicate/delay/reorder;
* `felix.testing.sim_world`: the nodes -- cores, Ready drivers, WALs on simulated disks,
  state machines, crashes and recovery -- serving client requests;
* `felix.testing.sim_clients`: the clients and their history;
* `felix.testing.sim_phases`: the script (`felix.testing.sim_scripts`), the random
  faults, healing and liveness;
* `felix.testing.sim_membership`: spare nodes and the membership operator;
* this module: the event loop, the final checks, `run_seed` and the command line.

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

Soak membership changes (``legacy`` boots joiners as the pre-issue-14 node did, and
must fail)::

    python -m felix.testing.sim --seeds 2000 --membership non-member --join-via-snapshot
    python -m felix.testing.sim --seeds 20 --membership legacy
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from felix.proto.raft_messages import ConfState
from felix.testing.checkers import ClusterChecker, InvariantViolation
from felix.testing.conf_checks import MembershipChecker
from felix.testing.faults import SCRIPTS, FaultPlan, generate_plan, script_plan
from felix.testing.sim_clients import Clients
from felix.testing.sim_events import (
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
    _MemberTick,
    _PartitionEnd,
    _PartitionStart,
    _PowerLoss,
    _Restart,
    _Retire,
    _ScriptWake,
    _Tick,
)
from felix.testing.sim_membership import (
    JoinMode,
    MembershipPlan,
    Operator,
    boot_confs,
    with_membership,
)
from felix.testing.sim_network import Network
from felix.testing.sim_phases import FaultInjector, Liveness, ScriptRunner
from felix.testing.sim_world import World

__all__ = ["SimResult", "Simulation", "main", "replay_line", "run_seed"]

EVENTS_MAX = 3_000_000  # a runaway (zero-delay loop) fails instead of hanging


def replay_line(seed: int, membership: MembershipPlan | None = None) -> str:
    if membership is not None:
        via = " --join-via-snapshot" if membership.join_via_snapshot else ""
        if membership.observers:
            via += f" --observers {len(membership.observers)}"
        return (
            f"python -m felix.testing.sim --seed {seed} --membership {membership.mode.value}{via}"
        )
    return f"FELIX_SIM_SEED={seed} pytest tests/sim"


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
    membership: MembershipPlan | None = None
    member_changes: tuple[str, ...] = ()  # what the operator's changes came to

    @property
    def ok(self) -> bool:
        return self.violation is None

    def report(self) -> str:
        """What a failing run prints: the plan, the violation, the replay command."""
        extra = ""
        if self.membership is not None:
            extra = f" {self.membership.describe()}\nMEMBERSHIP CHANGES {list(self.member_changes)}"
        return (
            f"FAULT PLAN {self.plan.describe()}{extra}\n"
            f"VIOLATION {self.violation}\n"
            f"replay: {replay_line(self.seed, self.membership)}"
        )


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
        membership: MembershipPlan | None = None,
    ) -> None:
        """``voters``: only the plan's first ``voters`` nodes vote, the others boot as
        learners (thesis §4.2.1); ``voters=1`` is how a cluster grown from one node
        starts.  None: every node votes.  ``membership``: the plan's last nodes are
        spares that an `Operator` adds, promotes and removes
        (`felix.testing.sim_membership`)."""
        self.plan = plan
        self.sched = Scheduler(plan.seed, trace=trace, hash_trace=hash_trace)
        self.checker = ClusterChecker(disabled)
        self.fired: Counter[str] = Counter()
        self.membership = membership
        nodes = membership.initial if membership is not None else plan.nodes
        conf = _conf(nodes, voters)
        sched, checker, fired = self.sched, self.checker, self.fired
        everyone = tuple(range(1, plan.nodes + 1)) if membership is not None else conf.voters
        self.network = network = Network(plan.network, everyone, sched, fired)
        self.world = world = World(plan, conf, sched, network, checker, fired, sabotage=sabotage)
        self.operator: Operator | None = None
        if membership is not None:
            world.members = MembershipChecker(checker, conf)
            world.boot_confs = boot_confs(membership, plan.nodes)
            world.unstarted = set(world.boot_confs)
            self.operator = Operator(membership, sched, world, self.fired)
        self.clients = clients = Clients(plan, conf.voters, sched, checker)
        self.script = (
            ScriptRunner(plan.script, plan, sched, world, network, clients, fired)
            if plan.script is not None
            else None
        )
        self.liveness = Liveness(plan, sched, world, network, clients, checker, self.operator)
        self.faults = FaultInjector(plan, sched, world, network, clients, self.liveness, fired)
        self.handlers = self._handlers()

    def _handlers(self) -> dict[type, Callable[[Any], None]]:
        """Which part handles each event."""
        world, clients, faults, liveness = self.world, self.clients, self.faults, self.liveness
        handlers: dict[type, Callable[[Any], None]] = {
            _Tick: world.on_tick,
            _Deliver: world.on_deliver,
            _FsyncDone: world.on_fsync,
            _ClientArrive: world.on_client_arrive,
            _ClientReplyArrive: clients.on_reply,
            _ClientTimeout: clients.on_timeout,
            _ClientIssue: clients.on_issue,
            _ClientRetry: clients.on_retry,
            _PartitionStart: faults.on_partition_start,
            _PartitionEnd: faults.on_partition_end,
            _Crash: faults.on_crash,
            _CrashNow: world.on_crash_now,
            _PowerLoss: faults.on_power_loss,
            _Restart: world.on_restart,
            _Churn: faults.on_churn,
            _Heal: liveness.on_heal,
            _LivenessDeadline: liveness.on_deadline,
            _ScriptWake: lambda _event: None,  # the loop re-evaluates the script
        }
        if self.operator is not None:
            handlers[_MemberTick] = self.operator.on_tick
            handlers[_Retire] = self.operator.on_retire
        return handlers

    def run(self) -> SimResult:
        violation: InvariantViolation | None = None
        try:
            self._start()
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
            history_ops=len(self.clients.history),
            client_acks=len(self.checker.acked),
            events=self.sched.step_no,
            sim_ms=self.sched.now,
            trace_hash=self.sched.trace_hash(),
            leaders_elected=len(self.world.leader_terms),
            script_steps=tuple(self.script.steps) if self.script else (),
            membership=self.membership,
            member_changes=tuple(self.operator.done) if self.operator else (),
        )

    def _start(self) -> None:
        """Boot every node; open with the script, or go straight to the random faults."""
        for node in self.world.nodes.values():
            if node.node_id not in self.world.unstarted:
                self.world.boot(node)
        if self.script is None or self.script.start():
            self.faults.schedule()
        if self.operator is not None:
            self.operator.start()

    def _loop(self) -> None:
        sched, script, liveness = self.sched, self.script, self.liveness
        while sched.queue and not liveness.live:
            event = sched.pop()
            if sched.step_no > EVENTS_MAX:
                self.checker.fail("liveness", f"more than {EVENTS_MAX} events")
            sched.record(event)
            self.handlers[type(event)](event)
            if script is not None and script.running and script.progress():
                self.faults.schedule()  # the script is over: the random faults start
            if liveness.healing:
                liveness.progress()
        if not liveness.live:
            self.checker.fail("liveness", "event queue ran dry")

    def _final_checks(self) -> None:
        self.clients.close()  # still in flight when the run stopped: unknown
        self.world.final_power_loss()
        self.checker.check_durability()
        self.clients.check_history(self.world.applied_values)


def _conf(nodes: int, voters: int | None) -> ConfState:
    """The first ``voters`` of ``nodes`` vote (None: all), the others are learners."""
    voter_count = nodes if voters is None else voters
    assert 0 < voter_count <= nodes, f"{voter_count} voters of {nodes} nodes"
    return ConfState(
        voters=tuple(range(1, voter_count + 1)),
        learners=tuple(range(voter_count + 1, nodes + 1)),
    )


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
    membership: JoinMode | str | None = None,
    join_via_snapshot: bool = False,
    observers: int = 0,
) -> SimResult:
    """Run one seed: its plan, the simulation, the checkers.  ``script`` makes the seed
    open with that scripted schedule (`felix.testing.faults.SCRIPTS`) whatever it drew.
    ``voters`` makes only that many of the plan's nodes voters, the rest learners (the
    scripts, written for all-voter clusters, are dropped then).  ``membership`` (a
    `JoinMode` or its value) adds spare nodes and the membership operator; with
    ``join_via_snapshot`` a node is added only once the leader's log is compacted, and
    ``observers`` more spares join as observers (docs/architecture.md, "Observers")."""
    if script is not None:
        plan = script_plan(seed, script, fault_phase_ms)
    else:
        plan = generate_plan(seed, fault_phase_ms)
    if voters is not None:
        plan = replace(plan, script=None)
    member_plan = None
    if membership is not None:
        plan, member_plan = with_membership(
            plan, JoinMode(membership), join_via_snapshot=join_via_snapshot, observers=observers
        )
    sim = Simulation(
        plan,
        sabotage=frozenset(sabotage),
        disabled=frozenset(disabled),
        trace=trace,
        hash_trace=hash_trace,
        voters=voters,
        membership=member_plan,
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
    parser.add_argument(
        "--membership",
        choices=[m.value for m in JoinMode],
        help="add spare nodes and membership changes; how a joining node boots",
    )
    parser.add_argument(
        "--join-via-snapshot", action="store_true", help="add nodes only after compaction"
    )
    parser.add_argument(
        "--observers", type=int, default=0, help="with --membership: observer spares to add"
    )
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
            membership=args.membership,
            join_via_snapshot=args.join_via_snapshot,
            observers=args.observers,
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
        print(f"    {replay_line(result.seed, result.membership)}")


if __name__ == "__main__":
    sys.exit(main())
