"""The simulation's clients: a closed loop of writes and reads per client, and the
history they record for the linearizability check.

Why a module: clients sit outside the cluster and talk to it only through events (a
`_ClientArrive` at a node, a `_ClientReplyArrive` back; `felix.testing.clients` holds
what those carry), so they need nothing of the nodes but their ids.  What the clients
saw -- and nothing the nodes know -- is what `check_register_history` judges at the end.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from felix.testing.checkers import ClusterChecker
from felix.testing.clients import ClientOp, ClientRequest, ReplyOutcome
from felix.testing.faults import FaultPlan
from felix.testing.linearizability import Operation, OpKind, check_register_history
from felix.testing.sim_events import (
    CLIENT_LINK_MS,
    Scheduler,
    _ClientArrive,
    _ClientIssue,
    _ClientReplyArrive,
    _ClientRetry,
    _ClientTimeout,
)

__all__ = ["Clients"]


@dataclass(slots=True)
class _Client:
    client_id: int
    believed_leader: int
    op: ClientOp | None = None
    next_seq: int = 0


class Clients:
    """Every client of one run and the history of what they saw.  While ``paused`` (a
    script runs, or the run is past its fault phase) clients start no operations."""

    def __init__(
        self,
        plan: FaultPlan,
        voters: tuple[int, ...],
        sched: Scheduler,
        checker: ClusterChecker,
    ) -> None:
        self.plan, self.voters, self.sched, self.checker = plan, voters, sched, checker
        self.clients = [_Client(c, sched.rng.choice(voters)) for c in range(plan.clients)]
        self.history: list[Operation] = []
        self.paused = False

    def start(self) -> None:
        """Each client starts its loop after a random think time."""
        for client in self.clients:
            think_ms = self.sched.rng.uniform(0, self.plan.client_think_ms_max)
            self.sched.at(think_ms, _ClientIssue(client.client_id))

    def scripted_write(self, target: int) -> bool:
        """A script's `Write`: client 0 writes through node ``target`` (False: it is busy)."""
        client = self.clients[0]
        if client.op is not None:
            return False
        client.next_seq += 1
        self._issue(client, OpKind.WRITE, "k0", target)
        return True

    def on_issue(self, event: _ClientIssue) -> None:
        client = self.clients[event.client]
        if self.paused or client.op is not None:
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

    def on_reply(self, event: _ClientReplyArrive) -> None:
        reply = event.reply
        client = self.clients[reply.client]
        op = client.op
        if op is None or op.seq != reply.op_seq or op.attempt != reply.attempt:
            return  # an answer to an attempt the client gave up on
        if reply.outcome is ReplyOutcome.REFUSED:
            client.believed_leader = reply.leader_hint or self.sched.rng.choice(self.voters)
            op.target = client.believed_leader
            retry_ms = self.sched.rng.uniform(1.0, 10.0)
            self.sched.at(retry_ms, _ClientRetry(client.client_id, op.seq))
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

    def on_retry(self, event: _ClientRetry) -> None:
        client = self.clients[event.client]
        if client.op is not None and client.op.seq == event.op_seq:
            self._send_request(client, client.op)

    def on_timeout(self, event: _ClientTimeout) -> None:
        client = self.clients[event.client]
        op = client.op
        if op is None or op.seq != event.op_seq:
            return
        if op.kind is OpKind.WRITE:
            self.history.append(
                Operation(client.client_id, op.call, math.inf, op.kind, op.key, op.value)
            )
        client.believed_leader = self.sched.rng.choice(self.voters)
        self._finish_op(client)

    def _finish_op(self, client: _Client) -> None:
        client.op = None
        think_ms = self.sched.rng.uniform(0, self.plan.client_think_ms_max)
        self.sched.at(think_ms, _ClientIssue(client.client_id))

    # ------------------------------------------------------------------ the end

    def close(self) -> None:
        """The run stopped: writes still in flight are unknown (they may have applied)."""
        for client in self.clients:
            op = client.op
            if op is not None and op.kind is OpKind.WRITE:
                self.history.append(
                    Operation(client.client_id, op.call, math.inf, op.kind, op.key, op.value)
                )

    def check_history(self, applied_values: set[str]) -> None:
        """The history must be linearizable (``applied_values``: every value a node
        applied); a failing key's history is written to a file for a human."""
        result = check_register_history(self._settled_history(applied_values))
        if not result.ok:
            why = "check ran out of budget" if result.exhausted else "not linearizable"
            ops = [op for op in self.history if op.key == result.key]
            path = _dump_history(self.plan.seed, ops)
            self.checker.fail(
                "linearizability", f"key {result.key}: {why}; {len(ops)} ops written to {path}"
            )

    def _settled_history(self, applied_values: set[str]) -> list[Operation]:
        """Drop unknown writes whose unique value no node ever applied: they never took
        effect (as etcd's robustness suite patches its histories).  Keeps the search
        small; unknown writes that were applied stay unknown-but-possible."""
        return [
            op
            for op in self.history
            if not (op.unknown and op.kind is OpKind.WRITE and op.value not in applied_values)
        ]


def _dump_history(seed: int, ops: Sequence[Operation]) -> str:
    """Write a failing key's history where a human can read it, one op per line."""
    path = Path(tempfile.gettempdir()) / f"felix_sim_history_{seed}.txt"
    lines = [
        f"client={op.client} call={op.call} ret={op.ret} {op.kind.value} {op.value}" for op in ops
    ]
    path.write_text("\n".join(lines) + "\n")
    return str(path)
