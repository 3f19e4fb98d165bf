"""`Session` for a client with preferred endpoints (observers; docs/architecture.md §8).

`Session.run` already follows the `EndpointPlan` (preferred tier first, the fallback
only when no preferred endpoint answers, the preferred tier again after every session).
What this adds: a session on a fallback endpoint probes the preferred tier every
``probe_s`` (jittered); once one accepts a TCP connection, the session ends (no resync)
and the next one resumes on the preferred tier, so brokers leave the voters when an
observer is back without waiting for the voter to drop them.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from felix.broker.connection import ClientConnection
from felix.broker.session import Session

log = logging.getLogger("felix.broker")


class TieredSession(Session):
    def __init__(self, *args: Any, probe_s: float | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.probe_s = probe_s
        self.probes = 0  # sessions on a fallback endpoint ended because a preferred answered

    async def _run_one(self, conn: ClientConnection) -> None:
        if self.plan.on_preferred or self.probe_s is None:
            await super()._run_one(conn)
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._probe_preferred, self.probe_s)
            await super()._run_one(conn)
            nursery.cancel_scope.cancel()

    async def _probe_preferred(self, probe_s: float) -> None:
        """End this (fallback) session once a preferred endpoint accepts a connection."""
        while True:
            await trio.sleep(probe_s * self._rng.uniform(0.5, 1.5))
            for host, port in self.plan.preferred:
                with trio.move_on_after(self.settings.connect_timeout_s):
                    try:
                        stream = await trio.open_tcp_stream(host, port)
                    except OSError:
                        continue
                    await stream.aclose()
                    if self._scope is not None:
                        log.info(
                            "broker %s: preferred %s:%d answers; leaving %s",
                            self.node_id, host, port, self.endpoint,
                        )  # fmt: skip
                        self.probes += 1
                        self._scope.cancel()
                    return
