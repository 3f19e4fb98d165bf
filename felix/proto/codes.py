"""`ErrorCode`: why a request failed, on the client stream (`Error`) and on the peer
link (`ForwardResult`) alike (docs/architecture.md, "Typed outcomes")."""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    BAD_REQUEST = "bad_request"
    UNAUTHORIZED = "unauthorized"
    NOT_LEADER = "not_leader"  # refused before it was proposed: nothing changed
    CONFLICT = "conflict"  # compare-and-set failed
    REJECTED = "rejected"  # a metadata command failed validation
    NOT_COMMITTED = "not_committed"  # overwritten by a new leader: it never applied
    UNAVAILABLE = "unavailable"  # overloaded or stopping: nothing changed
    TIMEOUT = "timeout"  # no outcome in time: it may still apply
    INTERNAL = "internal"
