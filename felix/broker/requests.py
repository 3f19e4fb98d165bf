"""Writes through the current control-plane connection: the pending-request table and
the retry rules (see `felix.broker.client`)."""

from __future__ import annotations

import itertools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

import trio

from felix.broker.connection import ClientConnection, ConnectionClosed
from felix.proto.client_messages import Error, ErrorCode, Record, WriteRequest, WriteResult

RETRYABLE_CODES: Final = frozenset(
    {ErrorCode.NOT_LEADER, ErrorCode.NOT_COMMITTED, ErrorCode.UNAVAILABLE}
)  # never applied
UNKNOWN_OUTCOME_CODES: Final = frozenset({ErrorCode.TIMEOUT})


class WriteError(Exception):
    """A write the control plane refused (or whose outcome is unknown)."""

    def __init__(self, code: ErrorCode, detail: str) -> None:
        self.code, self.detail = code, detail
        super().__init__(f"{code.value}: {detail}")


@dataclass(eq=False)
class _PendingWrite:
    done: trio.Event = field(default_factory=trio.Event)
    reply: WriteResult | Error | None = None  # None when the connection was lost


WriteOnce = Callable[[str, Record, "int | None"], Awaitable["WriteResult | Error | None"]]


def backoff(failures: int, low_s: float, high_s: float, rng: random.Random) -> float:
    """A jittered exponential back-off after ``failures`` failures in a row."""
    ceiling = min(high_s, low_s * 2.0 ** min(failures, 32))
    return ceiling * rng.uniform(0.5, 1.0)


class Requests:
    """Write requests in flight on the current connection, by request id.

    The session `attach`es each new connection and `detach`es it when it ends (every
    request still pending then gets reply None: its outcome is unknown)."""

    def __init__(
        self,
        *,
        timeout_s: float,
        backoff_s: tuple[float, float],
        rng: random.Random,
        saw_version: Callable[[int], None],
    ) -> None:
        self._timeout_s = timeout_s
        self._backoff_s = backoff_s
        self._rng = rng
        self._saw_version = saw_version
        self.conn: ClientConnection | None = None
        self._connected = trio.Event()
        self._pending: dict[int, _PendingWrite] = {}
        self._ids = itertools.count(1)
        self.write_once: WriteOnce = self._write_once  # replaceable in tests

    def attach(self, conn: ClientConnection) -> None:
        self.conn = conn
        self._connected.set()

    def detach(self) -> None:
        self.conn = None
        self._connected = trio.Event()
        for pending in self._pending.values():
            pending.done.set()  # reply None: the outcome is unknown
        self._pending.clear()

    def settle(self, reply: WriteResult | Error) -> bool:
        """Hand a reply to the request waiting for it; False if none is (any more)."""
        if reply.request_id is None:
            return False
        pending = self._pending.get(reply.request_id)
        if pending is None:
            return False
        pending.reply = reply
        pending.done.set()
        return True

    async def write(
        self,
        command: str,
        args: Record,
        *,
        expected_version: int | None = None,
        retry_unknown: bool = False,
        timeout_s: float | None = None,
    ) -> int:
        """Run a metadata command; returns the version it applied at.  Refusals that
        changed nothing (no leader, unavailable) are retried; an unknown outcome
        (connection lost, timeout) only if ``retry_unknown``."""
        failures = 0
        with trio.fail_after(timeout_s or self._timeout_s):
            while True:
                reply = await self.write_once(command, args, expected_version)
                if isinstance(reply, WriteResult):
                    self._saw_version(reply.version)
                    return reply.version
                code = reply.code if reply is not None else ErrorCode.UNAVAILABLE
                unknown = reply is None or code in UNKNOWN_OUTCOME_CODES
                if not (retry_unknown if unknown else code in RETRYABLE_CODES):
                    detail = reply.detail if reply is not None else "connection lost"
                    raise WriteError(code, detail + (" (outcome unknown)" if unknown else ""))
                failures += 1
                await trio.sleep(backoff(failures, *self._backoff_s, self._rng))

    async def _write_once(
        self, command: str, args: Record, expected_version: int | None
    ) -> WriteResult | Error | None:
        while self.conn is None:
            await self._connected.wait()
        conn = self.conn
        request_id = next(self._ids)
        pending = self._pending[request_id] = _PendingWrite()
        try:
            await conn.send(WriteRequest(request_id, command, args, expected_version))
            await pending.done.wait()
        except ConnectionClosed:
            return None
        finally:
            self._pending.pop(request_id, None)
        return pending.reply
