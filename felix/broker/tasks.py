"""The client's background tasks: registration, heartbeats, the digest audit, the
periodic resync and the last ``down`` report (see `felix.broker.client`)."""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import Final

import trio

from felix.broker.cache import MetadataCache
from felix.broker.connection import ConnectionClosed
from felix.broker.requests import Requests, WriteError
from felix.broker.session import ClientSettings, Session
from felix.proto.client_messages import HealthStatus, Record, ReportHealth

log = logging.getLogger("felix.broker")

AUDIT_SLICE_RECORDS: Final = 1000


class BackgroundTasks:
    """What runs beside the session: each task only reads the cache and acts through
    the session (`Session.restart`, its connection) or the write requests."""

    def __init__(
        self,
        cache: MetadataCache,
        session: Session,
        requests: Requests,
        *,
        identity: tuple[int | None, str | None, str],
        settings: ClientSettings,
        rng: random.Random,
        advanced: Callable[[], None],
        wait_until: Callable[[Callable[[], bool]], Awaitable[None]],
    ) -> None:
        self.node_id, self.address, self.rack = identity
        self.cache = cache
        self.session = session
        self.requests = requests
        self.settings = settings
        self._rng = rng
        self._advanced = advanced  # wake whoever waits for the view to change
        self._wait_until = wait_until
        self.registered_version: int | None = None
        self.fatal: WriteError | None = None
        self.drain_requested = False
        self._health_kick = trio.Event()

    def kick_health(self) -> None:
        """Send a heartbeat now (a new connection, a drain request)."""
        self._health_kick.set()

    def start(self, nursery: trio.Nursery, *, register: bool, ready: Callable[[], bool]) -> None:
        nursery.start_soon(self.session.run)
        if register:
            nursery.start_soon(self._register)
            nursery.start_soon(self._heartbeats, ready)
        if self.settings.digest_check_s:
            nursery.start_soon(self._audit, self.settings.digest_check_s)
        if self.settings.snapshot_resync_s:
            nursery.start_soon(self._periodic_resync, self.settings.snapshot_resync_s)

    async def _register(self) -> None:
        node_id, address = self.node_id, self.address
        assert node_id is not None and address is not None
        args: Record = {"node_id": node_id, "address": address, "rack": self.rack}
        while True:
            try:
                version = await self.requests.write("register_node", args, retry_unknown=True)
                break
            except trio.TooSlowError:
                continue  # one write's timeout; the caller's ready_timeout_s bounds it
            except WriteError as exc:  # refused for good: wait_ready raises it
                self.fatal = exc
                self._advanced()
                return
        self.registered_version = version
        self.session.saw_version(version)
        self._advanced()

    async def _heartbeats(self, ready: Callable[[], bool]) -> None:
        await self._wait_until(ready)  # fenced until the view holds our registration
        node_id = self.node_id
        assert node_id is not None
        while True:
            kick = self._health_kick
            conn = self.session.conn
            if conn is not None:
                status = HealthStatus.DRAINING if self.drain_requested else HealthStatus.UP
                try:
                    await conn.send(ReportHealth(node_id, status, self.cache.version or 0))
                    self.session.counters.heartbeats += 1
                except ConnectionClosed:
                    pass  # the next session kicks a heartbeat at once
            with trio.move_on_after(self.settings.heartbeat_s):
                await kick.wait()
            if kick.is_set():
                self._health_kick = trio.Event()

    async def _audit(self, interval_s: float) -> None:
        cache = self.cache
        while True:
            await trio.sleep(interval_s * self._rng.uniform(0.75, 1.25))
            if cache.version is None:
                continue
            bad: list[tuple[str, str]] = []
            if cache.hashes_valid:
                idents = list(cache.records)
                for start in range(0, len(idents), AUDIT_SLICE_RECORDS):
                    bad = cache.audit(idents[start : start + AUDIT_SLICE_RECORDS])
                    if bad:
                        break
                    await trio.sleep(0)
            if bad or not cache.hashes_consistent():  # unverified: a full recompute
                self.session.counters.digest_mismatches += 1
                log.warning("broker %s: local view corrupt (%s); resyncing", self.node_id, bad)
                self.session.restart("digest")

    async def _periodic_resync(self, interval_s: float) -> None:
        while True:
            await trio.sleep(interval_s * self._rng.uniform(0.75, 1.25))
            if self.cache.version is not None:
                self.session.restart("periodic")

    async def report_down(self) -> None:
        """Best effort on exit: mark our registration down (guarded by its epoch)."""
        node = self.cache.node()
        if self.session.conn is None or node is None or self.registered_version is None:
            return
        args: Record = {"node_id": node.id, "status": "down", "epoch": node.epoch}
        with trio.move_on_after(self.settings.shutdown_timeout_s):
            try:
                await self.requests.write("node_health", args)
            except WriteError as exc:
                log.info("broker %s: could not report down: %s", self.node_id, exc)
