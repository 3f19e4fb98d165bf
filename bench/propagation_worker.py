"""A worker process of `bench.propagation`: many simulated brokers in one ``trio.run``.

    python -m bench.propagation_worker --endpoints 127.0.0.1:8001,... --first-id 1001
        --count 250 --register 25

Every broker is a real `felix.broker` client (`open_metadata_client`, its own WebSocket
connection, cache, digest checks, reconnects); the first ``--register`` of them register
and heartbeat, the others are read-only watchers.  Each broker's cache is a
`TimingCache`: the moment a delta (or a snapshot) has been applied, inside the broker's
receive task, it appends ``(version, time.monotonic())``.  ``CLOCK_MONOTONIC`` is one
system-wide clock on Linux, so these times compare directly with the writer's in the
parent process.

The parent drives the worker with one command per line on stdin and reads one JSON line
per answer on stdout:

* (no command) ``{"ready": n, "seconds": s, ...}`` once every broker has its first view;
  with ``--wait-start`` the worker first answers ``{"started": n}`` and connects no
  broker until it reads ``go``: then all of them at once (a cold-start storm; the
  ready answer adds each broker's first-view time, version and shard count);
* ``stats`` -> summed client counters (snapshots, resyncs, reconnects, messages, ...)
  and the process's CPU time so far (``cpu_us``);
* ``drain V SECONDS`` -> waits until every broker has applied version ``V`` (or the time
  is up): ``{"drained": true|false, "behind": k}``;
* ``dump PATH`` -> writes every broker's ``[[version, t], ...]`` and stats to ``PATH``;
* ``exit`` (or end of stdin) -> closes every client and exits.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import inspect
import json
import os
import random
import sys
import time
from array import array
from typing import Any

import trio

from bench._os import raise_fd_limit
from felix.broker.cache import CacheUpdate, MetadataCache
from felix.broker.client import MetadataView, broker_ssl_context, open_metadata_client
from felix.proto.client_messages import Delta

HAS_PREFERRED = "preferred_endpoints" in inspect.signature(open_metadata_client).parameters
CONNECT_WAVE = 50  # brokers started together, then a short pause (no SYN flood)
CONNECT_PAUSE_S = 0.02


class TimingCache(MetadataCache):
    """A `MetadataCache` that timestamps every applied version (two flat arrays)."""

    def __init__(self, node_id: int | None) -> None:
        super().__init__(node_id)
        self.applied_versions = array("q")
        self.applied_times = array("d")

    def apply_delta(self, delta: Delta) -> CacheUpdate:
        update = super().apply_delta(delta)
        self.applied_versions.append(delta.version)
        self.applied_times.append(time.monotonic())
        return update

    def apply_snapshot(
        self, version: int, digest: bytes, records: Any, history: str = ""
    ) -> CacheUpdate:
        update = super().apply_snapshot(version, digest, records, history)
        self.applied_versions.append(version)
        self.applied_times.append(time.monotonic())
        return update


def emit(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


STAT_FIELDS = (
    "snapshots",
    "resyncs",
    "reconnects",
    "connect_failures",
    "digest_mismatches",
    "deltas",
    "messages",
    "heartbeats",
    "health_errors",
)


class Worker:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.endpoints: list[str] = args.endpoints.split(",")
        self.ids = range(args.first_id, args.first_id + args.count)
        self.views: dict[int, MetadataView] = {}
        self.caches: dict[int, TimingCache] = {}
        self.all_ready = trio.Event()
        self.ready_at: dict[int, float] = {}  # broker id -> when its first view was there
        self.preferred: list[str] = [e for e in args.prefer_endpoints.split(",") if e]
        # secure clusters: one context for the process (trusting the cluster CA), and
        # each broker's own broker-role token
        self.ssl_context = broker_ssl_context(args.ca) if args.ca else None
        self.tokens: dict[str, str] = {}
        if args.tokens:
            with open(args.tokens) as tokens:
                self.tokens = json.load(tokens)

    async def broker(self, broker_id: int, register: bool) -> None:
        cache = TimingCache(broker_id)
        self.caches[broker_id] = cache
        endpoints, prefer = self.endpoints, {}
        if self.preferred and HAS_PREFERRED:  # observers first, the voters as fallback
            prefer = {"preferred_endpoints": self.preferred}
        elif self.preferred:  # a library without the option: the observers only
            endpoints = self.preferred
        async with open_metadata_client(
            endpoints,
            **prefer,
            node_id=broker_id,
            address=f"127.0.0.1:{10_000 + broker_id % 50_000}",
            register=register,
            cache=cache,
            ready_timeout_s=self.args.ready_timeout,
            report_down_on_exit=False,
            rng=random.Random(broker_id),
            token=self.tokens.get(str(broker_id), ""),
            ssl_context=self.ssl_context,
        ) as view:
            self.ready_at[broker_id] = time.monotonic()
            self.views[broker_id] = view
            if len(self.views) == len(self.ids):
                self.all_ready.set()
            await trio.sleep_forever()

    def stats(self) -> dict[str, Any]:
        totals = dict.fromkeys(STAT_FIELDS, 0)
        reasons: dict[str, int] = {}
        versions = []
        for view in self.views.values():
            stats = view.stats
            for name in STAT_FIELDS:
                totals[name] += getattr(stats, name)
            for reason, count in stats.resync_reasons.items():
                reasons[reason] = reasons.get(reason, 0) + count
            versions.append(stats.version or 0)
        return {
            **totals,
            "resync_reasons": reasons,
            "min_version": min(versions, default=0),
            "max_version": max(versions, default=0),
            "brokers": len(self.views),
            # the whole process's CPU time: every broker's receive path plus heartbeats
            "cpu_us": round(time.process_time() * 1e6),
        }

    async def drain(self, version: int, seconds: float) -> dict[str, Any]:
        with trio.move_on_after(seconds):
            for view in list(self.views.values()):
                await view.wait_version(version)
        behind = sum(1 for v in self.views.values() if (v.version or 0) < version)
        return {"drained": behind == 0, "behind": behind}

    def dump(self, path: str) -> dict[str, Any]:
        brokers = {}
        for broker_id, cache in self.caches.items():
            view = self.views.get(broker_id)
            stats = view.stats if view is not None else None
            brokers[str(broker_id)] = {
                "registered": broker_id < self.args.first_id + self.args.register,
                "versions": cache.applied_versions.tolist(),
                "times": cache.applied_times.tolist(),
                "stats": {name: getattr(stats, name) for name in STAT_FIELDS} if stats else None,
                "endpoint": view.endpoint if view is not None else None,
            }
        with open(path, "w") as out:
            json.dump({"brokers": brokers, "summary": self.stats()}, out)
        return {"dumped": path}

    async def commands(self) -> None:
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        buffer = b""
        while True:
            while b"\n" not in buffer:
                data = await stdin.receive_some(4096)
                if not data:
                    return
                buffer += data
            line, _, buffer = buffer.partition(b"\n")
            words = line.decode().split()
            if not words:
                continue
            command = words[0]
            if command == "exit":
                return
            if command == "stats":
                emit(self.stats())
            elif command == "drain":
                emit(await self.drain(int(words[1]), float(words[2])))
            elif command == "dump":
                emit(self.dump(words[1]))
            else:
                emit({"error": f"unknown command {command!r}"})

    async def wait_go(self) -> bool:
        """``--wait-start``: say so, then wait for ``go`` (False: stdin closed first)."""
        emit({"started": len(self.ids)})
        line = await trio.to_thread.run_sync(sys.stdin.readline)
        return line.strip() == "go"

    def first_views(self) -> dict[str, Any]:
        """Each broker's first view: when it was there, its version and shard count."""
        ids = sorted(self.ready_at)
        return {
            "ready_at": [self.ready_at[i] for i in ids],
            "versions": [self.views[i].version or 0 for i in ids],
            "shards": [len(self.views[i].shards) for i in ids],
            "endpoints": [self.views[i].endpoint for i in ids],
        }

    async def run(self) -> None:
        if self.args.wait_start and not await self.wait_go():
            return
        if self.args.wait_start:
            # A storm's brokers all apply a big snapshot at once in this one heap: the
            # collector would rescan every view built so far at each collection
            # (quadratic in the brokers; one real broker per process has no such cost).
            gc.disable()
        started = time.monotonic()
        async with trio.open_nursery() as nursery:
            for n, broker_id in enumerate(self.ids):
                nursery.start_soon(self.broker, broker_id, n < self.args.register)
                if not self.args.wait_start and n % CONNECT_WAVE == CONNECT_WAVE - 1:
                    await trio.sleep(CONNECT_PAUSE_S)  # a storm connects all at once
            await self.all_ready.wait()
            ready: dict[str, Any] = {"ready": len(self.views), "started_at": started}
            ready["seconds"] = time.monotonic() - started
            if self.args.wait_start:
                ready.update(self.first_views())
            # Hundreds of brokers share this heap, which real brokers (one per process)
            # do not: keep the collector from rescanning all their views (a 10+ ms full
            # collection otherwise lands on a delta now and then).
            gc.collect()
            gc.freeze()
            gc.enable()
            emit(ready)
            await self.commands()
            nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", required=True, help="client API host:port list")
    parser.add_argument("--first-id", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--register", type=int, default=0, help="how many of them register")
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    parser.add_argument("--ca", default="", help="the cluster CA (wss:// and a secure cluster)")
    parser.add_argument("--tokens", default="", help="JSON file: broker id -> its token")
    parser.add_argument(
        "--prefer-endpoints", default="", help="host:port list tried first (observers)"
    )
    parser.add_argument(
        "--wait-start", action="store_true", help="connect no broker before 'go' on stdin"
    )
    args = parser.parse_args()
    raise_fd_limit()
    with contextlib.suppress(KeyboardInterrupt):  # the parent stops us by PID
        trio.run(Worker(args).run)


if __name__ == "__main__":
    main()
