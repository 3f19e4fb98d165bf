"""`Outcome`: what became of one request, from the Raft node to the client's reply.

One type end to end (docs/architecture.md, "Typed outcomes"): the node's proposal
result, a forwarded request's `ForwardResult` on the peer link, a health report, and
the client API's `WriteResult` / `Error` are all built from it, so an error code is an
`ErrorCode` everywhere and success is ``error is None``, never an empty string.
"""

from __future__ import annotations

from dataclasses import dataclass

from felix.proto.client_messages import ErrorCode
from felix.proto.raft_messages import ForwardResult


@dataclass(frozen=True, slots=True)
class Outcome:
    index: int = 0  # the log index the request applied at (0 if it did not apply)
    error: ErrorCode | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(cls, error: ErrorCode, detail: str, index: int = 0) -> Outcome:
        return cls(index, error, detail)

    def to_forward_result(self, request_id: int) -> ForwardResult:
        return ForwardResult(request_id, self.index, self.error, self.detail)

    @classmethod
    def of_forward_result(cls, message: ForwardResult) -> Outcome:
        return cls(message.index, message.error_code, message.detail)
