"""Linearizability of a key-value register history (Wing & Gong, with Lowe's memo).

Theory of operation
-------------------
A history is a list of `Operation`s, each with a call time, a return time and what it did
(write a value / read a value).  It is linearizable if every operation can be given one
instant between its call and its return so that, in that order, every read returns the
latest write to its key.  Registers on different keys are independent, so the history is
split per key and each key is checked alone (P-compositionality: exponentially cheaper).

Per key the search walks a doubly linked list of call/return events in time order:

* at a *call* it tries to linearize that operation now: if the model accepts it (a write
  always succeeds, a read must see the current value) and the pair (set of linearized
  operations, register value) was never seen before, the operation's call and return are
  unlinked, the choice is pushed on a stack and the walk restarts at the head;
* at a *return* whose operation is not linearized yet, the current prefix is impossible:
  pop the last choice, relink it and try the next candidate after it.

The memo of (linearized bitset, value) is Lowe's improvement: a configuration reached a
second time cannot lead anywhere new.  An operation whose outcome is unknown (the client
timed out) gets an infinite return time: it may take effect at any point after its call,
including "never" (it is linearized last, after everything else, where it is invisible).
Reads with an unknown outcome carry no information and are dropped by the caller.

The search is bounded by a step budget, not a clock: running out of budget counts as a
failure, because a check that did not finish proved nothing.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "STEPS_MAX_DEFAULT",
    "LinearizabilityResult",
    "OpKind",
    "Operation",
    "check_register_history",
]

STEPS_MAX_DEFAULT = 2_000_000
_NIL = -1


class OpKind(enum.Enum):
    WRITE = "write"
    READ = "read"


@dataclass(frozen=True, slots=True)
class Operation:
    """One client operation on one key.

    ``value`` is the value written, or the value a read returned (``None``: the key was
    never written).  ``ret`` is ``math.inf`` when the outcome is unknown.
    """

    client: int
    call: float
    ret: float
    kind: OpKind
    key: str
    value: str | None

    @property
    def unknown(self) -> bool:
        return math.isinf(self.ret)


@dataclass(frozen=True, slots=True)
class LinearizabilityResult:
    """``ok`` is False when a key's history is not linearizable *or* its check ran out of
    budget (``exhausted``); ``key`` names the first key that failed."""

    ok: bool
    key: str | None = None
    exhausted: bool = False
    steps: int = 0

    def __bool__(self) -> bool:
        return self.ok


def check_register_history(
    operations: Iterable[Operation], steps_max: int = STEPS_MAX_DEFAULT
) -> LinearizabilityResult:
    """Check a multi-key register history, key by key; every key starts unwritten."""
    by_key: dict[str, list[Operation]] = {}
    for op in operations:
        if op.ret < op.call:
            raise ValueError(f"operation returns before its call: {op}")
        if op.kind is OpKind.READ and op.unknown:
            continue  # an unanswered read constrains nothing
        by_key.setdefault(op.key, []).append(op)
    steps_total = 0
    for key in sorted(by_key):
        verdict, steps = _check_key(by_key[key], steps_max - steps_total)
        steps_total += steps
        if verdict is None:
            return LinearizabilityResult(False, key, exhausted=True, steps=steps_total)
        if not verdict:
            return LinearizabilityResult(False, key, steps=steps_total)
    return LinearizabilityResult(True, steps=steps_total)


class _EventList:
    """The call/return events of one key as a doubly linked list over arrays.

    Node 0 is the head sentinel; nodes 1..2n are events in time order (calls before
    returns at equal times, so touching operations count as concurrent).
    """

    def __init__(self, ops: Sequence[Operation]) -> None:
        order = sorted(
            [(op.call, 0, i) for i, op in enumerate(ops)]
            + [(op.ret, 1, i) for i, op in enumerate(ops)]
        )
        size = len(order) + 1
        self.op_of = [0] * size
        self.is_call = [False] * size
        self.match = [0] * size
        self.next = [_NIL] * size
        self.prev = [0] * size
        return_node: dict[int, int] = {}
        for node, (_, is_return, op_index) in enumerate(order, start=1):
            self.op_of[node] = op_index
            self.is_call[node] = not is_return
            if is_return:
                return_node[op_index] = node
            self.prev[node] = node - 1
            self.next[node - 1] = node
        for node in range(1, size):
            if self.is_call[node]:
                self.match[node] = return_node[self.op_of[node]]

    def _unlink(self, node: int) -> None:
        after = self.next[node]
        self.next[self.prev[node]] = after
        if after != _NIL:
            self.prev[after] = self.prev[node]

    def _relink(self, node: int) -> None:
        after = self.next[node]
        self.next[self.prev[node]] = node
        if after != _NIL:
            self.prev[after] = node

    def lift(self, call_node: int) -> None:
        """Remove an operation's call and return (it has been linearized)."""
        self._unlink(call_node)
        self._unlink(self.match[call_node])

    def unlift(self, call_node: int) -> None:
        """Undo `lift`, in reverse order (dancing links)."""
        self._relink(self.match[call_node])
        self._relink(call_node)


def _apply(state: str | None, op: Operation) -> tuple[bool, str | None]:
    """The register model: a write always succeeds, a read must see the current value."""
    if op.kind is OpKind.WRITE:
        return True, op.value
    return op.value == state, state


def _check_key(ops: Sequence[Operation], steps_max: int) -> tuple[bool | None, int]:
    """Wing–Gong search over one key; None means the step budget ran out."""
    events = _EventList(ops)
    state: str | None = None
    linearized = 0
    seen: set[tuple[int, str | None]] = set()
    stack: list[tuple[int, str | None]] = []
    node = events.next[0]
    steps = 0
    while events.next[0] != _NIL:
        steps += 1
        if steps > steps_max:
            return None, steps
        if events.is_call[node]:
            op_index = events.op_of[node]
            ok, new_state = _apply(state, ops[op_index])
            if ok:
                memo_key = (linearized | (1 << op_index), new_state)
                if memo_key not in seen:
                    seen.add(memo_key)
                    stack.append((node, state))
                    state, linearized = new_state, memo_key[0]
                    events.lift(node)
                    node = events.next[0]
                    continue
            node = events.next[node]
        else:
            if not stack:
                return False, steps
            node, state = stack.pop()
            linearized &= ~(1 << events.op_of[node])
            events.unlift(node)
            node = events.next[node]
    return True, steps
