"""`Session` whose connection loop follows an `EndpointPlan`: preferred endpoints
(observers) first, the fallback ones (voters) only when no preferred one answers, and
the preferred tier again after every session (docs/architecture.md §8).

Only the choice of the next endpoint differs from `Session.run`: connecting, the
back-off, resuming from the cache's version and the receive path are `Session`'s.  A
session on a fallback endpoint also probes the preferred tier every ``probe_s``
(jittered): once one accepts a TCP connection, the session ends (no resync) and the next
one resumes on the preferred tier, so brokers leave the voters when an observer is back
without waiting for the voter to drop them.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from felix.broker.connection import ClientConnection, ConnectionClosed
from felix.broker.endpoints import EndpointPlan
from felix.broker.session import Session
from felix.proto.errors import ProtocolError

log = logging.getLogger("felix.broker")


class TieredSession(Session):
    def __init__(
        self, *args: Any, plan: EndpointPlan, probe_s: float | None, **kwargs: Any
    ) -> None:
        super().__init__(*args, endpoints=[e for tier in plan.tiers for e in tier], **kwargs)
        self.plan = plan
        self.probe_s = probe_s
        self.probes = 0  # sessions on a fallback endpoint ended because a preferred answered

    async def run(self) -> None:
        """Sessions forever, each on the endpoint the plan names, with a back-off in
        between; a session the server ended before saying anything counts as a failed
        attempt (a node that accepts and drops must not hold a broker in its tier)."""
        failures = 0
        counters, settings, plan = self.counters, self.settings, self.plan
        while True:
            host, port = plan.next()
            try:
                conn = await ClientConnection.open(
                    host,
                    port,
                    timeout_s=settings.connect_timeout_s,
                    token=settings.token,
                    ssl_context=settings.ssl_context,
                )
            except (OSError, trio.TooSlowError, ConnectionClosed, ProtocolError) as exc:
                counters.connect_failures += 1
                failures += 1
                plan.failed()
                log.debug("broker %s: cannot connect to %s:%d: %s", self.node_id, host, port, exc)
                await trio.sleep(self._backoff(failures))
                continue
            if counters.connects:
                counters.reconnects += 1
            counters.connects += 1
            self.endpoint = f"{host}:{port}"
            messages_before = counters.messages
            await self._run_one(conn)
            if counters.messages > messages_before:
                failures = 0
                plan.ended()
            else:
                failures += 1
                plan.failed()
            await trio.sleep(self._backoff(failures))

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
