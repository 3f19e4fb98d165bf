"""The request table: proposals and reads waiting for their outcome on one node.

A proposal's caller awaits a `Waiter`.  The core tells us the (index, term) it was
appended at (`Ready.proposed`); when the entry applied at that index has that term the
proposal succeeded, otherwise a new leader overwrote it and the caller gets
`ProposalLost` (never a false success: §5.4, Figure 8 of the Raft paper).  Reads wait
for their ReadIndex point to be applied (thesis §6.4).  Every wait is bounded by a
timeout, and the table by ``pending_max``.

Called only from the node's tasks: `register_*` / `wait` by any task, `resolve`,
`entry_applied`, `release_reads` and `fail_all` by the Raft loop.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import trio

from felix.proto.codes import ErrorCode
from felix.proto.raft_messages import Entry
from felix.raft.ready import ProposalRefused, ReadRefused, Ready
from felix.server.metrics import NodeMetrics
from felix.server.outcome import Outcome

# --- errors a caller can get -------------------------------------------------------------


class NodeError(Exception):
    """A request this node could not carry out; the message says why."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def outcome(self) -> Outcome:
        return Outcome.failed(self.code, str(self))


class NotLeader(NodeError):
    code = ErrorCode.NOT_LEADER

    def __init__(
        self, leader_hint: int | None, reason: str = "not the leader", *, node_id: int = 0
    ) -> None:
        """``node_id``: the refusing node.  A leader that refuses (it is handing
        leadership over, thesis §3.10) names itself in its hint; the message then says
        that, never "the leader is node <itself>"."""
        self.leader_hint = leader_hint
        if leader_hint and leader_hint == node_id:
            hint = "; this node is handing leadership over"
        elif leader_hint:
            hint = f"; the leader is node {leader_hint}"
        else:
            hint = "; no leader known"
        super().__init__(reason + hint)


class ProposalLost(NodeError):
    """The entry was overwritten by a new leader: it did not commit."""

    code = ErrorCode.NOT_COMMITTED


class ProposalTimeout(NodeError):
    """No outcome within the timeout: the write may or may not commit later."""

    code = ErrorCode.TIMEOUT


class Overloaded(NodeError):
    """Too many proposals pending; try again later."""

    code = ErrorCode.UNAVAILABLE


class ShuttingDown(NodeError):
    """The node is stopping."""

    code = ErrorCode.UNAVAILABLE


@dataclass(slots=True)
class Waiter:
    done: trio.Event = field(default_factory=trio.Event)
    index: int = 0  # the log index the proposal was appended at (0: not yet)
    term: int = 0
    result: Any = None
    error: NodeError | None = None
    started_s: float = 0.0  # perf_counter at registration (commit latency)

    def finish(self, result: Any = None, error: NodeError | None = None) -> None:
        if not self.done.is_set():
            self.result, self.error = result, error
            self.done.set()


class RequestTable:
    def __init__(
        self, node_id: int, metrics: NodeMetrics, *, pending_max: int, timeout_s: float
    ) -> None:
        self.node_id = node_id
        self.metrics = metrics
        self.pending_max = pending_max
        self.timeout_s = timeout_s
        self.stopping = False
        self._ids = itertools.count(1)
        self.proposals: dict[int, Waiter] = {}  # request id -> waiter
        self._by_index: dict[int, int] = {}  # log index -> request id
        self.reads: dict[int, Waiter] = {}  # request id -> waiter
        self._reads_ready: list[tuple[int, int]] = []  # (index, request id) to release

    def __len__(self) -> int:
        return len(self.proposals) + len(self.reads)

    # --- any task ------------------------------------------------------------------------

    def register(self, table: dict[int, Waiter]) -> tuple[int, Waiter]:
        if self.stopping:
            raise ShuttingDown(f"node {self.node_id} is shutting down")
        if len(self) >= self.pending_max:
            self.metrics.proposals_failed.labels("overloaded").inc()
            raise Overloaded(f"{self.pending_max} requests already pending on node {self.node_id}")
        rid = next(self._ids)
        waiter = table[rid] = Waiter(started_s=time.perf_counter())
        return rid, waiter

    def forget(self, rid: int, waiter: Waiter) -> None:
        """The caller stopped waiting (done, timed out or cancelled)."""
        self.proposals.pop(rid, None)
        self.reads.pop(rid, None)
        if self._by_index.get(waiter.index) == rid:
            del self._by_index[waiter.index]

    async def wait(self, waiter: Waiter, timeout_s: float | None) -> Any:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        with trio.move_on_after(timeout if timeout > 0 else math.inf):
            await waiter.done.wait()
        if not waiter.done.is_set():
            self.metrics.proposals_failed.labels("timeout").inc()
            raise ProposalTimeout(f"no outcome within {timeout} s; the write may still commit")
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    # --- the Raft loop -------------------------------------------------------------------

    def resolve(self, ready: Ready) -> None:
        """Note where proposals were appended; fail the refused ones; queue reads."""
        for accepted in ready.proposed:
            waiter = self.proposals.get(accepted.request_id)
            if waiter is not None:
                waiter.index, waiter.term = accepted.index, accepted.term
                self._by_index[accepted.index] = accepted.request_id
        for refused in ready.refused:
            table = self.reads if isinstance(refused, ReadRefused) else self.proposals
            waiter = table.pop(refused.request_id, None)
            if waiter is not None:
                reason = "proposal refused" if isinstance(refused, ProposalRefused) else "read"
                self.metrics.proposals_failed.labels("refused").inc()
                waiter.finish(
                    error=NotLeader(
                        refused.leader_hint, f"{reason}: {refused.reason}", node_id=self.node_id
                    )
                )
        for state in ready.read_states:
            self._reads_ready.append((state.index, state.request_id))

    def entry_applied(self, entry: Entry, result: Any) -> None:
        """The proposal appended at ``entry.index`` (if any) learns its outcome."""
        rid = self._by_index.pop(entry.index, None)
        if rid is None:
            return
        waiter = self.proposals.pop(rid, None)
        if waiter is None:
            return
        if entry.term == waiter.term:
            self.metrics.proposals_committed.inc()
            self.metrics.commit_latency.observe(time.perf_counter() - waiter.started_s)
            waiter.finish((entry.index, result))
        else:
            self.metrics.proposals_failed.labels("lost").inc()
            waiter.finish(
                error=ProposalLost(f"entry {entry.index} was overwritten by a new leader")
            )

    def release_reads(self, applied_index: int) -> None:
        if not self._reads_ready:
            return
        keep = []
        for index, rid in self._reads_ready:
            if index <= applied_index:
                waiter = self.reads.get(rid)
                if waiter is not None:
                    waiter.finish(index)
            else:
                keep.append((index, rid))
        self._reads_ready = keep

    def fail_all(self, error: NodeError) -> None:
        """Fail every waiting request; a proposal already in the log may still commit
        (another node may have it), so its caller hears "outcome unknown", not ``error``."""
        self.stopping = True
        for table in (self.proposals, self.reads):
            for waiter in table.values():
                if table is self.proposals and waiter.index:
                    waiter.finish(
                        error=ProposalTimeout(f"{error}; entry {waiter.index} may still commit")
                    )
                else:
                    waiter.finish(error=error)
            table.clear()
        self._by_index.clear()


ResultOutcome = Callable[[int, Any], Outcome]
"""Maps a committed proposal's (index, state-machine result) to its `Outcome`: a
command the state machine rejected deterministically committed but changed nothing."""


def applied_ok(index: int, result: Any) -> Outcome:
    return Outcome(index)
