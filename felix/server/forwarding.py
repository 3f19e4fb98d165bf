"""`Forwarder`: run a client's request on the leader, wherever it is.

A write or a health report reaching a follower travels to the leader over the
authenticated peer link as a `Forward`; the leader runs it through the handler for its
kind and answers with a `ForwardResult` (an `Outcome` on the wire).  The Raft core never
sees either.  The node hands both message types to this object over a bounded channel
(`RaftNode.forwarded`), so data flows one way: transport → node → forwarder.

A request forwarded to a node that stops leading is abandoned at once with an unknown
outcome (``timeout``): the old leader may have replicated it before it fell.  A request
refused with nothing applied (``not_leader``, ``not_committed``) -- by the leader it was
sent to, or by this node's own core during a hand-off or right after it stepped down --
waits for the next leader and is tried there, within its deadline (`Forwarder.submit`;
docs/architecture.md §6).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable, Mapping

import trio

from felix.proto.codes import ErrorCode
from felix.proto.raft_messages import Forward, ForwardKind, ForwardResult
from felix.server.outcome import Outcome
from felix.server.raft_node import RaftNode
from felix.transport.base import UnknownPeer

log = logging.getLogger("felix.forwarding")

ForwardHandler = Callable[[bytes], Awaitable[Outcome]]
SERVING_MAX = 1024  # forwarded requests run at once on the leader; more wait in the channel
FORWARDS_PENDING_MAX = 10_000  # our requests awaiting the leader's answer
# Answers after which nothing was applied anywhere: the request is tried at the next leader.
NOTHING_APPLIED = frozenset({ErrorCode.NOT_LEADER, ErrorCode.NOT_COMMITTED})


class _Pending:
    __slots__ = ("done", "leader", "outcome")

    def __init__(self, leader: int) -> None:
        self.leader = leader  # the node it was forwarded to
        self.done = trio.Event()
        self.outcome: Outcome | None = None

    def finish(self, outcome: Outcome) -> None:
        if not self.done.is_set():
            self.outcome = outcome
            self.done.set()


class Forwarder:
    def __init__(self, node: RaftNode, handlers: Mapping[ForwardKind, ForwardHandler]) -> None:
        self.node = node
        self.handlers = dict(handlers)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self.stopping = False  # `drain` was called: new requests are turned away
        self._in_flight = 0  # `submit` calls not yet answered
        self._idle = trio.Event()

    def serves(self, kind: ForwardKind) -> bool:
        return kind in self.handlers

    async def submit(
        self, kind: ForwardKind, data: bytes, *, timeout_s: float | None = None
    ) -> Outcome:
        """Run a request on the leader: here if this node leads, else forwarded, within
        ``timeout_s`` (default: the node's proposal timeout).

        An answer that says nothing was applied -- ``not_leader`` (from the leader it was
        forwarded to, or from this node's own core, which stepped down or is handing
        leadership over) or ``not_committed`` (appended, then overwritten by a new
        leader: Raft paper §5.3) -- is not the end: the request waits for the next
        leader and is tried there, until the deadline.  A leader handing leadership over
        (thesis §3.10) takes no proposals, so the request waits here for the new leader
        instead of being refused at once.  Past the deadline, a request nobody took is
        ``not_leader`` naming the leader known then -- never this node."""
        if self.stopping:
            return self._nobody_took_it(0.0, None, stopping=True)
        self._in_flight += 1
        try:
            return await self._submit(kind, data, timeout_s)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def drain(self) -> None:
        """Stop taking requests, then return once every request in flight has its
        answer (a stopping node, after its hand-off: docs/architecture.md §9).  Each new
        request is answered ``not_leader`` naming the leader (nothing was done), so its
        client retries there instead of losing the answer when the connection closes."""
        self.stopping = True
        while self._in_flight:
            self._idle = trio.Event()
            await self._idle.wait()

    async def _submit(self, kind: ForwardKind, data: bytes, timeout_s: float | None) -> Outcome:
        node = self.node
        timeout = node.settings.proposal_timeout_s if timeout_s is None else timeout_s
        deadline = trio.current_time() + timeout
        refused: Outcome | None = None  # the last "nothing was applied" answer
        while trio.current_time() < deadline:
            leader = node.core.leader_id
            outcome: Outcome | None = None
            if leader == node.node_id:
                if not node.handing_over:
                    outcome = await self._handle_until(kind, data, deadline, timeout)
            elif leader is not None:
                outcome = await self._forward_once(leader, kind, data, deadline, timeout)
            if outcome is not None:
                if outcome.error not in NOTHING_APPLIED:
                    return outcome
                refused = outcome
            with trio.move_on_at(deadline):
                await node.wait_changed()  # a leader appeared, moved, or finished handing over
        return self._nobody_took_it(timeout, refused)

    def _nobody_took_it(
        self, timeout: float, refused: Outcome | None, *, stopping: bool = False
    ) -> Outcome:
        """The deadline passed and every attempt was refused (or none could be made), or
        this node is stopping: nothing was applied.  The detail names the leader if
        another node is known to lead, else none: a node handing leadership over is not
        "the leader" to retry at."""
        node = self.node
        leader = node.core.leader_id
        if leader is not None and leader != node.node_id:
            hint = f"the leader is node {leader}"
        elif leader == node.node_id and node.handing_over:
            hint = "this node is handing leadership over; no new leader yet"
        elif leader == node.node_id:
            hint = "no other leader known"
        else:
            hint = "no leader known"
        if stopping:
            return Outcome.failed(ErrorCode.NOT_LEADER, f"node {node.node_id} is stopping; {hint}")
        if refused is not None and refused.error is ErrorCode.NOT_COMMITTED:
            detail = f"overwritten by a new leader, not applied within {timeout} s; {hint}"
            return Outcome.failed(ErrorCode.NOT_COMMITTED, detail)
        return Outcome.failed(
            ErrorCode.NOT_LEADER, f"no leader took the request within {timeout} s; {hint}"
        )

    async def _handle_until(
        self, kind: ForwardKind, data: bytes, deadline: float, timeout: float
    ) -> Outcome:
        """`_handle`, bounded by the request's deadline (an answer cut off there is
        unknown: the proposal may be in the log)."""
        with trio.move_on_at(deadline):
            return await self._handle(kind, data)
        return Outcome.failed(
            ErrorCode.TIMEOUT, f"no outcome within {timeout} s; the write may still commit"
        )

    async def _handle(self, kind: ForwardKind, data: bytes) -> Outcome:
        handler = self.handlers.get(kind)
        if handler is None:
            return Outcome.failed(ErrorCode.BAD_REQUEST, f"{kind.name} is not served")
        return await handler(data)

    async def _forward_once(
        self, leader: int, kind: ForwardKind, data: bytes, deadline: float, timeout: float
    ) -> Outcome | None:
        """The leader's answer; None if the request could not be sent (nothing done)."""
        if len(self._pending) >= FORWARDS_PENDING_MAX:
            detail = (
                f"{FORWARDS_PENDING_MAX} requests already forwarded from node {self.node.node_id}"
            )
            return Outcome.failed(ErrorCode.UNAVAILABLE, detail)
        rid = next(self._ids)
        pending = self._pending[rid] = _Pending(leader)
        try:
            try:
                self.node.transport.send_nowait(leader, Forward(rid, kind, data))
            except (trio.WouldBlock, UnknownPeer):
                return None  # not sent: the caller waits for a leader change, then retries
            with trio.move_on_at(deadline):
                await pending.done.wait()
            if pending.outcome is None:
                return Outcome.failed(
                    ErrorCode.TIMEOUT,
                    f"no answer from node {leader} within {timeout} s; the write may still commit",
                )
            return pending.outcome
        finally:
            self._pending.pop(rid, None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve forwarded requests and collect the answers to ours, until cancelled."""
        limit = trio.Semaphore(SERVING_MAX)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._abandon_on_leader_change)
            task_status.started()
            async for sender, message in self.node.forwarded:
                if isinstance(message, ForwardResult):
                    pending = self._pending.pop(message.request_id, None)
                    if pending is not None:
                        pending.finish(Outcome.of_forward_result(message))
                    continue
                await limit.acquire()
                nursery.start_soon(self._serve, sender, message, limit)

    async def _serve(self, sender: int, message: Forward, limit: trio.Semaphore) -> None:
        try:
            outcome = await self._handle(message.kind, message.data)
            result = outcome.to_forward_result(message.request_id)
            # Dropped if it cannot be sent: the requester's wait ends at its deadline.
            with contextlib.suppress(trio.WouldBlock, UnknownPeer):
                self.node.transport.send_nowait(sender, result)
        finally:
            limit.release()

    async def _abandon_on_leader_change(self) -> None:
        while True:
            await self.node.wait_leader_changed()
            leader = self.node.core.leader_id
            for rid, pending in list(self._pending.items()):
                if pending.leader != leader:
                    del self._pending[rid]
                    pending.finish(
                        Outcome.failed(
                            ErrorCode.TIMEOUT,  # the outcome is unknown, as after a timeout
                            "the leader changed while the request was forwarded to it; "
                            "it may or may not have been applied",
                        )
                    )
