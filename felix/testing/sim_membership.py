"""Membership changes in the simulation: spare nodes, how they boot, and the operator.

Why a module: growing and shrinking the cluster is what a StatefulSet does to the
control plane (docs/architecture.md §10; issue 14), and it must run under the same
crashes, partitions and message faults as everything else.  The plan adds spare nodes
that are not in the initial configuration; a scheduler-driven `Operator` then makes one
single-server change at a time (thesis §4.1) through the current leader's public
``ProposeConfChange``: start a spare and ADD_LEARNER it, PROMOTE a learner once it has
caught up, REMOVE a voter or a learner (whose process then goes away for good).  A change
refused (no leader, a change pending, not caught up) or lost (its entry truncated) is
retried until it shows in the leader's committed configuration, or given up.

How a joining node boots is the `JoinMode`:

* ``legacy``: as the real node did before issue 14 -- its own id plus its peers (the
  initial members) as voters.  It then ignores the ADD_LEARNER for itself ("already a
  member") and believes it is a voter: ``learner_stays_learner`` must catch it.
* ``non-member``: an empty configuration; it learns its role from the log or a snapshot.

``observers`` adds that many more spares that are observers (docs/architecture.md,
"Observers"): they always boot as non-members, are added with ADD_LEARNER marked
observer, and are only ever removed; now and then the operator asks the leader to
PROMOTE one, which the membership layer must refuse (``observer_promoted``).
"""

from __future__ import annotations

import enum
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace

from felix.proto.raft_messages import ConfChange, ConfChangeKind, ConfState
from felix.testing.conf_checks import Members
from felix.testing.faults import CrashEpisode, FaultPlan, PartitionEpisode, PartitionKind
from felix.testing.sim_events import Scheduler, _MemberTick, _Retire
from felix.testing.sim_world import World, _Node

__all__ = ["JoinMode", "MembershipPlan", "Operator", "with_membership"]

MEMBER_REQUEST_BASE = 1 << 47  # request ids of the operator's proposals (below probes')
VOTERS_MAX = 5  # raft.voters_max: the operator never promotes beyond it
GIVE_UP_MS = 1500.0  # a change not done by then is abandoned (e.g. its learner is down)


class JoinMode(enum.Enum):
    LEGACY = "legacy"
    NON_MEMBER = "non-member"


@dataclass(frozen=True, slots=True)
class MembershipPlan:
    mode: JoinMode
    initial: int  # nodes 1..initial form the cluster; the rest of the plan's are spares
    first_change_ms: float
    interval_ms: float  # how often the operator looks
    retire_ms_max: float  # a removed node's process stops within this after the commit
    join_via_snapshot: bool  # add a node only once the leader's log is compacted
    observers: tuple[int, ...] = ()  # the spares that join as observers

    def describe(self) -> str:
        return (
            f"membership={self.mode.value} initial={self.initial} "
            f"first={self.first_change_ms:.0f}ms every={self.interval_ms:.0f}ms "
            f"retire<={self.retire_ms_max:.0f}ms via_snapshot={self.join_via_snapshot}"
            f" observers={list(self.observers)}"
        )


def with_membership(
    plan: FaultPlan, mode: JoinMode, *, join_via_snapshot: bool = False, observers: int = 0
) -> tuple[FaultPlan, MembershipPlan]:
    """The seed's plan grown by two spare nodes and ``observers`` observer spares (the
    last ids; crashed and cut off now and then too), and when and how the operator
    works.  Drawn from its own random source, so the seed's other faults stay as they
    were."""
    rng = random.Random(f"felix-membership-plan-{plan.seed}")
    initial, spares = plan.nodes, 2 + observers
    total = initial + spares
    phase = plan.fault_phase_ms
    crashes = list(plan.crashes)
    partitions = list(plan.partitions)
    for spare in range(initial + 1, total + 1):
        if rng.random() < 0.5:
            start = rng.uniform(0.2, 0.8) * phase
            crashes.append(CrashEpisode(start, rng.uniform(20.0, 500.0), spare, rng.random() < 0.5))
        if rng.random() < 0.3:
            start = rng.uniform(0.2, 0.8) * phase
            side = (spare,)
            partitions.append(
                PartitionEpisode(start, rng.uniform(100.0, 800.0), PartitionKind.SPLIT, side)
            )
    snapshot_every = plan.snapshot_every
    if join_via_snapshot and not snapshot_every:
        snapshot_every = rng.randint(8, 40)
    grown = replace(
        plan,
        nodes=total,
        clock_rates=(*plan.clock_rates, *([1.0] * spares)),
        crashes=tuple(sorted(crashes, key=lambda c: c.start_ms)),
        partitions=tuple(partitions),
        snapshot_every=snapshot_every,
        script=None,  # the scripts are written for a fixed all-voter cluster
        planned=plan.planned - {"figure8", "ack_crash"},
    )
    membership = MembershipPlan(
        mode=mode,
        initial=initial,
        first_change_ms=rng.uniform(0.02, 0.2) * phase,
        interval_ms=rng.uniform(20.0, 120.0),
        retire_ms_max=rng.uniform(0.0, 400.0),
        join_via_snapshot=join_via_snapshot,
        observers=tuple(range(total - observers + 1, total + 1)),
    )
    return grown, membership


def boot_confs(membership: MembershipPlan, nodes: int) -> dict[int, ConfState]:
    """How each spare boots (the initial members boot with the initial configuration)."""
    initial = tuple(range(1, membership.initial + 1))
    confs = {}
    for spare in range(membership.initial + 1, nodes + 1):
        if membership.mode is JoinMode.LEGACY and spare not in membership.observers:
            confs[spare] = ConfState(voters=(*initial, spare), learners=())
        else:
            confs[spare] = ConfState(voters=(), learners=())
    return confs


@dataclass(slots=True)
class _Target:
    change: ConfChange
    since_ms: float
    attempts: int = 0


class Operator:
    """Makes one membership change at a time until the run heals (``stopped``)."""

    def __init__(
        self,
        membership: MembershipPlan,
        sched: Scheduler,
        world: World,
        fired: Counter[str],
    ) -> None:
        self.membership, self.sched, self.world, self.fired = membership, sched, world, fired
        self.spares = sorted(world.unstarted)
        self.target: _Target | None = None
        self.next_request_id = MEMBER_REQUEST_BASE
        self.stopped = False
        self.retiring: set[int] = set()
        self.done: list[str] = []  # what each change came to: "add 4", "gave up promote 5"
        self.observers = frozenset(membership.observers)

    def start(self) -> None:
        self.sched.at(self.membership.first_change_ms, _MemberTick())

    def on_tick(self, _event: _MemberTick) -> None:
        if self.stopped:
            return
        self.sched.at(self.membership.interval_ms, _MemberTick())
        members = self.world.members
        assert members is not None
        committed = members.committed  # the newest configuration any node applied
        if self.target is not None and _satisfied(self.target.change, committed):
            self._finish(self.target.change)
        self._retire_removed(members.removed_at)
        if self.target is not None and self.sched.now - self.target.since_ms > GIVE_UP_MS:
            self._give_up(self.target.change)
        leader = self.world.current_leader()
        if leader is None or leader.core is None:
            return
        core = leader.core
        if _members(core.conf) != _members(core.conf_at(core.commit_index)):
            return  # a change is in its log, not yet committed: one at a time
        if committed.observers:
            self.fired["observer_member"] += 1
            if self.sched.rng.random() < 0.3:
                self._try_promoting_an_observer(leader, committed)
        if self.target is None:
            self.target = self._choose(committed, core.first_index)
            if self.target is None:
                return
        change = self.target.change
        if change.kind is ConfChangeKind.PROMOTE and not self._caught_up(change.node):
            return
        self.target.attempts += 1
        self.next_request_id += 1
        if self.world.propose_conf_change(leader, self.next_request_id, change):
            self.fired[f"member_{change.kind.name.lower()}_proposed"] += 1
            if self.target.attempts > 1:
                self.fired["member_retried"] += 1  # refused or lost before
        else:
            self.fired["member_refused"] += 1

    def _choose(self, conf: Members, leader_first_index: int) -> _Target | None:
        """The next change, at random among those that apply to ``conf``."""
        rng, world = self.sched.rng, self.world
        running = {n for n, node in world.nodes.items() if node.alive}
        options: list[tuple[float, ConfChangeKind, int]] = []
        # Observers first (without observers, the order is the spares' own).
        unused = [s for s in self.spares if s in world.unstarted]
        unused.sort(key=lambda s: s not in self.observers)
        if unused and (not self.membership.join_via_snapshot or leader_first_index > 1):
            options.append((3.0, ConfChangeKind.ADD_LEARNER, unused[0]))
        if len(conf.voters) < VOTERS_MAX:  # observers never: not even with room for voters
            options += [
                (3.0, ConfChangeKind.PROMOTE, n)
                for n in sorted(conf.learners - self.observers)
                if n in running
            ]
        if len(conf.voters) > 1:
            weight = 1.5 if len(conf.voters) >= 3 else 0.3
            options += [(weight, ConfChangeKind.REMOVE, n) for n in sorted(conf.voters)]
        options += [(0.7, ConfChangeKind.REMOVE, n) for n in sorted(conf.learners - conf.observers)]
        options += [(0.2, ConfChangeKind.REMOVE, n) for n in sorted(conf.observers)]
        if not options:
            return None
        weights = [w for w, _, _ in options]
        _, kind, node = rng.choices(options, weights=weights)[0]
        if kind is ConfChangeKind.ADD_LEARNER:
            world.boot(world.nodes[node])  # the pod starts, then asks to be added
            self.fired["member_started"] += 1
        observer = kind is ConfChangeKind.ADD_LEARNER and node in self.observers
        return _Target(ConfChange(kind, node, observer=observer), self.sched.now)

    def _try_promoting_an_observer(self, leader: _Node, conf: Members) -> None:
        """An operator's mistake the membership layer must refuse; the checker fails
        the run (``observer_promoted``) if the leader appends it."""
        node = self.sched.rng.choice(sorted(conf.observers))
        self.next_request_id += 1
        change = ConfChange(ConfChangeKind.PROMOTE, node)
        if self.world.propose_conf_change(leader, self.next_request_id, change):
            self.fired["observer_promote_accepted"] += 1
        else:
            self.fired["observer_promote_refused"] += 1

    def _caught_up(self, learner: int) -> bool:
        leader = self.world.current_leader()
        node = self.world.nodes[learner]
        if leader is None or leader.core is None or node.core is None:
            return False
        return node.core.last_index >= leader.core.commit_index

    def _retire_removed(self, removed: Mapping[int, int]) -> None:
        """Every node whose removal committed goes (within ``retire_ms_max``), also one
        whose change was given up but committed after all, so it cannot disrupt."""
        for node in sorted(set(removed) - self.retiring):
            self.retiring.add(node)
            delay = self.sched.rng.uniform(0.0, self.membership.retire_ms_max)
            self.sched.at(delay, _Retire(node))

    def _finish(self, change: ConfChange) -> None:
        self.target = None
        name = change.kind.name.lower()
        self.fired[f"member_{name}"] += 1
        self.done.append(f"{name} {change.node}")

    def _give_up(self, change: ConfChange) -> None:
        self.target = None
        self.fired["member_gave_up"] += 1
        self.done.append(f"gave up {change.kind.name.lower()} {change.node}")

    def on_retire(self, event: _Retire) -> None:
        self.fired["member_retired"] += 1
        self.world.retire(event.node)

    def stop(self) -> None:
        """The run heals: no more changes (a pending one may still commit)."""
        self.stopped = True


def _members(conf: ConfState) -> tuple[frozenset[int], frozenset[int]]:
    return frozenset(conf.voters), frozenset(conf.learners)


def _satisfied(change: ConfChange, conf: Members) -> bool:
    node = change.node
    if change.kind is ConfChangeKind.ADD_LEARNER:
        return node in conf.learners or node in conf.voters
    if change.kind is ConfChangeKind.PROMOTE:
        return node in conf.voters
    return node not in conf.voters and node not in conf.learners
