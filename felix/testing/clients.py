"""The client side of the simulation: requests, replies and the recorded history.

Clients run a closed loop (one operation in flight each) against a replicated key-value
register: writes of unique values, and linearizable reads.  What they saw is recorded as
`felix.testing.linearizability.Operation`s:

* a write acknowledged as applied → a completed write;
* a write refused (not appended) or overwritten in the log (definitely not applied) →
  nothing: it never took effect;
* a write whose client gave up (timeout, crashed node) → an *unknown* write: it may or
  may not have taken effect;
* a read answered → a completed read; an unanswered read → nothing.

History times are event sequence numbers, so "returned before called" is exact.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

from felix.testing.linearizability import OpKind

__all__ = [
    "ClientOp",
    "ClientReply",
    "ClientRequest",
    "ReplyOutcome",
    "decode_command",
    "decode_state",
    "encode_command",
    "encode_state",
]


class ReplyOutcome(enum.Enum):
    OK = "ok"
    REFUSED = "refused"  # not appended / not leader: safe to retry elsewhere
    FAILED = "failed"  # appended but overwritten: definitely not applied


@dataclass(slots=True)
class ClientOp:
    """The operation a client has in flight."""

    seq: int
    kind: OpKind
    key: str
    value: str | None
    call: int
    attempt: int = 0
    target: int = 1


@dataclass(frozen=True, slots=True)
class ClientRequest:
    client: int
    op_seq: int
    attempt: int
    kind: OpKind
    key: str
    value: str | None


@dataclass(frozen=True, slots=True)
class ClientReply:
    client: int
    op_seq: int
    attempt: int
    outcome: ReplyOutcome
    value: str | None = None
    leader_hint: int | None = None
    index: int = 0
    term: int = 0


def encode_command(key: str, value: str) -> bytes:
    """A NORMAL entry's payload: set ``key`` to ``value`` (values are unique)."""
    return f"set|{key}|{value}".encode()


def decode_command(data: bytes) -> tuple[str, str] | None:
    """(key, value) of a set command; None for anything else (e.g. a liveness probe)."""
    parts = data.decode().split("|")
    if len(parts) == 3 and parts[0] == "set":
        return parts[1], parts[2]
    return None


def encode_state(applied: int, digest: int, kv: dict[str, str]) -> bytes:
    """A state-machine snapshot: applied index, applied-sequence digest, the register."""
    return json.dumps({"applied": applied, "digest": digest, "kv": kv}, sort_keys=True).encode()


def decode_state(data: bytes) -> tuple[int, int, dict[str, str]]:
    state = json.loads(data)
    return int(state["applied"]), int(state["digest"]), dict(state["kv"])
