"""A rolling restart of a `ProcessCluster`, the way a StatefulSet controller does it, and
the observers that tell whether anything was lost meanwhile.

* `AckedWriter`: sequential writes through one node at a time (a follower forwards to
  the leader), moving to the next node when its node goes away; every acknowledged write
  and the moment it was acknowledged is kept, so the windows with no acknowledgement
  can be measured.
* `RecordingCache`: a broker cache (`felix.broker.cache.MetadataCache`) that keeps the
  version of every snapshot and every delta it applies, so a test can check a broker saw
  every version in order, from one snapshot.
* `roll`: one pod after another, highest ordinal first: SIGTERM, wait for the exit,
  start again with the same data dir and address (and maybe extra environment), wait for
  ``/readyz`` 200 before the next (docs/architecture.md, "Operations").
* `node_history`: the delta chain a node serves from its retained history.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from felix.broker.cache import CacheUpdate, MetadataCache, SnapshotStage
from felix.broker.connection import ClientConnection, ConnectionClosed
from felix.proto.client_messages import (
    Change,
    ClientHello,
    Delta,
    Deltas,
    Error,
    ErrorCode,
    SnapshotChunk,
    WriteRequest,
    WriteResult,
)
from felix.testing.processes import Credentials, ProcessCluster, ServeProcess

RETRYABLE = frozenset(
    {ErrorCode.NOT_LEADER, ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT, ErrorCode.NOT_COMMITTED}
)
WRITE_TIMEOUT_S = 5.0
RETRY_PAUSE_S = 0.01  # between two attempts after a refusal or a lost connection


# --- the writer ----------------------------------------------------------------------------


@dataclass
class AckedWriter:
    """One write at a time (tenant ``<prefix><n>``, a new one each attempt, so every
    acknowledged write is a distinct record to look for later).  A refusal that changed
    nothing from this node (``not_leader``: it is stopping or knows no leader;
    ``unavailable``) moves the writer to the next node."""

    nodes: Sequence[ServeProcess]  # tried in this order, moving on when one fails
    creds: Credentials
    prefix: str = "roll-"
    acked: dict[str, int] = field(default_factory=dict)  # tenant -> version
    acked_at: list[float] = field(default_factory=list)  # time.monotonic of each ack
    refused: Counter[str] = field(default_factory=Counter)  # error code -> count
    unknown: list[str] = field(default_factory=list)  # in flight when the link broke
    switches: int = 0  # moves to another node
    links: list[tuple[float, str]] = field(default_factory=list)  # (when, "open"/"lost")

    async def run(self, stop: trio.Event) -> None:
        seq = itertools.count(1)
        for node in itertools.cycle(self.nodes):
            if stop.is_set():
                return
            try:
                conn = await self.creds.open(node.client_port, WRITE_TIMEOUT_S, node.host)
            except (OSError, ConnectionClosed, trio.TooSlowError):
                self.switches += 1
                await trio.sleep(RETRY_PAUSE_S)
                continue
            self.links.append((time.monotonic(), "open"))
            try:
                await self._write_until_failure(conn, seq, stop)
            finally:
                with trio.CancelScope(shield=True):
                    await conn.aclose()
            self.links.append((time.monotonic(), "lost"))  # broken, or given up on
            self.switches += 1

    async def _write_until_failure(
        self, conn: ClientConnection, seq: Iterable[int], stop: trio.Event
    ) -> None:
        for n in seq:
            if stop.is_set():
                return
            key = f"{self.prefix}{n}"
            request = WriteRequest(n, "set_tenant", {"name": key, "display_name": str(n)}, None)
            try:
                with trio.fail_after(WRITE_TIMEOUT_S):
                    await conn.send(request)
                    reply = await self._reply(conn, n)
            except (ConnectionClosed, OSError, trio.TooSlowError):
                self.unknown.append(key)
                await trio.sleep(RETRY_PAUSE_S)
                return  # to the next node
            if isinstance(reply, WriteResult):
                self.acked[key] = reply.version
                self.acked_at.append(time.monotonic())
                continue
            if reply.code not in RETRYABLE:
                raise AssertionError(f"write {key} refused: {reply.code}: {reply.detail}")
            self.refused[str(reply.code)] += 1
            await trio.sleep(RETRY_PAUSE_S)
            if reply.code in (ErrorCode.NOT_LEADER, ErrorCode.UNAVAILABLE):
                return  # stopping, or it knows no leader (a follower forwards): the next

    @staticmethod
    async def _reply(conn: ClientConnection, request_id: int) -> WriteResult | Error:
        while True:
            message = await conn.receive()
            if isinstance(message, (WriteResult, Error)) and message.request_id == request_id:
                return message

    def max_gap_s(self, start: float, end: float) -> float:
        """The longest time without an acknowledgement that overlaps [start, end]."""
        times = self.acked_at
        gaps = [
            b - a for a, b in itertools.pairwise(times) if b >= start and a <= end
        ]  # fmt: skip
        return max(gaps, default=end - start)

    def first_link_event(self, kind: str, after: float) -> float | None:
        return next((t for t, k in self.links if k == kind and t >= after), None)

    def first_ack(self, after: float) -> float | None:
        return next((t for t in self.acked_at if t >= after), None)

    def acked_between(self, start: float, end: float) -> int:
        return sum(start <= t <= end for t in self.acked_at)


# --- the brokers' record of what they applied ----------------------------------------------


class RecordingCache(MetadataCache):
    """A broker cache that remembers every snapshot and delta version it applied."""

    def __init__(self, node_id: int | None = None) -> None:
        super().__init__(node_id)
        self.snapshot_versions: list[int] = []
        self.deltas: list[tuple[int, int]] = []  # (prev_version, version), as applied

    def apply_snapshot(
        self,
        version: int,
        digest: bytes,
        records: Iterable[Change] | SnapshotStage,
        history: str = "",
    ) -> CacheUpdate:
        update = super().apply_snapshot(version, digest, records, history)
        self.snapshot_versions.append(version)
        return update

    def apply_delta(self, delta: Delta) -> CacheUpdate:
        update = super().apply_delta(delta)
        self.deltas.append((delta.prev_version, delta.version))
        return update

    def chain_problems(self) -> list[str]:
        """Every break in the chain snapshot -> delta -> delta ...: empty if none."""
        if not self.snapshot_versions:
            return ["no snapshot"]
        problems = []
        version = self.snapshot_versions[0]
        for prev, new in self.deltas:
            if prev != version or new <= prev:
                problems.append(f"delta {prev}->{new} after version {version}")
            version = new
        return problems

    @property
    def versions(self) -> list[int]:
        return [v for _, v in self.deltas]


# --- a node's own history ------------------------------------------------------------------


async def node_history(
    node: ServeProcess, creds: Credentials, from_version: int, to_version: int
) -> list[int]:
    """The versions of the deltas ``node`` serves after ``from_version`` up to
    ``to_version`` (a watch resumed from its retained history).  Raises AssertionError
    if the node answers with a snapshot instead: it no longer retains that history."""
    versions: list[int] = []
    with trio.fail_after(20):
        conn = await creds.open(node.client_port, host=node.host)
        try:
            await conn.send(ClientHello(None, from_version, "", ""))
            last = from_version
            while last < to_version:
                for message in await conn.receive_batch():
                    if isinstance(message, SnapshotChunk):
                        raise AssertionError(
                            f"node {node.node_id} sent a snapshot: no history from {from_version}"
                        )
                    if isinstance(message, Deltas):
                        for delta in message.deltas:
                            assert delta.prev_version == last, (node.node_id, delta, last)
                            versions.append(delta.version)
                            last = delta.version
        finally:
            await conn.aclose()
    return versions


# --- elections, from /metrics ------------------------------------------------------------


def elections(node: ServeProcess) -> dict[str, int]:
    """This process's ``felix_raft_elections_total`` by cause, and its pre-vote rounds
    (``pre_vote``): counters start at zero with every process."""
    code, text = node.get_text("/metrics")
    assert code == 200, (node.node_id, code)
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("felix_raft_elections_total{"):
            cause = line.split('cause="', 1)[1].split('"', 1)[0]
            counts[cause] = int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("felix_raft_pre_vote_rounds_total "):
            counts["pre_vote"] = int(float(line.rsplit(" ", 1)[1]))
    return counts


# --- the roll --------------------------------------------------------------------------------


@dataclass
class Restart:
    """What happened to one pod during the roll (times: time.monotonic)."""

    node_id: int
    name: str
    was_leader: bool
    sigterm_at: float
    exited_at: float
    exit_code: int | None
    live_at: float  # the new process answers /livez
    ready_at: float  # ... and /readyz (it knows the leader: it was reached)
    elections_before: dict[str, int]  # the old process's counters, just before SIGTERM

    @property
    def stop_s(self) -> float:
        return self.exited_at - self.sigterm_at

    @property
    def boot_s(self) -> float:
        return self.live_at - self.exited_at

    @property
    def live_to_ready_s(self) -> float:
        return self.ready_at - self.live_at


def leader_of(cluster: ProcessCluster) -> int | None:
    for node_id in cluster.nodes:
        status = cluster.status(node_id)
        if status and status["role"] == "leader":
            return node_id
    return None


def roll(
    cluster: ProcessCluster,
    *,
    extra_env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 30.0,
    on_restarted: Callable[[Restart], None] | None = None,
) -> list[Restart]:
    """Restart every pod, highest ordinal first (the StatefulSet RollingUpdate order):
    SIGTERM, wait for it to exit, start with the same data dir, address and arguments
    (plus ``extra_env``), wait for ``/readyz`` 200, then the next.  Blocking: run it in
    a thread (``trio.to_thread.run_sync``)."""
    restarts = []
    for node_id in sorted(cluster.nodes, reverse=True):
        node = cluster.nodes[node_id]
        before = elections(node)
        was_leader = leader_of(cluster) == node_id
        sigterm_at = time.monotonic()
        exit_code = node.stop(grace_s=ready_timeout_s)
        exited_at = time.monotonic()
        node.start(extra_env)
        node.wait_probe("/livez", ready_timeout_s)
        live_at = time.monotonic()
        node.wait_ready(ready_timeout_s)
        restart = Restart(
            node_id, node.name, was_leader, sigterm_at, exited_at, exit_code, live_at,
            time.monotonic(), before,
        )  # fmt: skip
        restarts.append(restart)
        if on_restarted is not None:
            on_restarted(restart)
    return restarts


def broker_summary(caches: Iterable[RecordingCache], stats: Iterable[Any]) -> str:
    """One line for a report: snapshots, resyncs and reconnects over all brokers."""
    cache_list, stat_list = list(caches), list(stats)
    return (
        f"{len(cache_list)} brokers: snapshots {sum(len(c.snapshot_versions) for c in cache_list)},"
        f" resyncs {sum(s.resyncs for s in stat_list)},"
        f" reconnects {sum(s.reconnects for s in stat_list)},"
        f" deltas {sum(len(c.deltas) for c in cache_list)}"
    )
