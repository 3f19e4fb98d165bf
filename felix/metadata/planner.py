"""The replica planner: from one state, a bounded list of moves toward a goal (issue 13).

Pure and deterministic: the same `PlanInput` gives the same moves on every node, with no
randomness and no dependence on dict order (everything is walked sorted).  Only the
leader plans (leader soft state); its moves become ordinary Raft commands, so a new
leader re-plans from the replicated state and loses nothing.

A move is make-before-break: ``add`` joins the shard as a catching-up replica first, and
``remove`` leaves only after ``add`` reports ready, so no move ever lowers a shard's
count of live replicas, not even while it runs.  Passes, in priority order:

1. evacuate: replicas on brokers that must be emptied (down past the timeout,
   decommissioning) go to live brokers;
2. rack spread: a shard with two replicas in one rack moves one to an unused rack;
3. balance: replicas move from the most to the least loaded live broker until the
   spread is within ``skew_max``.

Bounded by ``moves_per_node_max`` (moves touching one broker, counting those already in
flight) and ``moves_cluster_max``.  Every move carries the reason an operator is shown.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    rack: str
    live: bool  # up and not draining: may receive replicas
    evacuate: bool = False  # every replica must leave (down past the timeout, decommission)
    why: str = ""  # why it is evacuated, for the move's reason


@dataclass(frozen=True, slots=True)
class PlannerLimits:
    moves_per_node_max: int = 2
    moves_cluster_max: int = 64
    skew_max: int = 1  # most minus least replicas over live brokers
    replicas_per_node_max: int = 1 << 30
    rack_aware: bool = True


@dataclass(frozen=True, slots=True)
class PlanInput:
    brokers: Mapping[int, BrokerInfo]
    shards: Mapping[str, tuple[int, ...]]  # shard key -> replicas (leader first)
    in_flight: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # key -> (add, remove)


@dataclass(frozen=True, slots=True)
class Move:
    shard: str
    add: int
    remove: int
    reason: str


class _Budget:
    """Move bounds, charged as moves are planned (in-flight moves charged up front)."""

    def __init__(self, limits: PlannerLimits, in_flight: Iterable[tuple[int, int]]) -> None:
        self.limits = limits
        self.per_node: dict[int, int] = {}
        self.total = 0
        for add, remove in in_flight:
            self._charge(add, remove)

    def _charge(self, add: int, remove: int) -> None:
        self.total += 1
        for node in (add, remove):
            self.per_node[node] = self.per_node.get(node, 0) + 1

    def allows(self, add: int, remove: int) -> bool:
        per = self.limits.moves_per_node_max
        return (
            self.total < self.limits.moves_cluster_max
            and self.per_node.get(add, 0) < per
            and self.per_node.get(remove, 0) < per
        )

    def take(self, add: int, remove: int) -> None:
        assert self.allows(add, remove)
        self._charge(add, remove)


class _Planner:
    def __init__(self, given: PlanInput, limits: PlannerLimits) -> None:
        self.brokers = given.brokers
        self.limits = limits
        self.replicas = {key: list(r) for key, r in sorted(given.shards.items())}
        self.busy = set(given.in_flight)  # one move per shard at a time
        self.budget = _Budget(limits, given.in_flight.values())
        self.load: dict[int, int] = {b: 0 for b in given.brokers}
        for replicas in self.replicas.values():
            for b in replicas:
                self.load[b] = self.load.get(b, 0) + 1
        for add, _ in given.in_flight.values():  # a catching-up replica already counts
            self.load[add] = self.load.get(add, 0) + 1
        self.moves: list[Move] = []

    @property
    def live(self) -> list[int]:
        return sorted(b for b, info in self.brokers.items() if info.live and not info.evacuate)

    def _rack(self, broker: int) -> str:
        info = self.brokers.get(broker)
        return info.rack if info is not None else ""

    def _target(self, key: str, leaving: int, *, spread_only: bool = False) -> int | None:
        """The best live broker to take ``leaving``'s replica of ``key``: not in the
        shard; a rack the other replicas do not use if rack-aware; then the least
        loaded; then the lowest id."""
        replicas = self.replicas[key]
        racks = {self._rack(b) for b in replicas if b != leaving}
        best: tuple[int, int, int] | None = None
        for b in self.live:
            if b in replicas or self.load[b] >= self.limits.replicas_per_node_max:
                continue
            new_rack = self._rack(b) not in racks
            if spread_only and not new_rack:
                continue
            if not self.budget.allows(b, leaving):
                continue
            rank = (0 if (new_rack or not self.limits.rack_aware) else 1, self.load[b], b)
            if best is None or rank < best:
                best = rank
        return best[2] if best is not None else None

    def _move(self, key: str, add: int, remove: int, reason: str) -> None:
        self.budget.take(add, remove)
        self.busy.add(key)
        self.load[add] += 1
        self.load[remove] -= 1
        slot = self.replicas[key].index(remove)
        self.replicas[key][slot] = add
        self.moves.append(Move(key, add, remove, reason))

    def evacuate(self) -> None:
        for key, replicas in self.replicas.items():
            for b in list(replicas):
                info = self.brokers.get(b)
                gone = info is None or info.evacuate
                if key in self.busy or not gone:
                    continue
                target = self._target(key, b)
                if target is not None:
                    why = info.why if info is not None else "is not registered"
                    self._move(key, target, b, f"broker {b} {why or 'is being emptied'}")

    def spread(self) -> None:
        if not self.limits.rack_aware:
            return
        for key, replicas in self.replicas.items():
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
        while True:
            live = self.live
            if len(live) < 2:
                return
            most = max(live, key=lambda b: (self.load[b], -b))
            least = min(live, key=lambda b: (self.load[b], b))
            if self.load[most] - self.load[least] <= self.limits.skew_max:
                return
            if not self._shed_one(most):
                return

    def _shed_one(self, broker: int) -> bool:
        """Move one replica off ``broker`` to a less loaded one, keeping rack spread."""
        for key, replicas in self.replicas.items():
            if key in self.busy or broker not in replicas:
                continue
            target = self._target(key, broker)
            if target is None or self.load[target] + 1 >= self.load[broker]:
                continue
            racks = {self._rack(b) for b in replicas if b != broker}
            breaks_spread = self._rack(target) in racks and self._rack(broker) not in racks
            if self.limits.rack_aware and breaks_spread:
                continue  # the move would break spread that holds now
            self._move(key, target, broker, f"balance: broker {broker} holds {self.load[broker]}")
            return True
        return False


def plan(given: PlanInput, limits: PlannerLimits) -> list[Move]:
    """The moves of one pass, in the order to propose them (see the module docstring)."""
    planner = _Planner(given, limits)
    planner.evacuate()
    planner.spread()
    planner.balance()
    return planner.moves


def apply_moves(
    shards: Mapping[str, tuple[int, ...]], moves: Iterable[Move]
) -> dict[str, tuple[int, ...]]:
    """The replica sets once ``moves`` have completed (a test and bench helper)."""
    out = {key: list(r) for key, r in shards.items()}
    for move in moves:
        replicas = out[move.shard]
        replicas[replicas.index(move.remove)] = move.add
    return {key: tuple(r) for key, r in out.items()}
