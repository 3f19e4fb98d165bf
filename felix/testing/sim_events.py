"""The simulation's events and its one scheduler (docs/architecture.md §10).

Why a module: every part of a run -- the network, the nodes, the clients, the phases --
acts only by scheduling events here, and `Scheduler` is the run's only clock and its
only source of chance (one heap of ``(time, seq, event)``, one ``random.Random(seed)``).
So the order of everything, and with it a seed's bit-for-bit replay, is decided in one
place.  Each handled event is hashed as its repr into `SimResult.trace_hash`: renaming an
event class or one of its fields changes every seed's hash.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from dataclasses import dataclass
from typing import Any

from felix.proto.raft_messages import RaftMessage
from felix.testing.clients import ClientReply, ClientRequest
from felix.testing.faults import ChurnEvent, CrashEpisode, PartitionEpisode

__all__ = ["CLIENT_LINK_MS", "Scheduler"]

CLIENT_LINK_MS = (0.2, 2.0)  # one way between a client and a node: uniform in this range


class Scheduler:
    """The run's clock, event heap, random source and trace."""

    __slots__ = ("hasher", "now", "queue", "rng", "seq", "step_no", "trace")

    def __init__(self, seed: int, *, trace: list[str] | None, hash_trace: bool) -> None:
        """``trace`` collects one line per event (and script notes); with it, or with
        ``hash_trace``, every event is hashed into `trace_hash`."""
        self.rng = random.Random(seed)
        self.queue: list[tuple[float, int, Any]] = []
        self.seq = 0
        self.now = 0.0
        self.step_no = 0
        self.trace = trace
        self.hasher = hashlib.blake2b(digest_size=16) if hash_trace or trace is not None else None

    def at(self, delay_ms: float, event: object) -> None:
        """Schedule ``event`` ``delay_ms`` from now (ties: in the order scheduled)."""
        self.seq += 1
        heapq.heappush(self.queue, (self.now + delay_ms, self.seq, event))

    def pop(self) -> object:
        """The next event; the clock moves to its time and counts one more step."""
        time_ms, _, event = heapq.heappop(self.queue)
        self.now = time_ms
        self.step_no += 1
        return event

    def record(self, event: object) -> None:
        """Hash (and trace) the event just popped, if this run hashes at all."""
        if self.hasher is None:
            return
        line = f"{self.step_no} {self.now:.6f} {event!r}"
        self.hasher.update(line.encode())
        if self.trace is not None:
            self.trace.append(line)

    def note(self, text: str) -> None:
        """A comment line in the trace (not hashed)."""
        if self.trace is not None:
            self.trace.append(f"{self.step_no} {self.now:.6f} # {text}")

    def trace_hash(self) -> str:
        return self.hasher.hexdigest() if self.hasher else ""


# --------------------------------------------------------------------------- events


@dataclass(slots=True)
class _Tick:
    node: int
    incarnation: int


@dataclass(slots=True)
class _Deliver:
    src: int
    dst: int
    message: RaftMessage
    link_seq: int


@dataclass(slots=True)
class _FsyncDone:
    node: int
    incarnation: int


@dataclass(slots=True)
class _ClientArrive:
    node: int
    request: ClientRequest


@dataclass(slots=True)
class _ClientReplyArrive:
    reply: ClientReply


@dataclass(slots=True)
class _ClientTimeout:
    client: int
    op_seq: int


@dataclass(slots=True)
class _ClientIssue:
    client: int


@dataclass(slots=True)
class _ClientRetry:
    client: int
    op_seq: int


@dataclass(slots=True)
class _PartitionStart:
    episode_id: int
    episode: PartitionEpisode


@dataclass(slots=True)
class _PartitionEnd:
    episode_id: int


@dataclass(slots=True)
class _Crash:
    episode: CrashEpisode


@dataclass(slots=True)
class _CrashNow:
    node: int
    incarnation: int
    downtime_ms: float | None  # None: down until something restarts it
    lose_unsynced: bool = False  # all unsynced bytes lost (else as the plan's odds say)


@dataclass(slots=True)
class _PowerLoss:
    at_commit: bool = False  # wait for the next commit advance on a leader, then strike


@dataclass(slots=True)
class _Restart:
    node: int


@dataclass(slots=True)
class _Churn:
    event: ChurnEvent


@dataclass(slots=True)
class _Heal:
    pass


@dataclass(slots=True)
class _LivenessDeadline:
    pass


@dataclass(slots=True)
class _ScriptWake:
    step: int  # re-evaluate the script (a retry or a timeout is due)


@dataclass(slots=True)
class _MemberTick:
    pass  # the membership operator looks at the cluster (felix.testing.sim_membership)


@dataclass(slots=True)
class _Retire:
    node: int  # a removed node's process goes away for good
