"""The replica planner: from one state, a bounded list of steps toward a goal (issue 13,
docs/architecture.md §13).

Pure and deterministic: the same `PlanInput` gives the same plan on every node, with no
randomness and no dependence on dict order (everything is walked sorted).  Only the
control-plane leader acts on a plan (leader soft state); its steps become ordinary Raft
commands (`commands_for`), so a new leader re-plans from the replicated state and loses
nothing, and ``felix ctl rebalance plan`` shows exactly what the leader would do.

A replica move is make-before-break (`felix.metadata.replicas`): the new replica joins
catching up and the old one leaves only once the new one is ready, so no move lowers a
shard's count of live replicas, not even while it runs.  Passes, in priority order:

1. finish: reassignments whose new replicas are all ready and whose leader stays;
2. evacuate: replicas on brokers being emptied (down past ``replica_down_timeout_s``,
   decommissioned, deregistered) go to live brokers;
3. replication factor: shards with fewer replicas than their stream's factor gain one,
   shards with more lose one;
4. rack spread: a shard with two replicas in one rack moves one to an unused rack;
5. balance: replicas move from the most to the least loaded live broker until the
   spread is within ``skew_max``;
6. leaders: preferred leaders (first replicas) are rebalanced within
   ``leader_skew_max`` by reordering replicas (no data moves), then leadership returns
   to every live preferred leader; both bounded by ``leader_moves_max``.

Replica moves are bounded by ``moves_per_node_max`` (moves adding to a broker or removing
from one that serves data, counting those in flight) and ``moves_cluster_max``; the
handlers enforce the same bounds at apply, so no planner, old leader or operator can
exceed them without ``force``.  Every
step carries the reason an operator is shown.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from felix.metadata import commands as cmds
from felix.metadata.config import config_bool, config_int
from felix.metadata.model import NodeState

if TYPE_CHECKING:
    from felix.metadata.state import MetadataState


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    rack: str
    live: bool  # up and not draining: may lead, and receive replicas unless evacuated
    evacuate: bool = False  # every replica must leave (down past the timeout, decommission)
    why: str = ""  # why it is evacuated, for the move's reason


@dataclass(frozen=True, slots=True)
class PlannerLimits:
    moves_per_node_max: int = 2
    moves_cluster_max: int = 64
    skew_max: int = 1  # most minus least replicas over live brokers
    replicas_per_node_max: int = 1 << 30
    rack_aware: bool = True
    leader_skew_max: int = 1
    leader_moves_max: int = 64


class ShardInfo(NamedTuple):
    """What the planner needs of one shard.  ``rf`` 0 means "keep the current count".
    (A NamedTuple: 100,000 of them are built per pass, and a frozen dataclass is slower.)"""

    replicas: tuple[int, ...]
    leader: int | None = None
    rf: int = 0
    catching_up: tuple[int, ...] = ()
    in_flight: tuple[tuple[int, ...], tuple[int, ...]] | None = None  # (adding, removing)
    finishable: bool = False  # every joining replica ready, the leader stays


@dataclass(frozen=True, slots=True)
class PlanInput:
    brokers: Mapping[int, BrokerInfo]
    shards: Mapping[str, ShardInfo | tuple[int, ...]]  # a bare tuple: replicas only


@dataclass(frozen=True, slots=True)
class Move:
    """Replace ``remove`` by ``add`` in ``shard`` (either may be None: grow or shrink)."""

    shard: str
    add: int | None
    remove: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class LeaderMove:
    """Make ``order`` the shard's replica order (``order[0]`` its preferred leader) and
    move leadership to ``order[0]``; ``order`` None: only move leadership."""

    shard: str
    node: int
    order: tuple[int, ...] | None
    reason: str


@dataclass(slots=True)
class Plan:
    moves: list[Move] = field(default_factory=list)
    leader_moves: list[LeaderMove] = field(default_factory=list)
    finishes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.moves) + len(self.leader_moves) + len(self.finishes)


def _info(value: ShardInfo | tuple[int, ...]) -> ShardInfo:
    return value if isinstance(value, ShardInfo) else ShardInfo(value)


class _Budget:
    """Move bounds, charged as moves are planned (in-flight moves charged up front)."""

    def __init__(self, limits: PlannerLimits) -> None:
        self.limits = limits
        self.per_node: dict[int, int] = {}
        self.total = 0

    def charge(self, nodes: Iterable[int | None]) -> None:
        self.total += 1
        for node in nodes:
            if node is not None:
                self.per_node[node] = self.per_node.get(node, 0) + 1

    @property
    def spent(self) -> bool:
        return self.total >= self.limits.moves_cluster_max

    def allows(self, add: int | None, remove: int | None) -> bool:
        per = self.limits.moves_per_node_max
        return (
            self.total < self.limits.moves_cluster_max
            and (add is None or self.per_node.get(add, 0) < per)
            and (remove is None or self.per_node.get(remove, 0) < per)
        )


class _Planner:
    def __init__(self, given: PlanInput, limits: PlannerLimits) -> None:
        self.brokers = given.brokers
        self.limits = limits
        self.plan = Plan()
        self.info = {key: _info(v) for key, v in sorted(given.shards.items())}
        self.replicas = {key: i.replicas for key, i in self.info.items()}  # copy on write
        self.busy: set[str] = set()  # one move per shard at a time
        self.budget = _Budget(limits)
        self.load: dict[int, int] = {b: 0 for b in given.brokers}
        self.held: dict[int, int] = {}  # replicas held, counting joining and leaving ones
        self.shards_of: dict[int, set[str]] = {b: set() for b in given.brokers}
        for key, info in self.info.items():
            for b in info.replicas:
                self.load[b] = self.load.get(b, 0) + 1
                self.shards_of.setdefault(b, set()).add(key)
            for b in info.replicas:
                self.held[b] = self.held.get(b, 0) + 1
            if info.in_flight is not None:
                self.busy.add(key)
                leaving = (self._counted(b) for b in info.in_flight[1])
                self.budget.charge((*info.in_flight[0], *leaving))
        self.live = sorted(b for b, i in self.brokers.items() if i.live and not i.evacuate)

    def _rack(self, broker: int) -> str:
        info = self.brokers.get(broker)
        return info.rack if info is not None else ""

    def _gone(self, broker: int) -> bool:
        info = self.brokers.get(broker)
        return info is None or info.evacuate

    def _target(self, key: str, leaving: int | None, *, spread_only: bool = False) -> int | None:
        """The best live broker to take ``leaving``'s replica of ``key``: not in the
        shard; a rack the other replicas do not use if rack-aware; then the least
        loaded; then the lowest id."""
        replicas = self.replicas[key]
        racks = {self._rack(b) for b in replicas if b != leaving}
        best: tuple[int, int, int] | None = None
        for b in self.live:
            if b in replicas or self.held.get(b, 0) >= self.limits.replicas_per_node_max:
                continue
            new_rack = self._rack(b) not in racks
            if spread_only and not new_rack:
                continue
            if not self.budget.allows(b, self._counted(leaving)):
                continue
            rank = (0 if (new_rack or not self.limits.rack_aware) else 1, self.load[b], b)
            if best is None or rank < best:
                best = rank
        return best[2] if best is not None else None

    def _room(self, leaving: int) -> bool:
        """Some live broker may still take a move, and ``leaving`` may still give one."""
        if not self.budget.allows(None, self._counted(leaving)):
            return False
        return any(self.budget.allows(b, None) for b in self.live)

    def _counted(self, broker: int | None) -> int | None:
        """``broker`` if a move removing it counts against its bound: a broker that is
        down and being emptied serves no data, so removing its copies costs it nothing."""
        info = self.brokers.get(broker) if broker is not None else None
        return None if info is None or (info.evacuate and not info.live) else broker

    def _move(self, key: str, add: int | None, remove: int | None, reason: str) -> None:
        assert self.budget.allows(add, self._counted(remove)) and key not in self.busy
        self.budget.charge((add, self._counted(remove)))
        self.busy.add(key)
        replicas = list(self.replicas[key])
        if add is not None:
            self.load[add] += 1
            self.held[add] = self.held.get(add, 0) + 1  # a leaving replica is held until done
            self.shards_of[add].add(key)
        if remove is not None:
            self.load[remove] -= 1
            self.shards_of[remove].discard(key)
        if add is not None and remove is not None:
            replicas[replicas.index(remove)] = add
        elif add is not None:
            replicas.append(add)
        elif remove is not None:
            replicas.remove(remove)
        self.replicas[key] = tuple(replicas)
        self.plan.moves.append(Move(key, add, remove, reason))

    # --- passes --------------------------------------------------------------------

    def finish(self) -> None:
        self.plan.finishes = [key for key, info in self.info.items() if info.finishable]

    def evacuate(self) -> None:
        gone = sorted(b for b in self.shards_of if self._gone(b))
        for b in gone:
            info = self.brokers.get(b)
            why = info.why if info is not None and info.why else "is being emptied"
            if info is None:
                why = "is not registered"
            for key in sorted(self.shards_of[b]):
                if self.budget.spent or not self._room(b):
                    return
                if key in self.busy:
                    continue
                target = self._target(key, b)
                if target is not None:
                    self._move(key, target, b, f"broker {b} {why}")

    def replication(self) -> None:
        for key, info in self.info.items():
            if self.budget.spent:
                return
            replicas = self.replicas[key]
            if key in self.busy or not info.rf or len(replicas) == info.rf:
                continue
            if len(replicas) < info.rf:
                target = self._target(key, None)
                if target is not None and self.budget.allows(target, None):
                    self._move(key, target, None, f"replication factor {info.rf}")
                continue
            leaving = max(
                (b for b in replicas if b != info.leader),
                key=lambda b: (self._gone(b), self.load[b], b),
                default=None,
            )
            if leaving is not None and self.budget.allows(None, self._counted(leaving)):
                self._move(key, None, leaving, f"replication factor {info.rf}")

    def spread(self) -> None:
        if not self.limits.rack_aware:
            return
        for key, replicas in self.replicas.items():
            if self.budget.spent:
                return
            if key in self.busy:
                continue
            seen: dict[str, int] = {}
            for b in replicas:
                rack = self._rack(b)
                if rack in seen:  # a second replica in this rack: move the more loaded one
                    other = seen[rack]
                    leaving = max((other, b), key=lambda n: (self.load[n], n))
                    target = self._target(key, leaving, spread_only=True)
                    if target is not None:
                        self._move(key, target, leaving, f"rack {rack} holds two replicas")
                    break
                seen[rack] = b

    def balance(self) -> None:
        while len(self.live) >= 2:
            most = max(self.live, key=lambda b: (self.load[b], -b))
            least = min(self.live, key=lambda b: (self.load[b], b))
            if self.load[most] - self.load[least] <= self.limits.skew_max:
                return
            if not self._shed_one(most):
                return

    def _shed_one(self, broker: int) -> bool:
        """Move one replica off ``broker`` to a less loaded one, keeping rack spread."""
        if not self.budget.allows(None, self._counted(broker)):
            return False
        for key in sorted(self.shards_of[broker]):
            if key in self.busy:
                continue
            target = self._target(key, broker)
            if target is None or self.load[target] + 1 >= self.load[broker]:
                continue
            racks = {self._rack(b) for b in self.replicas[key] if b != broker}
            breaks_spread = self._rack(target) in racks and self._rack(broker) not in racks
            if self.limits.rack_aware and breaks_spread:
                continue  # the move would break spread that holds now
            self._move(key, target, broker, f"balance: broker {broker} holds {self.load[broker]}")
            return True
        return False

    def leaders(self) -> None:
        """Balance preferred leaders by reordering, then elect preferred leaders."""
        budget = self.limits.leader_moves_max
        can_lead = [b for b, i in self.brokers.items() if i.live]
        if not can_lead or budget <= 0:
            return
        led: dict[int, list[str]] = {b: [] for b in can_lead}
        for key, replicas in self.replicas.items():
            if key not in self.busy and replicas and replicas[0] in led:
                led[replicas[0]].append(key)
        count = {b: len(keys) for b, keys in led.items()}
        moved: set[str] = set()
        while len(self.plan.leader_moves) < budget:
            least = min(sorted(count), key=lambda b: count[b])
            donors = sorted(count, key=lambda b: (-count[b], b))
            donors = [d for d in donors if count[d] - count[least] > self.limits.leader_skew_max]
            if not donors:
                break
            step = self._lead_elsewhere(donors[0], led, count, moved)
            if step is None:  # the most preferred broker's co-replicas are as busy: pull
                step = self._pull_lead(least, led, count, moved)
            if step is None:
                break
            moved.add(step)
        for key, info in self.info.items():
            if len(self.plan.leader_moves) >= budget:
                return
            first = self.replicas[key][0] if self.replicas[key] else None
            if key in self.busy or key in moved or first is None or first == info.leader:
                continue
            if first in count and first not in info.catching_up:
                self.plan.leader_moves.append(LeaderMove(key, first, None, "preferred leader"))

    def _lead_elsewhere(
        self, broker: int, led: dict[int, list[str]], count: dict[int, int], moved: set[str]
    ) -> str | None:
        """Make a less-preferred replica the first of one shard ``broker`` is first in."""
        for key in led[broker]:
            if key in moved:
                continue
            waiting = self.info[key].catching_up
            choices = [
                b
                for b in self.replicas[key][1:]
                if b in count and b not in waiting and count[b] + 1 < count[broker]
            ]
            if choices:
                return self._reorder(key, broker, min(choices, key=lambda b: (count[b], b)),
                                     led, count)  # fmt: skip
        return None

    def _pull_lead(
        self, least: int, led: dict[int, list[str]], count: dict[int, int], moved: set[str]
    ) -> str | None:
        """Make ``least`` the first replica of a shard whose first is preferred more."""
        for key in sorted(self.shards_of.get(least, ())):
            replicas = self.replicas[key]
            if key in moved or key in self.busy or least in self.info[key].catching_up:
                continue
            first = replicas[0]
            if first != least and first in count and count[first] > count[least] + 1:
                return self._reorder(key, first, least, led, count)
        return None

    def _reorder(
        self, key: str, old: int, new: int, led: dict[int, list[str]], count: dict[int, int]
    ) -> str:
        order = (new, *(b for b in self.replicas[key] if b != new))
        reason = f"leader balance: broker {old} is preferred for {count[old]}"
        count[old] -= 1
        count[new] += 1
        led[old].remove(key)
        led[new].append(key)
        self.replicas[key] = order
        self.plan.leader_moves.append(LeaderMove(key, new, order, reason))
        return key


def plan(given: PlanInput, limits: PlannerLimits) -> Plan:
    """The steps of one pass, in the order to propose them (see the module docstring)."""
    planner = _Planner(given, limits)
    planner.finish()
    planner.evacuate()
    planner.replication()
    planner.spread()
    planner.balance()
    planner.leaders()
    return planner.plan


def apply_moves(
    shards: Mapping[str, ShardInfo | tuple[int, ...]], moves: Iterable[Move]
) -> dict[str, tuple[int, ...]]:
    """The replica sets once ``moves`` have completed (a test and bench helper)."""
    out = {key: list(_info(v).replicas) for key, v in shards.items()}
    for move in moves:
        replicas = out[move.shard]
        if move.add is not None and move.remove is not None:
            replicas[replicas.index(move.remove)] = move.add
        elif move.add is not None:
            replicas.append(move.add)
        elif move.remove is not None:
            replicas.remove(move.remove)
    return {key: tuple(r) for key, r in out.items()}


# --- from and to the metadata state ----------------------------------------------------


def limits_of(state: MetadataState) -> PlannerLimits:
    values = state.config_values()
    return PlannerLimits(
        moves_per_node_max=config_int(values, "moves_per_node_max"),
        moves_cluster_max=config_int(values, "moves_cluster_max"),
        skew_max=config_int(values, "replica_skew_max"),
        replicas_per_node_max=config_int(values, "shards_per_node_max"),
        rack_aware=config_bool(values, "rack_aware_placement"),
        leader_skew_max=config_int(values, "leader_skew_max"),
        leader_moves_max=config_int(values, "leader_moves_per_pass_max"),
    )


_WHY = {"decommission": "is decommissioned", "down_timeout": "is down past the timeout"}


def input_of(state: MetadataState) -> PlanInput:
    """The planner's view of the replicated state (O(shards))."""
    brokers = {
        n.id: BrokerInfo(n.rack, n.live, bool(n.evacuate), _WHY.get(n.evacuate, n.evacuate))
        for n in state.nodes.values()
    }
    rf = {s.name: s.replication_factor for s in state.streams.values()}
    shards: dict[str, ShardInfo | tuple[int, ...]] = {}
    for key, shard in state.shards.items():
        if not (shard.adding or shard.removing):  # the common case, kept lean
            shards[key] = ShardInfo(shard.replicas, shard.leader, rf.get(shard.stream, 0),
                                    shard.catching_up)  # fmt: skip
            continue
        finishable = (
            not any(r in shard.catching_up for r in shard.adding)
            and shard.leader not in shard.removing
        )
        shards[key] = ShardInfo(shard.replicas, shard.leader, rf.get(shard.stream, 0),
                                shard.catching_up, (shard.adding, shard.removing),
                                finishable)  # fmt: skip
    return PlanInput(brokers, shards)


def commands_for(state: MetadataState, steps: Plan) -> list[cmds.Command]:
    """The Raft commands that carry out ``steps`` (finishes, moves, then leaders)."""
    out: list[cmds.Command] = [cmds.FinishReassignment(key) for key in steps.finishes]
    for move in steps.moves:
        replicas = list(state.shards[move.shard].replicas)
        if move.add is not None and move.remove is not None:
            replicas[replicas.index(move.remove)] = move.add
        elif move.add is not None:
            replicas.append(move.add)
        elif move.remove is not None:
            replicas.remove(move.remove)
        out.append(cmds.ReassignShard(move.shard, tuple(replicas), reason=move.reason))
    for step in steps.leader_moves:
        if step.order is not None:
            out.append(cmds.ReassignShard(step.shard, step.order, reason=step.reason))
        out.append(cmds.MoveShardLeader(step.shard, step.node))
    return out


def cluster_health(state: MetadataState) -> tuple[int, int, int, int]:
    """(under-replicated, offline, replica skew, leader skew) of ``state`` (O(shards)).
    Under-replicated: fewer caught-up replicas on up brokers than the stream's factor."""
    rf = {s.name: s.replication_factor for s in state.streams.values()}
    up = {n.id for n in state.nodes.values() if n.state == NodeState.UP}
    under = offline = 0
    for shard in state.shards.values():
        if shard.leader is None:
            offline += 1
        live = sum(1 for r in shard.replicas if r in up and r not in shard.catching_up)
        if live < rf.get(shard.stream, 0):
            under += 1
    live_ids = [n.id for n in state.nodes.values() if n.accepts_replicas]
    if not live_ids:
        return under, offline, 0, 0
    replicas = [len(state.node_shards(n)) for n in live_ids]
    leaders = [state.leader_count(n) for n in live_ids]
    return under, offline, max(replicas) - min(replicas), max(leaders) - min(leaders)
