"""How fast a committed metadata change reaches hundreds of brokers (end to end).

    python -m bench.propagation --brokers 100,500,1000 --rate 20 --duration 10 \\
        --json out.json --plot out.png [--runs 3] \\
        [--failover-trials 10 [--failover-brokers 1000]] [--catchup-shards 100000] \\
        [--no-steady] [--tls]

A real 3-node control plane (`felix serve` processes on loopback, WAL on disk in a temp
dir) and N simulated brokers — real `felix.broker` clients, spread over a few worker
processes (`bench.propagation_worker`) — with every process stopped by PID at the end,
also on Ctrl-C.  All times are ``time.monotonic()``: on Linux that is
``CLOCK_MONOTONIC``, one system-wide clock, so a send time taken here and an applied
time taken in a worker process compare directly.

* steady (per N, ``--runs`` times, a fresh cluster each time): one writer sends a
  ~200-byte change (``set_tenant``, rotating over 64 tenants) to the leader every
  1/``--rate`` s for ``--duration`` s (pipelined: the schedule never waits for an ack).
  Per change: commit latency (send -> ``WriteResult``), per broker the propagation
  latency (send -> delta applied in that broker's cache) and the all-brokers latency
  (send -> applied by the last broker).  ``missed``: (broker, change) pairs never
  applied after a drain period.  Also the server memory per connected broker (sum of the
  three servers' VmRSS growth while the N brokers connect, divided by N) and the
  servers' CPU per broker per change (their user + system time over the writes, divided
  by N x changes: the fan-out dominates it at large N; Raft and heartbeats are in it too).
* ``--tls``: every steady run is made twice, back to back, plaintext (``--insecure``)
  and secure (TLS on every port, each broker with its own broker token over ``wss://``),
  and the report adds the TLS / plaintext ratios of each run pair.  Failover and
  catch-up stay plaintext.
* failover (``--failover-trials``): with N brokers watching, ``kill -9`` the leader, then
  time until a write succeeds again (tried on every survivor) and until every broker has
  applied that write; snapshots sent during the trial (the target: none — brokers resume
  from their version on another node).  The killed node is restarted between trials.
* catch-up (``--catchup-shards``): a state of that many shards (streams of up to 10,000
  shards over 5 registered, heartbeating nodes); time for a new control-plane node
  (added as a learner, caught up by InstallSnapshot since the leader's log is compacted)
  to apply the leader's commit index, and for a fresh broker to get its first full view.
* N = 0 (``--brokers 0,...``): the commit latency with no watching broker; every steady
  run also reports the voters' CPU per committed write.
* ``--observers K``: the steady mode with K observer nodes, brokers preferring them
  (the voters as fallback); the voters' and the observers' CPU per write.
* ``--storm``: a cold-start storm: ``--storm-brokers`` brokers with no version released
  at once on a ``--storm-shards`` state; time until every full view, servers' CPU
  (also above their idle rate before the storm and with every broker connected), and
  snapshot encodes / served per node (``/metrics``).
* ``--py-spy DIR``: py-spy profiles of the servers (and one worker) in both modes.
* ``--pin-brokers``: the steady mode with the servers on one CPU, the workers on another.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio

from bench._os import pid_cpu_s, raise_fd_limit
from bench._report import RESULTS_DIR, print_table
from felix.broker.client import open_metadata_client
from felix.broker.connection import ClientConnection, ConnectionClosed
from felix.proto.client_messages import (
    Error,
    HealthStatus,
    ReportHealth,
    WriteRequest,
    WriteResult,
)
from felix.testing.processes import Credentials, ProcessCluster, ServeProcess, free_ports, http

BROKERS_PER_WORKER = 250
WORKERS_MAX = 4
TENANTS = 64  # the writer rotates over this many tenant records
DISPLAY_NAME_BYTES = 110  # a set_tenant change of ~200 bytes on the wire
BROKER_ID_BASE = 1001
SETTLE_S = 1.5  # after the brokers are ready: registrations turn "up", buffers settle
DRAIN_S = 10.0
# storm: the servers' idle CPU rate is sampled this long.  /proc counts CPU in clock
# ticks (10 ms): over 2 s that was +-15 ms/s of ~40, +-1.5 s scaled to a 100 s storm
IDLE_SAMPLE_S = 10.0
# ...and with every broker connected, this long after SETTLE_S: one keepalive interval
# (watch.keepalive_interval_ms, 10 s by default: two pings to a broker that never
# sends) and ten WatchProgress rounds, so every per-connection cost is in the sample
CONNECTED_SAMPLE_S = 10.0


# --- small utilities ------------------------------------------------------------------


def now() -> float:
    return time.monotonic()


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of ``samples`` (sorted or not)."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summary(samples: Sequence[float]) -> dict[str, float]:
    if not samples:
        return {"p50": math.nan, "p99": math.nan, "max": math.nan}
    ordered = sorted(samples)
    return {"p50": percentile(ordered, 0.5), "p99": percentile(ordered, 0.99), "max": ordered[-1]}


def spread(values: Sequence[float]) -> dict[str, float]:
    """min / median / max over runs."""
    clean = [v for v in values if not math.isnan(v)]
    if not clean:
        return {"min": math.nan, "median": math.nan, "max": math.nan}
    return {"min": min(clean), "median": statistics.median(clean), "max": max(clean)}


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


class ProgressBar:
    """One line on stderr, redrawn at most every 0.1 s."""

    def __init__(self, label: str, total: int, width: int = 30) -> None:
        self.label, self.total, self.width = label, max(1, total), width
        self._last = 0.0
        self._shown = -1

    def update(self, done: int, extra: str = "", force: bool = False) -> None:
        t = now()
        tty = sys.stderr.isatty()
        if not force and t - self._last < (0.1 if tty else 2.0):
            return
        self._last, self._shown = t, done
        filled = min(self.width, self.width * done // self.total)
        bar = "#" * filled + "." * (self.width - filled)
        line = f"  {self.label} [{bar}] {done}/{self.total} {extra}"
        sys.stderr.write(f"\r{line}\x1b[K" if tty else f"{line}\n")
        sys.stderr.flush()

    def close(self, extra: str = "") -> None:
        if self._shown != self.total or extra:
            self.update(self.total, extra, force=True)
        if sys.stderr.isatty():
            sys.stderr.write("\n")
        sys.stderr.flush()


def status_line(text: str) -> None:
    sys.stderr.write(f"  {text}\n")
    sys.stderr.flush()


# --- processes: the control plane and the broker workers --------------------------------


@dataclass
class WorkerProcess:
    """One `bench.propagation_worker` process, driven over stdin/stdout."""

    first_id: int
    count: int
    register: int
    log_path: Path
    proc: subprocess.Popen[str] | None = None

    def start(self, endpoints: str, extra: Sequence[str] = ()) -> None:
        """``extra``: more worker arguments (security, preferred endpoints, storm)."""
        args = [
            sys.executable, "-m", "bench.propagation_worker",
            "--endpoints", endpoints, "--first-id", str(self.first_id),
            "--count", str(self.count), "--register", str(self.register), *extra,
        ]  # fmt: skip
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,  # Ctrl-C reaches the bench; the bench stops us by PID
            cwd=Path(__file__).resolve().parent.parent,
        )
        log.close()

    def send(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def read(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"broker worker {self.proc.pid} exited; its log ends:\n{tail}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            self.send("exit")
            proc.wait(5)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class Brokers:
    """N brokers over a few worker processes; ids ``BROKER_ID_BASE ..``."""

    count: int
    workers: list[WorkerProcess] = field(default_factory=list)

    @classmethod
    def plan(cls, root: Path, count: int, workers: int, register: int) -> Brokers:
        # at least one per core, so the brokers' receive work can use every core
        per_core = os.cpu_count() or 1
        workers = workers or min(WORKERS_MAX, max(per_core, math.ceil(count / BROKERS_PER_WORKER)))
        workers = min(workers, count)
        brokers = cls(count)
        first = BROKER_ID_BASE
        for w in range(workers):
            n = count // workers + (1 if w < count % workers else 0)
            reg = register // workers + (1 if w < register % workers else 0)
            brokers.workers.append(WorkerProcess(first, n, min(reg, n), root / f"worker-{w}.log"))
            first += n
        return brokers

    @property
    def registered(self) -> int:
        return sum(w.register for w in self.workers)

    @property
    def ids(self) -> range:
        return range(BROKER_ID_BASE, BROKER_ID_BASE + self.count)

    def start(self, endpoints: str, extra: Sequence[str] = ()) -> float:
        """Start every worker; returns once every broker has its first view."""
        started = now()
        for worker in self.workers:
            worker.start(endpoints, extra)
        self.wait_ready()
        return now() - started

    def launch(self, endpoints: str, extra: Sequence[str] = ()) -> None:
        """Start every worker with no broker connected yet (``--wait-start``); returns
        once each has started up, so process start-up is not in what `go` times."""
        for worker in self.workers:
            worker.start(endpoints, [*extra, "--wait-start"])
        for worker in self.workers:
            reply = worker.read()
            if "started" not in reply:
                raise RuntimeError(f"unexpected worker reply {reply}")

    def go(self) -> list[dict[str, Any]]:
        """Release every launched broker at once; the workers' ready replies."""
        for worker in self.workers:
            worker.send("go")
        return self.wait_ready()

    def wait_ready(self) -> list[dict[str, Any]]:
        replies = [worker.read() for worker in self.workers]
        for reply in replies:
            if "ready" not in reply:
                raise RuntimeError(f"unexpected worker reply {reply}")
        return replies

    def ask(self, line: str) -> list[dict[str, Any]]:
        for worker in self.workers:
            worker.send(line)
        return [worker.read() for worker in self.workers]

    def stats(self) -> dict[str, Any]:
        replies = self.ask("stats")
        total: dict[str, Any] = {"cpu_us": 0, "messages": 0, "deltas": 0, "snapshots": 0}
        for reply in replies:
            for key, value in reply.items():
                if isinstance(value, int) and key not in ("min_version", "max_version"):
                    total[key] = total.get(key, 0) + value
        total["min_version"] = min((r["min_version"] for r in replies), default=0)
        reasons: dict[str, int] = {}
        total.setdefault("cpu_us", 0)  # N = 0: no worker
        for reply in replies:
            for reason, n in reply["resync_reasons"].items():
                reasons[reason] = reasons.get(reason, 0) + n
        total["resync_reasons"] = reasons
        return total

    def drain(self, version: int, seconds: float) -> int:
        """Wait until every broker applied ``version``; returns how many did not."""
        return sum(r["behind"] for r in self.ask(f"drain {version} {seconds}"))

    def dump(self, root: Path) -> dict[int, BrokerRecord]:
        records: dict[int, BrokerRecord] = {}
        for n, worker in enumerate(self.workers):
            path = root / f"worker-{n}-dump.json"
            worker.send(f"dump {path}")
            worker.read()
            data = json.loads(path.read_text())
            for key, broker in data["brokers"].items():
                records[int(key)] = BrokerRecord.of(broker)
            path.unlink()
        return records

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


@dataclass
class BrokerRecord:
    """(version, applied time) pairs of one broker, by version."""

    versions: list[int]
    times: list[float]
    registered: bool
    stats: dict[str, int] | None
    endpoint: str | None = None

    @classmethod
    def of(cls, raw: dict[str, Any]) -> BrokerRecord:
        pairs = sorted(zip(raw["versions"], raw["times"], strict=True))
        versions: list[int] = []
        times: list[float] = []
        for version, t in pairs:  # keep the first time a version was reached
            if versions and version <= versions[-1]:
                continue
            versions.append(version)
            times.append(t)
        # a version counts as applied once any version >= it is applied: make the times
        # non-increasing from the right so bisect finds the earliest such moment
        for i in range(len(times) - 2, -1, -1):
            times[i] = min(times[i], times[i + 1])
        return cls(versions, times, raw["registered"], raw["stats"], raw.get("endpoint"))

    def applied_at(self, version: int) -> float | None:
        i = bisect.bisect_left(self.versions, version)
        return self.times[i] if i < len(self.versions) else None


class Processes:
    """Everything the bench started, stopped by PID in reverse order (also on Ctrl-C)."""

    def __init__(self) -> None:
        self._stops: list[Callable[[], object]] = []

    def add(self, stop: Callable[[], object]) -> None:
        self._stops.append(stop)

    def stop_all(self) -> None:
        while self._stops:
            stop = self._stops.pop()
            try:
                stop()
            except Exception as exc:  # keep stopping the others
                print(f"bench: while stopping: {exc!r}", file=sys.stderr)


@contextmanager
def control_plane(
    root: Path,
    procs: Processes,
    tick_ms: int,
    extra: Sequence[str] = (),
    secure: bool = False,
    observers: int = 0,
) -> Iterator[ProcessCluster]:
    """A fresh 3-voter cluster (plus ``observers`` observer nodes), stopped on exit."""
    root.mkdir(parents=True, exist_ok=True)
    if observers:  # the observer mode: ProcessCluster(..., observers=K) (issue 16 contract)
        cluster = ProcessCluster(
            root,
            size=3,
            tick_ms=tick_ms,
            secure=secure,
            observers=observers,  # type: ignore[call-arg]
        )
    else:
        cluster = ProcessCluster(root, size=3, tick_ms=tick_ms, secure=secure)
    for node in servers_of(cluster):
        for item in extra:
            node.args += ["--set", item]
    procs.add(cluster.stop_all)
    try:
        cluster.start_all()
        cluster.wait_for_leader(timeout_s=30)
        for observer in observers_of(cluster):
            if observer.proc is None:  # in case start_all starts the voters only
                observer.start()
            observer.wait_ready(timeout_s=60)
        yield cluster
    finally:
        for observer in observers_of(cluster):
            observer.stop()
        cluster.stop_all()


def observers_of(cluster: ProcessCluster) -> list[ServeProcess]:
    """The cluster's observer nodes (none on a harness without observers)."""
    return list(getattr(cluster, "observers", None) or [])


def servers_of(cluster: ProcessCluster) -> list[ServeProcess]:
    """Every server process of the cluster: the voters, then the observers."""
    return [*cluster.nodes.values(), *observers_of(cluster)]


def client_endpoints(cluster: ProcessCluster) -> str:
    """The voters' client endpoints (every broker's fallback list)."""
    return ",".join(f"127.0.0.1:{n.client_port}" for n in cluster.nodes.values())


def broker_args(cluster: ProcessCluster) -> list[str]:
    """Worker arguments for where brokers connect: with observers, to them first
    (``preferred_endpoints``), the voters only as the fallback."""
    observers = observers_of(cluster)
    if not observers:
        return []
    return ["--prefer-endpoints", ",".join(o.client_endpoint for o in observers)]


def broker_security(cluster: ProcessCluster, ids: Sequence[int], root: Path) -> list[str]:
    """The worker arguments for a secure cluster: its CA and one broker token per broker
    (made through the API as `felix ctl token create` does, kept in a 0600 file)."""
    if not cluster.secure:
        return []
    assert cluster.creds.ca is not None
    creds = trio.run(cluster.broker_credentials, ids)
    path = root / "broker-tokens.json"
    path.touch(mode=0o600)
    path.write_text(json.dumps({str(i): c.token for i, c in creds.items()}))
    return ["--ca", str(cluster.creds.ca), "--tokens", str(path)]


def process_cpu_s(nodes: Sequence[ServeProcess]) -> dict[int, float]:
    """User + system CPU seconds of each running node so far (``/proc/<pid>/stat``)."""
    out: dict[int, float] = {}
    for node in nodes:
        if node.proc is not None and node.proc.poll() is None:
            out[node.node_id] = pid_cpu_s(node.proc.pid)
    return out


def server_cpu_s(cluster: ProcessCluster) -> float:
    """User + system CPU seconds of the running voters so far."""
    return sum(process_cpu_s(list(cluster.nodes.values())).values())


def observers_cpu_s(cluster: ProcessCluster) -> float:
    return sum(process_cpu_s(observers_of(cluster)).values())


def server_rss(cluster: ProcessCluster) -> dict[int, int]:
    """VmRSS KiB of every running server, voters and observers."""
    return {
        n.node_id: rss_kib(n.proc.pid)
        for n in servers_of(cluster)
        if n.proc is not None and n.proc.poll() is None
    }


# --- the writer -------------------------------------------------------------------------


@dataclass
class Write:
    seq: int
    sent: float
    acked: float | None = None
    version: int | None = None
    error: str | None = None


def change_args(seq: int) -> dict[str, Any]:
    prefix = f"{seq:010d}-"
    return {
        "name": f"bench-t{seq % TENANTS:03d}",
        "display_name": prefix + "x" * (DISPLAY_NAME_BYTES - len(prefix)),
    }


class Writer:
    """Pipelined writes over one client connection (request ids -> `Write`)."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.ids = itertools.count(1)
        self.pending: dict[int, Write] = {}
        self.done = trio.Event()

    async def reader(self) -> None:
        try:
            while True:
                for reply in await self.conn.receive_batch():
                    t = now()
                    write = self.pending.pop(getattr(reply, "request_id", None) or -1, None)
                    if write is None:
                        continue
                    if isinstance(reply, WriteResult):
                        write.acked, write.version = t, reply.version
                    elif isinstance(reply, Error):
                        write.error = f"{reply.code.value}: {reply.detail}"
                    if not self.pending:
                        self.done.set()
        except ConnectionClosed as exc:
            for write in self.pending.values():
                write.error = f"connection closed: {exc}"
            self.pending.clear()
            self.done.set()

    async def send(self, seq: int, command: str, args: dict[str, Any]) -> Write:
        request_id = next(self.ids)
        write = Write(seq, now())
        self.pending[request_id] = write
        self.done = trio.Event()
        await self.conn.send(WriteRequest(request_id, command, args, None))
        return write


async def steady_writes(
    port: int, creds: Credentials, rate: float, duration: float, bar: ProgressBar | None
) -> list[Write]:
    writes: list[Write] = []
    total = max(1, round(rate * duration))
    async with trio.open_nursery() as nursery:
        writer = Writer(await creds.open(port))
        nursery.start_soon(writer.reader)
        start = trio.current_time()
        for seq in range(total):
            await trio.sleep_until(start + seq / rate)
            writes.append(await writer.send(seq, "set_tenant", change_args(seq)))
            if bar is not None:
                acked = sum(1 for w in writes if w.acked is not None)
                bar.update(seq + 1, f"acked {acked}")
        with trio.move_on_after(DRAIN_S):
            if writer.pending:
                await writer.done.wait()
        nursery.cancel_scope.cancel()
        await writer.conn.aclose()
    return writes


async def one_write(port: int, seq: int, timeout_s: float) -> Write | None:
    """One write on a fresh connection; None if it was refused, lost or timed out."""
    with trio.move_on_after(timeout_s):
        try:
            conn = await ClientConnection.open("127.0.0.1", port, timeout_s=timeout_s)
        except (OSError, ConnectionClosed, trio.TooSlowError):
            return None
        try:
            write = Write(seq, now())
            await conn.send(WriteRequest(1, "set_tenant", change_args(seq), None))
            reply = await conn.receive()
            if isinstance(reply, WriteResult):
                write.acked, write.version = now(), reply.version
                return write
        except (OSError, ConnectionClosed):
            return None
        finally:
            with trio.CancelScope(shield=True):
                await conn.aclose()
    return None


async def first_write_after(ports: Sequence[int], seq: int) -> Write:
    """Keep trying writes on every given node (a new attempt every 50 ms per node) until
    one is acknowledged; returns the first acknowledged one."""
    first: list[Write] = []
    async with trio.open_nursery() as nursery:

        async def attempts(port: int) -> None:
            async with trio.open_nursery() as mine:
                while True:

                    async def attempt() -> None:
                        write = await one_write(port, seq, 2.0)
                        if write is not None:
                            first.append(write)
                            nursery.cancel_scope.cancel()

                    mine.start_soon(attempt)
                    await trio.sleep(0.05)

        for port in ports:
            nursery.start_soon(attempts, port)
    return min(first, key=lambda w: w.acked or math.inf)


# --- steady mode ------------------------------------------------------------------------


def analyse(
    writes: Sequence[Write], records: dict[int, BrokerRecord], labels: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(figures, raw) for one run; ``labels`` names each client endpoint (which node,
    leader or follower) for the per-node breakdown of the propagation latency."""
    ok = [w for w in writes if w.version is not None and w.acked is not None]
    broker_ids = sorted(records)
    commit = [(w.acked or 0) - w.sent for w in ok]
    propagation: list[float] = []
    all_brokers: list[float] = []
    raw_propagation: list[list[float | None]] = []
    missed = 0
    by_node: dict[str, list[float]] = {}
    for write in ok:
        assert write.version is not None
        row: list[float | None] = []
        last = -math.inf
        for broker_id in broker_ids:
            t = records[broker_id].applied_at(write.version)
            if t is None:
                missed += 1
                row.append(None)
                continue
            latency = t - write.sent
            propagation.append(latency)
            node = labels.get(records[broker_id].endpoint or "", "?")
            by_node.setdefault(node, []).append(latency)
            row.append(ms(latency))
            last = max(last, latency)
        raw_propagation.append(row)
        if last > -math.inf:
            all_brokers.append(last)
    figures = {
        "commit_ms": {k: v * 1000 for k, v in summary(commit).items()},
        "propagation_ms": {k: v * 1000 for k, v in summary(propagation).items()},
        "all_brokers_ms": {k: v * 1000 for k, v in summary(all_brokers).items()},
        "changes_written": len(ok),
        "write_errors": len(writes) - len(ok),
        "missed": missed,
        "propagation_ms_by_node": {
            node: {
                "brokers": sum(1 for r in records.values() if labels.get(r.endpoint or "") == node),
                **{k: v * 1000 for k, v in summary(samples).items()},
            }
            for node, samples in sorted(by_node.items())
        },
    }
    raw = {
        "broker_ids": broker_ids,
        "versions": [w.version for w in ok],
        "sent": [round(w.sent, 6) for w in ok],
        "commit_ms": [ms(c) for c in commit],
        "all_brokers_ms": [ms(a) for a in all_brokers],
        "propagation_ms": raw_propagation,
        "errors": [w.error for w in writes if w.version is None],
    }
    return figures, raw


def steady_run(
    args: argparse.Namespace, root: Path, procs: Processes, n: int, run: int, tls: bool = False
) -> dict[str, Any]:
    register = n if args.register == "all" else min(n, int(args.register))
    label = f"N={n} run {run}{' tls' if tls else ''}"
    observers = getattr(args, "observers", 0)
    with control_plane(root, procs, args.tick_ms, secure=tls, observers=observers) as cluster:
        brokers = Brokers.plan(root, n, args.workers, register)
        extra = [*broker_security(cluster, brokers.ids, root), *broker_args(cluster)]
        time.sleep(0.5)
        before = server_rss(cluster)
        procs.add(brokers.stop)
        try:
            ready_s = 0.0
            if n:  # N = 0: commit latency with no watching broker
                status_line(
                    f"{label}: starting {n} brokers "
                    f"({brokers.registered} registered) in {len(brokers.workers)} worker(s)"
                    + (f", on {observers} observer(s)" if observers else "")
                )
                ready_s = brokers.start(client_endpoints(cluster), extra)
            allowed = os.sched_getaffinity(0)
            pinned = pin_cpus(cluster, brokers, allowed) if args.pin_brokers else {}
            time.sleep(SETTLE_S)
            after = server_rss(cluster)
            leader = cluster.wait_for_leader()
            bar = ProgressBar(f"{label} writes", max(1, round(args.rate * args.duration)))
            stats_before = brokers.stats()
            cpu_before = server_cpu_s(cluster), observers_cpu_s(cluster)
            port = cluster.nodes[leader].client_port
            profiles = start_profiles(args, cluster, brokers, leader, f"n{n}-run{run}")
            writes = trio.run(steady_writes, port, cluster.creds, args.rate, args.duration, bar)
            stop_profiles(profiles)
            server_cpu = server_cpu_s(cluster) - cpu_before[0]
            observer_cpu = observers_cpu_s(cluster) - cpu_before[1]
            newest = max((w.version for w in writes if w.version is not None), default=0)
            behind = brokers.drain(newest, DRAIN_S)
            bar.close(f"drained (behind: {behind})")
            stats = brokers.stats()
            receive = receive_cost(stats_before, stats)
            records = brokers.dump(root)
        finally:
            brokers.stop()
            if args.pin_brokers:  # later runs (and the storm) start from the whole machine
                set_threads_affinity(os.getpid(), allowed)
    figures, raw = analyse(writes, records, endpoint_labels(cluster, leader))
    growth = {i: after.get(i, 0) - before.get(i, 0) for i in before}
    changes = max(1, figures["changes_written"])
    figures.update(
        {
            "tls": tls,
            "observers": observers,
            "pinned_cpus": pinned,
            "server_cpu_us_per_broker_change": (
                round(server_cpu * 1e6 / (n * changes), 3) if n else math.nan
            ),
            **cpu_per_write(server_cpu, observer_cpu if observers else math.nan, changes),
            "brokers": n,
            "registered": register,
            "workers": len(brokers.workers),
            "ready_s": round(ready_s, 3),
            "server_kib_per_broker": sum(growth.values()) / n if n else math.nan,
            "server_rss_kib": {"before": before, "after": after},
            "client_stats": stats,
            **receive,
            "raw": raw,
        }
    )
    return figures


def cpu_per_write(voters_s: float, observers_s: float, changes: int) -> dict[str, float]:
    """The voters' CPU per committed write (the observer target: flat in N), and the
    observers'; over the writes, everything the processes did is charged to them."""
    return {
        "voters_cpu_s": round(voters_s, 3),
        "observers_cpu_s": round(observers_s, 3),
        "voters_cpu_ms_per_write": round(voters_s * 1e3 / changes, 4),
        "observers_cpu_ms_per_write": round(observers_s * 1e3 / changes, 4),
    }


def endpoint_labels(cluster: ProcessCluster, leader: int) -> dict[str, str]:
    """Client endpoint -> which node it is (leader, follower, observer)."""
    labels = {
        f"127.0.0.1:{p.client_port}": f"node {i} ({'leader' if i == leader else 'follower'})"
        for i, p in cluster.nodes.items()
    }
    for o in observers_of(cluster):
        labels[o.client_endpoint] = f"node {o.node_id} (observer)"
        labels[f"127.0.0.1:{o.client_port}"] = f"node {o.node_id} (observer)"
    return labels


def pin_cpus(cluster: ProcessCluster, brokers: Brokers, allowed: set[int]) -> dict[str, list[int]]:
    """``--pin-brokers``: every thread of the servers and of this process (the writer)
    on the first CPU of ``allowed`` (this process's), every thread of the broker workers
    on the second — brokers on a core of their own, as on their own machines, so what
    is left of the N = 100 rise is the control plane's, not the simulated brokers' CPU
    taking the servers' core. Returns the CPUs each side's threads are on, read back
    from the kernel."""
    if len(allowed) < 2:
        raise SystemExit(f"--pin-brokers needs two CPUs; this process may use {len(allowed)}")
    first, second = sorted(allowed)[:2]
    servers = [n.proc.pid for n in servers_of(cluster) if n.proc]
    workers = [w.proc.pid for w in brokers.workers if w.proc is not None]
    sides = (("servers", [*servers, os.getpid()], first), ("workers", workers, second))
    return {
        side: sorted(set().union(*(set_threads_affinity(pid, {cpu}) for pid in pids)))
        for side, pids, cpu in sides
    }


def set_threads_affinity(pid: int, cpus: set[int]) -> set[int]:
    """Every thread of ``pid`` on ``cpus`` (affinity is per thread on Linux); returns
    the CPUs its threads are on now, read back from the kernel."""
    now: set[int] = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(task), cpus)
        now |= os.sched_getaffinity(int(task))
    return now


def start_profiles(
    args: argparse.Namespace,
    cluster: ProcessCluster,
    brokers: Brokers | None,
    leader: int,
    tag: str,
    *,
    until_stopped: bool = False,
) -> list[subprocess.Popen[bytes]]:
    """``--py-spy DIR``: one ``py-spy record --pid`` per server and (``brokers`` given)
    for the first broker worker, over the writes' duration or, ``until_stopped``, until
    `stop_profiles` interrupts them (speedscope files in DIR, named by tag and role)."""
    if args.py_spy is None:
        return []
    args.py_spy.mkdir(parents=True, exist_ok=True)
    targets = [
        (f"node{i}-{'leader' if i == leader else 'follower'}", node.proc.pid)
        for i, node in cluster.nodes.items()
        if node.proc is not None
    ]
    targets += [(f"node{o.node_id}-observer", o.proc.pid) for o in observers_of(cluster) if o.proc]
    if brokers is not None and brokers.workers and brokers.workers[0].proc is not None:
        targets.append(("worker0", brokers.workers[0].proc.pid))
    local = Path(sys.executable).with_name("py-spy")  # the venv's, if it is not on PATH
    exe = str(local) if local.exists() else "py-spy"
    duration = [] if until_stopped else ["--duration", str(math.ceil(args.duration))]
    spies = []
    for role, pid in targets:
        out = args.py_spy / f"{tag}-{role}.speedscope.json"
        spies.append(
            subprocess.Popen(
                [exe, "record", "--pid", str(pid), "--rate", "200", "--nonblocking",
                 "--format", "speedscope", "--output", str(out), *duration],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )  # fmt: skip
    time.sleep(0.5)  # attached before the first write
    return spies


def stop_profiles(spies: Sequence[subprocess.Popen[bytes]], *, interrupt: bool = False) -> None:
    """Wait for the profilers (``interrupt``: stop them first; py-spy writes its file
    on SIGINT)."""
    for spy in spies:
        if interrupt:
            spy.send_signal(signal.SIGINT)
        try:
            spy.wait(15)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()


FIGURES = ("commit_ms", "propagation_ms", "all_brokers_ms")
RECEIVE_FIGURES = ("receive_us_per_message", "receive_us_per_delta")


def receive_cost(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """The brokers' receive path in CPU µs per message and per delta, over the writes.

    Worker CPU time (all of it: socket wake-ups, frame parsing, CBOR decode, digest
    check, apply, timestamps, plus heartbeats and WatchProgress messages) divided by what was
    received; ``per_delta`` charges everything to the deltas, so it is the upper bound.
    """
    cpu_us = after["cpu_us"] - before["cpu_us"]
    messages = after.get("messages", 0) - before.get("messages", 0)
    deltas = after.get("deltas", 0) - before.get("deltas", 0)
    return {
        "receive_us_per_message": round(cpu_us / messages, 2) if messages else 0.0,
        "receive_us_per_delta": round(cpu_us / deltas, 2) if deltas else 0.0,
    }


def steady(args: argparse.Namespace, root: Path, procs: Processes) -> dict[str, dict[str, Any]]:
    """Results per mode ("plain", and "tls" with ``--tls``), each per N; with ``--tls``
    the two runs of a pair are made back to back, so the machine's drift hits both."""
    modes = ("plain", "tls") if args.tls else ("plain",)
    results: dict[str, dict[str, Any]] = {mode: {} for mode in modes}
    for n in [int(x) for x in args.brokers.split(",") if x.strip()]:
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
        for run in range(1, args.runs + 1):
            for mode in modes:
                run_root = root / f"n{n}-run{run}-{mode}"
                runs[mode].append(steady_run(args, run_root, procs, n, run, mode == "tls"))
                shutil.rmtree(run_root, ignore_errors=True)
        for mode in modes:
            results[mode][str(n)] = over_runs(runs[mode])
    return results


PER_RUN_FIGURES = (
    "server_kib_per_broker",
    "server_cpu_us_per_broker_change",
    "voters_cpu_ms_per_write",
    "observers_cpu_ms_per_write",
    *RECEIVE_FIGURES,
)


def over_runs(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One N's runs: min/median/max of every figure, medians at the top level."""
    spreads: dict[str, Any] = {
        name: {q: spread([r[name][q] for r in runs]) for q in ("p50", "p99", "max")}
        for name in FIGURES
    }
    for name in PER_RUN_FIGURES:
        spreads[name] = spread([r[name] for r in runs])
    return {
        "brokers": runs[0]["brokers"],
        "registered": runs[0]["registered"],
        "workers": runs[0]["workers"],
        **{name: {q: spreads[name][q]["median"] for q in spreads[name]} for name in FIGURES},
        "changes_written": sum(r["changes_written"] for r in runs),
        "write_errors": sum(r["write_errors"] for r in runs),
        "missed": sum(r["missed"] for r in runs),
        **{name: spreads[name]["median"] for name in PER_RUN_FIGURES},
        "over_runs": spreads,
        "runs": runs,
    }


RATIO_FIGURES: dict[str, Callable[[dict[str, Any]], float]] = {
    "all_brokers_p99": lambda r: r["all_brokers_ms"]["p99"],
    "all_brokers_p50": lambda r: r["all_brokers_ms"]["p50"],
    "propagation_p99": lambda r: r["propagation_ms"]["p99"],
    "commit_p50": lambda r: r["commit_ms"]["p50"],
    "server_cpu_per_broker_change": lambda r: r["server_cpu_us_per_broker_change"],
    "server_kib_per_broker": lambda r: r["server_kib_per_broker"],
    "receive_us_per_delta": lambda r: r["receive_us_per_delta"],
}


def tls_ratios(plain: dict[str, Any], tls: dict[str, Any]) -> dict[str, Any]:
    """Per N and figure: TLS / plaintext of each run pair, min/median/max over pairs."""
    table: dict[str, Any] = {}
    for n, p in plain.items():
        pairs = list(zip(p["runs"], tls[n]["runs"], strict=True))
        table[n] = {
            name: spread([get(t) / get(q) if get(q) else math.nan for q, t in pairs])
            for name, get in RATIO_FIGURES.items()
        }
    return table


# --- failover mode ----------------------------------------------------------------------


def watch_snapshots_sent(cluster: ProcessCluster, exclude: int | None = None) -> int:
    total = 0
    for node_id, node in cluster.nodes.items():
        if node_id == exclude or node.proc is None or node.proc.poll() is not None:
            continue
        try:
            with urlopen_text(f"http://{node.ops}/metrics") as text:
                for line in text.splitlines():
                    if line.startswith("felix_watch_snapshots_sent"):
                        total += int(float(line.split()[-1]))
        except (OSError, urllib.error.URLError):
            pass
    return total


@contextmanager
def urlopen_text(url: str) -> Iterator[str]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        yield response.read().decode()


def failover(args: argparse.Namespace, root: Path, procs: Processes) -> dict[str, Any]:
    n = args.failover_brokers or max(int(x) for x in args.brokers.split(",") if x.strip())
    register = n if args.register == "all" else min(n, int(args.register))
    trials: list[dict[str, Any]] = []
    with control_plane(root, procs, args.tick_ms) as cluster:
        brokers = Brokers.plan(root, n, args.workers, register)
        procs.add(brokers.stop)
        try:
            status_line(f"failover: starting {n} brokers in {len(brokers.workers)} worker(s)")
            brokers.start(client_endpoints(cluster))
            time.sleep(SETTLE_S)
            bar = ProgressBar(f"failover N={n} trials", args.failover_trials)
            for trial in range(args.failover_trials):
                leader = cluster.wait_for_leader(timeout_s=30)
                warm = cluster.put(f"warm{trial}", "x")
                brokers.drain(warm, DRAIN_S)
                time.sleep(0.3)
                stats_before = brokers.stats()
                sent_before = watch_snapshots_sent(cluster, exclude=leader)
                killed_at = now()
                cluster.nodes[leader].kill9()
                survivors = [p.client_port for i, p in cluster.nodes.items() if i != leader]
                write = trio.run(first_write_after, survivors, 1_000_000 + trial)
                assert write.version is not None and write.acked is not None
                behind = brokers.drain(write.version, DRAIN_S)
                stats_after = brokers.stats()
                sent_after = watch_snapshots_sent(cluster, exclude=leader)
                trials.append(
                    {
                        "killed": leader,
                        "killed_at": killed_at,
                        "version": write.version,
                        "write_ok_ms": ms(write.acked - killed_at),
                        "behind_after_drain": behind,
                        "broker_snapshots": stats_after["snapshots"] - stats_before["snapshots"],
                        "broker_resyncs": stats_after["resyncs"] - stats_before["resyncs"],
                        "broker_reconnects": stats_after["reconnects"] - stats_before["reconnects"],
                        "server_snapshots_sent": sent_after - sent_before,
                    }
                )
                cluster.nodes[leader].start()
                cluster.wait_caught_up(leader, cluster.put(f"after{trial}", "x"), timeout_s=60)
                bar.update(trial + 1, f"last: write {trials[-1]['write_ok_ms']:.0f} ms", True)
            bar.close()
            records = brokers.dump(root)
        finally:
            brokers.stop()
    for t in trials:
        applied = [r.applied_at(t["version"]) for r in records.values()]
        t["missed"] = sum(1 for a in applied if a is None)
        t["all_brokers_ms"] = ms(max(a for a in applied if a is not None) - t["killed_at"])
        t["per_broker_ms"] = [None if a is None else ms(a - t["killed_at"]) for a in applied]
    write_ok = [t["write_ok_ms"] for t in trials]
    every = [t["all_brokers_ms"] for t in trials]
    return {
        "brokers": n,
        "registered": register,
        "trials": len(trials),
        "write_ok_ms": {**summary(write_ok), **spread(write_ok)},
        "all_brokers_ms": {**summary(every), **spread(every)},
        "broker_snapshots": sum(t["broker_snapshots"] for t in trials),
        "server_snapshots_sent": sum(t["server_snapshots_sent"] for t in trials),
        "missed": sum(t["missed"] for t in trials),
        "per_trial": trials,
    }


# --- catch-up mode ----------------------------------------------------------------------


class Admin:
    """Pipelined admin writes on one connection (raises on a refusal)."""

    def __init__(self, conn: ClientConnection) -> None:
        self.writer = Writer(conn)
        self.replies: dict[int, Any] = {}

    async def write(self, command: str, args: dict[str, Any]) -> int:
        request_id = next(self.writer.ids)
        write = Write(request_id, now())
        self.writer.pending[request_id] = write
        await self.writer.conn.send(WriteRequest(request_id, command, args, None))
        while write.version is None and write.error is None:
            await trio.sleep(0.005)
        if write.version is None:
            raise RuntimeError(f"{command} {args}: {write.error}")
        return write.version


async def build_state(
    cluster: ProcessCluster, shards: int, nursery: trio.Nursery, filler: int
) -> tuple[int, int]:
    """Create ``shards`` shards over 5 registered, heartbeating nodes; then ``filler``
    small writes so the leader's next snapshot covers them.  Returns (the version with
    every shard, the last version)."""
    leader = cluster.wait_for_leader()
    conn = await ClientConnection.open("127.0.0.1", cluster.nodes[leader].client_port)
    admin = Admin(conn)
    nursery.start_soon(admin.writer.reader)
    per_stream = min(10_000, shards)
    await admin.write("set_config", {"name": "shards_per_stream_max", "value": per_stream})
    await admin.write("set_config", {"name": "shards_per_node_max", "value": 1_000_000})
    await admin.write("set_tenant", {"name": "bench"})
    nodes = list(range(1, 6))
    for node_id in nodes:
        await admin.write(
            "register_node",
            {"node_id": node_id, "address": f"127.0.0.1:{19000 + node_id}", "rack": f"r{node_id}"},
        )

    async def heartbeats() -> None:  # until the bench ends: the nodes must stay up
        while True:
            for node_id in nodes:
                await conn.send(ReportHealth(node_id, HealthStatus.UP, 0))
            await trio.sleep(0.5)

    nursery.start_soon(heartbeats)
    streams = math.ceil(shards / per_stream)
    bar = ProgressBar(f"catch-up: creating {shards:,} shards, streams", streams)
    version = 0
    for s in range(streams):
        count = min(per_stream, shards - s * per_stream)
        while True:
            try:
                version = await admin.write(
                    "create_stream", {"name": f"s{s:03d}", "shards": count, "tenant": "bench"}
                )
                break
            except RuntimeError as exc:
                if "live" not in str(exc) and "capacity" not in str(exc):
                    raise
                await trio.sleep(0.2)  # the nodes are not reported up yet
        bar.update(s + 1, force=True)
    bar.close()
    last = version
    for i in range(filler):
        last = await admin.write("set_tenant", {"name": f"filler{i}"})
    return version, last


def applied_at_least(index: int, status: dict[str, Any]) -> bool:
    return int(status["applied_index"]) >= index


async def wait_status(
    node: ServeProcess, done: Callable[[dict[str, Any]], bool], timeout_s: float
) -> dict[str, Any]:
    with trio.fail_after(timeout_s):
        while True:
            try:
                code, body = await trio.to_thread.run_sync(
                    lambda: http("GET", node.ops, "/v1/status", 0.5)
                )
                if code == 200 and done(body):
                    return body  # type: ignore[no-any-return]
            except (OSError, urllib.error.URLError, ValueError):
                pass
            await trio.sleep(0.02)


async def catchup_async(
    args: argparse.Namespace, cluster: ProcessCluster, root: Path, procs: Processes
) -> dict[str, Any]:
    shards = args.catchup_shards
    result: dict[str, Any] = {"shards": shards, "learner": [], "fresh_broker": []}
    async with trio.open_nursery() as nursery:
        version, _ = await build_state(cluster, shards, nursery, args.catchup_snapshot_entries + 2)
        leader_id = cluster.wait_for_leader()
        leader = cluster.nodes[leader_id]
        status_line("catch-up: waiting for the leader to snapshot (log compaction)")
        status = await wait_status(leader, lambda s: s["snapshot_index"] >= version, 120)
        result["leader_snapshot_index"] = status["snapshot_index"]
        result["leader_first_index"] = status["first_index"]
        snapshots = [
            p
            for p in leader.data_dir.rglob("*")
            if p.is_file() and "snap" in str(p.relative_to(leader.data_dir))
        ]
        if snapshots:
            result["snapshot_file_bytes"] = max(p.stat().st_size for p in snapshots)
        for trial in range(args.runs):
            new_id = 4 + trial
            peer, ops, client = free_ports(3)
            peers = ",".join(f"{i}=127.0.0.1:{n.peer_port}" for i, n in cluster.nodes.items())
            data_dir = root / f"node-{new_id}"
            node = ServeProcess(
                new_id, peer, ops, client, data_dir,
                [
                    sys.executable, "-m", "felix.cli", "serve",
                    "--node-id", str(new_id), "--cluster-id", "proc-test",
                    "--data-dir", str(data_dir), "--peers", peers,
                    "--listen-peer", f"127.0.0.1:{peer}",
                    "--listen-client", f"127.0.0.1:{client}",
                    "--listen-ops", f"127.0.0.1:{ops}",
                    "--set", f"raft.tick_ms={args.tick_ms}",
                    "--insecure",
                ],
                root / f"node-{new_id}.log",
            )  # fmt: skip
            procs.add(node.stop)
            try:
                added_at = now()
                add = f"/v1/members/add?id={new_id}&address=127.0.0.1:{peer}"
                code, body = await trio.to_thread.run_sync(http, "POST", leader.ops, add)
                if code != 200:
                    raise RuntimeError(f"members/add: {code} {body}")
                target = cluster.status(leader_id)["commit_index"]  # type: ignore[index]
                started = now()
                node.start()
                serving = await wait_status(node, lambda s: True, 60)
                serving_at = now()
                caught = await wait_status(node, partial(applied_at_least, target), 120)
                done = now()
                result["learner"].append(
                    {
                        "node_id": new_id,
                        "from_add_s": done - added_at,
                        "from_start_s": done - started,
                        "process_start_s": serving_at - started,
                        "applied_index": caught["applied_index"],
                        "snapshot_index": caught["snapshot_index"],
                        "first_status_applied": serving["applied_index"],
                        "target": target,
                        "rss_kib": rss_kib(node.proc.pid) if node.proc else None,
                    }
                )
                status_line(
                    f"catch-up: learner {new_id} applied {target} after "
                    f"{done - started:.2f} s from its start (snapshot index "
                    f"{caught['snapshot_index']})"
                )
            finally:
                node.stop()
                remove = f"/v1/members/remove?id={new_id}"
                await trio.to_thread.run_sync(http, "POST", leader.ops, remove)
        endpoints = client_endpoints(cluster).split(",")
        for _ in range(args.runs):
            started = now()
            async with open_metadata_client(
                endpoints, node_id=None, register=False, ready_timeout_s=60
            ) as view:
                ready = now()
                complete = len(view.shards) == shards and len(view.routing) == shards
                result["fresh_broker"].append(
                    {
                        "first_view_s": ready - started,
                        "version": view.version,
                        "shards": len(view.shards),
                        "complete": complete,
                        "endpoint": view.endpoint,
                    }
                )
            del view  # the next trial's broker must not share the heap with this view
            status_line(f"catch-up: fresh broker's first full view in {ready - started:.2f} s")
        nursery.cancel_scope.cancel()
    result["learner_s"] = spread([t["from_start_s"] for t in result["learner"]])
    result["learner_from_add_s"] = spread([t["from_add_s"] for t in result["learner"]])
    result["fresh_broker_s"] = spread([t["first_view_s"] for t in result["fresh_broker"]])
    return result


def catchup(args: argparse.Namespace, root: Path, procs: Processes) -> dict[str, Any]:
    extra = [f"snapshot.entries={args.catchup_snapshot_entries}"]
    with control_plane(root, procs, args.tick_ms, extra) as cluster:
        return trio.run(catchup_async, args, cluster, root, procs)


# --- storm mode -------------------------------------------------------------------------


SNAPSHOT_METRICS = (
    "felix_snapshot_encodes_total",
    "felix_snapshot_served_total",
    "felix_watch_snapshots_sent_total",
)


def snapshot_metrics(cluster: ProcessCluster) -> dict[int, dict[str, int]]:
    """Each node's snapshot counters from its ops ``/metrics``."""
    out: dict[int, dict[str, int]] = {}
    for node_id, node in cluster.nodes.items():
        code, text = node.get_text("/metrics")
        if code != 200:
            raise RuntimeError(f"node {node_id} /metrics: {code}")
        values = dict.fromkeys(SNAPSHOT_METRICS, 0)
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in values:
                values[name] = int(float(value))
        out[node_id] = values
    return out


def metric_growth(
    before: dict[int, dict[str, int]], after: dict[int, dict[str, int]], name: str
) -> dict[int, int]:
    return {i: after[i][name] - before[i][name] for i in before}


async def storm_async(
    args: argparse.Namespace, cluster: ProcessCluster, brokers: Brokers, label: str
) -> dict[str, Any]:
    """Build the state (its nodes kept up by heartbeats all along), wait until every
    node applied it, start the workers, then release every broker at once."""
    shards = args.storm_shards
    async with trio.open_nursery() as nursery:
        version, _ = await build_state(cluster, shards, nursery, 0)
        leader = cluster.wait_for_leader()
        index = cluster.status(leader)["commit_index"]  # type: ignore[index]
        for node_id in cluster.nodes:
            await trio.to_thread.run_sync(partial(cluster.wait_caught_up, node_id, index, 60))
        timeout = ["--ready-timeout", str(args.storm_timeout_s)]
        endpoints = client_endpoints(cluster)
        # (abandon_on_cancel: Ctrl-C must not wait for a worker's answer)
        await trio.to_thread.run_sync(brokers.launch, endpoints, timeout, abandon_on_cancel=True)
        await trio.sleep(SETTLE_S)  # the workers' start-up CPU is over
        idle_before, idle_at = server_cpu_s(cluster), now()
        await trio.sleep(IDLE_SAMPLE_S)  # the servers' idle CPU rate (ticks, heartbeats)
        idle_rate = (server_cpu_s(cluster) - idle_before) / (now() - idle_at)
        spies = start_profiles(
            args, cluster, None, leader, label.replace(" ", "-"), until_stopped=True
        )
        metrics_before = await trio.to_thread.run_sync(snapshot_metrics, cluster)
        cpu_before = process_cpu_s(list(cluster.nodes.values()))
        status_line(f"{label}: releasing {brokers.count} brokers at once")
        released = now()
        try:
            replies = await trio.to_thread.run_sync(brokers.go, abandon_on_cancel=True)
        finally:
            stop_profiles(spies, interrupt=True)
        cpu_after = process_cpu_s(list(cluster.nodes.values()))
        metrics_after = await trio.to_thread.run_sync(snapshot_metrics, cluster)
        # the same idle rate with every broker connected and watching (keepalives,
        # WatchProgress): what the storm's connections cost over its length anyway;
        # after a settle, so the last sends' and the workers' tail are not in it
        await trio.sleep(SETTLE_S)
        connected_before, connected_at = server_cpu_s(cluster), now()
        await trio.sleep(CONNECTED_SAMPLE_S)
        connected_rate = (server_cpu_s(cluster) - connected_before) / (now() - connected_at)
        worker_stats = await trio.to_thread.run_sync(brokers.stats, abandon_on_cancel=True)
        nursery.cancel_scope.cancel()
    ready_at = sorted(t for r in replies for t in r["ready_at"])
    first_versions = sorted({v for r in replies for v in r["versions"]})
    complete = sum(1 for r in replies for n in r["shards"] if n == shards)
    node_of = {f"127.0.0.1:{n.client_port}": i for i, n in cluster.nodes.items()}
    versions_by_node: dict[int, set[int]] = {i: set() for i in cluster.nodes}
    for r in replies:
        for endpoint, v in zip(r["endpoints"], r["versions"], strict=True):
            versions_by_node[node_of[endpoint]].add(v)
    encodes = metric_growth(metrics_before, metrics_after, "felix_snapshot_encodes_total")
    served = metric_growth(metrics_before, metrics_after, "felix_snapshot_served_total")
    cpu = {i: round(cpu_after[i] - cpu_before[i], 3) for i in cpu_before}
    result = {
        "brokers": brokers.count,
        "workers": len(brokers.workers),
        "shards": shards,
        "state_version": version,
        "all_views_s": ready_at[-1] - released,
        "first_view_s": {
            k: v - released if not math.isnan(v) else v for k, v in summary(ready_at).items()
        },
        "complete_views": complete,
        "first_view_versions": first_versions,
        "server_cpu_s": round(sum(cpu.values()), 3),
        # what the servers spend anyway over as long (Raft ticks, the heartbeats)
        "server_idle_cpu_s": round(idle_rate * (ready_at[-1] - released), 3),
        "server_cpu_above_idle_s": round(
            sum(cpu.values()) - idle_rate * (ready_at[-1] - released), 3
        ),
        "server_connected_idle_cpu_s": round(connected_rate * (ready_at[-1] - released), 3),
        "server_cpu_above_connected_idle_s": round(
            sum(cpu.values()) - connected_rate * (ready_at[-1] - released), 3
        ),
        # the simulated brokers' CPU (workers' whole process time, start-up included)
        "worker_cpu_s_per_broker": round(worker_stats["cpu_us"] / 1e6 / brokers.count, 4),
        "server_cpu_s_by_node": cpu,
        "encodes_by_node": encodes,
        "served_by_node": served,
        "watch_snapshots_sent_by_node": metric_growth(
            metrics_before, metrics_after, "felix_watch_snapshots_sent_total"
        ),
        "encodes": sum(encodes.values()),
        "served": sum(served.values()),
        # the target: one encode per version per node (1.0)
        "encodes_per_version_by_node": {
            i: encodes[i] / max(1, len(versions_by_node[i])) for i in encodes
        },
        "brokers_by_node": {
            i: sum(1 for r in replies for e in r["endpoints"] if node_of[e] == i)
            for i in cluster.nodes
        },
    }
    status_line(
        f"{label}: every view after {result['all_views_s']:.2f} s; server CPU "
        f"{result['server_cpu_s']:.2f} s; encodes {encodes}, served {served}"
    )
    return result


def storm_run(args: argparse.Namespace, root: Path, procs: Processes, run: int) -> dict[str, Any]:
    label = f"storm run {run}"
    with control_plane(root, procs, args.tick_ms, args.storm_set) as cluster:
        brokers = Brokers.plan(root, args.storm_brokers, args.workers, 0)
        procs.add(brokers.stop)
        try:
            return trio.run(storm_async, args, cluster, brokers, label)
        finally:
            brokers.stop()


def storm(args: argparse.Namespace, root: Path, procs: Processes) -> dict[str, Any]:
    """A cold-start storm per run, each on a fresh cluster (so no snapshot is cached)."""
    runs = []
    for run in range(1, args.runs + 1):
        run_root = root / f"run{run}"
        runs.append(storm_run(args, run_root, procs, run))
        shutil.rmtree(run_root, ignore_errors=True)
    return {
        "brokers": args.storm_brokers,
        "shards": args.storm_shards,
        "all_views_s": spread([r["all_views_s"] for r in runs]),
        "server_cpu_s": spread([r["server_cpu_s"] for r in runs]),
        "server_cpu_above_idle_s": spread([r["server_cpu_above_idle_s"] for r in runs]),
        "server_cpu_above_connected_idle_s": spread(
            [r["server_cpu_above_connected_idle_s"] for r in runs]
        ),
        "worker_cpu_s_per_broker": spread([r["worker_cpu_s_per_broker"] for r in runs]),
        "encodes": spread([r["encodes"] for r in runs]),
        "served": spread([r["served"] for r in runs]),
        "encodes_per_version_per_node_max": max(
            max(r["encodes_per_version_by_node"].values()) for r in runs
        ),
        "runs": runs,
    }


# --- report -----------------------------------------------------------------------------


def fmt_spread(s: dict[str, float], digits: int = 1) -> str:
    if math.isnan(s["median"]):
        return "-"
    if s["min"] == s["max"]:
        return f"{s['median']:.{digits}f}"
    return f"{s['min']:.{digits}f}/{s['median']:.{digits}f}/{s['max']:.{digits}f}"


def print_steady(title: str, steady_results: dict[str, Any], runs: int) -> None:
    print(f"\n{title}: ms, min/median/max over {runs} run(s)")
    headers = [
        "N", "changes", "missed",
        "commit p50", "commit p99", "prop p50", "prop p99", "prop max",
        "all p50", "all p99", "all max", "KiB/broker", "srv µs/b·chg", "rx µs/delta",
        "voters ms/write", "obs ms/write",
    ]  # fmt: skip
    rows = []
    for n, r in steady_results.items():
        o = r["over_runs"]
        rows.append(
            [
                n, r["changes_written"], r["missed"],
                fmt_spread(o["commit_ms"]["p50"]), fmt_spread(o["commit_ms"]["p99"]),
                fmt_spread(o["propagation_ms"]["p50"]), fmt_spread(o["propagation_ms"]["p99"]),
                fmt_spread(o["propagation_ms"]["max"]),
                fmt_spread(o["all_brokers_ms"]["p50"]), fmt_spread(o["all_brokers_ms"]["p99"]),
                fmt_spread(o["all_brokers_ms"]["max"]),
                fmt_spread(o["server_kib_per_broker"]),
                fmt_spread(o["server_cpu_us_per_broker_change"], 2),
                fmt_spread(o["receive_us_per_delta"]),
                fmt_spread(o["voters_cpu_ms_per_write"], 3),
                fmt_spread(o["observers_cpu_ms_per_write"], 3),
            ]
        )  # fmt: skip
    print_table(headers, rows)


def print_tls_ratios(table: dict[str, Any]) -> None:
    print("\nTLS / plaintext, per run pair (min/median/max); targets at N=1000: all p99 <= 1.5x,")
    print("server CPU per broker per change <= 2x (KiB/broker is the TLS figure, target <= 64)")
    names = list(RATIO_FIGURES)
    print_table(
        ["N", *names],
        [[n, *(fmt_spread(r[name], 2) for name in names)] for n, r in table.items()],
    )


def print_report(payload: dict[str, Any]) -> None:
    steady_results = payload.get("steady") or {}
    if steady_results:
        runs = payload["settings"]["runs"]
        where = (
            f", brokers on {payload['settings']['observers']} observers"
            if payload["settings"].get("observers")
            else ""
        )
        print_steady(f"steady rate, plaintext{where}", steady_results, runs)
        if payload.get("steady_tls"):
            print_steady("steady rate, TLS and broker tokens", payload["steady_tls"], runs)
            print_tls_ratios(payload["tls_vs_plain"])
        print("\npropagation by the node a broker watches (ms, last plaintext run of each N):")
        rows = [
            [n, node, f["brokers"], f["p50"], f["p99"], f["max"]]
            for n, r in steady_results.items()
            for node, f in r["runs"][-1]["propagation_ms_by_node"].items()
        ]
        print_table(["N", "node", "brokers", "p50", "p99", "max"], rows)
    fo = payload.get("failover")
    if fo:
        w, a = fo["write_ok_ms"], fo["all_brokers_ms"]
        print(f"\nfailover (N={fo['brokers']}, {fo['trials']} trials, ms after kill -9):")
        print_table(
            ["", "min", "p50", "p99", "max"],
            [
                ["write succeeds", w["min"], w["p50"], w["p99"], w["max"]],
                ["all brokers applied it", a["min"], a["p50"], a["p99"], a["max"]],
            ],
        )
        print(
            f"snapshots during failover: brokers applied {fo['broker_snapshots']}, "
            f"servers sent {fo['server_snapshots_sent']}; missed {fo['missed']}"
        )
    cu = payload.get("catchup")
    if cu:
        print(f"\ncatch-up ({cu['shards']:,} shards), s, min/median/max:")
        print(f"  new control-plane node (from its start): {fmt_spread(cu['learner_s'])}")
        print(f"  new control-plane node (from member add): {fmt_spread(cu['learner_from_add_s'])}")
        print(f"  fresh broker's first full view: {fmt_spread(cu['fresh_broker_s'])}")
    st = payload.get("storm")
    if st:
        print_storm(st)


def print_storm(st: dict[str, Any]) -> None:
    print(
        f"\nstorm: {st['brokers']:,} brokers, no version, released at once; "
        f"{st['shards']:,} shards; min/median/max over {len(st['runs'])} run(s)"
    )
    print(f"  every broker has its full view after (s): {fmt_spread(st['all_views_s'], 2)}")
    print(f"  servers' CPU during the storm (s, 3 nodes): {fmt_spread(st['server_cpu_s'], 2)}")
    print(f"  of it above the idle rate (s): {fmt_spread(st['server_cpu_above_idle_s'], 2)}")
    above = fmt_spread(st["server_cpu_above_connected_idle_s"], 2)
    print(f"  above the idle rate with every broker connected (s): {above}")
    print(f"  worker CPU per broker (s): {fmt_spread(st['worker_cpu_s_per_broker'], 3)}")
    print(f"  snapshot encodes (all nodes): {fmt_spread(st['encodes'], 0)}")
    print(f"  snapshots served (all nodes): {fmt_spread(st['served'], 0)}")
    print(f"  encodes per version per node, worst: {st['encodes_per_version_per_node_max']:.2f}")
    rows = [
        [
            run_no, node, r["brokers_by_node"][node], r["encodes_by_node"][node],
            r["served_by_node"][node], r["server_cpu_s_by_node"][node],
        ]
        for run_no, r in enumerate(st["runs"], start=1)
        for node in r["encodes_by_node"]
    ]  # fmt: skip
    print_table(["run", "node", "brokers", "encodes", "served", "CPU s"], rows)


def plot(payload: dict[str, Any], path: Path) -> None:
    """CDF per N of propagation and all-brokers latency (every run pooled)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter
    except ImportError:
        print("bench: matplotlib is not installed (pip install -e '.[bench]'); no plot")
        return
    steady_results = payload.get("steady") or {}
    fo = payload.get("failover")
    panels = (2 if steady_results else 0) + (1 if fo else 0)
    if not panels:
        print("bench: nothing to plot (steady and failover modes were not run)")
        return
    fig, grid = plt.subplots(1, panels, figsize=(6 * panels, 4.5), squeeze=False)
    axes = list(grid[0])
    titles = ("propagation (send -> applied, per broker)", "all brokers (send -> last broker)")
    keys = ("propagation_ms", "all_brokers_ms") if steady_results else ()
    for ax, key, title in zip(axes, keys, titles, strict=False):
        for n, r in steady_results.items():
            samples: list[float] = []
            for run in r["runs"]:
                raw = run["raw"][key]
                if key == "propagation_ms":
                    samples.extend(v for row in raw for v in row if v is not None)
                else:
                    samples.extend(raw)
            if not samples:
                continue
            samples.sort()
            ys = [(i + 1) / len(samples) for i in range(len(samples))]
            ax.plot(samples, ys, label=f"N={n}")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ScalarFormatter())  # 2, 5, 10 ms, not 2x10^0
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    if fo:
        ax = axes[-1]
        for key, label in (("write_ok_ms", "write succeeds"), ("all_brokers_ms", "all brokers")):
            samples = sorted(t[key] for t in fo["per_trial"])
            ax.plot(
                samples, [(i + 1) / len(samples) for i in range(len(samples))], "o-", label=label
            )
        ax.set_xlabel("ms after kill -9 of the leader")
        ax.set_title(f"failover, N={fo['brokers']}")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- main -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--brokers", default="100,500,1000", help="N values, comma-separated")
    parser.add_argument("--rate", type=float, default=20.0, help="changes per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of writes per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per N (and catch-up trials)")
    parser.add_argument(
        "--register",
        default="50",
        help="how many brokers register and heartbeat (the rest are read-only watchers), or 'all'",
    )
    parser.add_argument("--workers", type=int, default=0, help="broker processes (0: auto)")
    parser.add_argument("--tick-ms", type=int, default=50, help="raft.tick_ms of the servers")
    parser.add_argument("--no-steady", action="store_true", help="skip the steady-rate mode")
    parser.add_argument(
        "--pin-brokers",
        action="store_true",
        help="steady mode: servers and the writer on one CPU, the broker workers on another",
    )
    parser.add_argument(
        "--tls", action="store_true", help="each steady run plaintext and with TLS + tokens"
    )
    parser.add_argument("--failover-trials", type=int, default=0, help="0: no failover mode")
    parser.add_argument("--failover-brokers", type=int, default=0, help="0: the largest N")
    parser.add_argument("--catchup-shards", type=int, default=0, help="0: no catch-up mode")
    parser.add_argument("--catchup-snapshot-entries", type=int, default=20)
    parser.add_argument(
        "--observers", type=int, default=0, help="steady mode: brokers on K observer nodes"
    )
    parser.add_argument("--storm", action="store_true", help="the cold-start reconnect storm")
    parser.add_argument("--storm-brokers", type=int, default=1000, help="brokers in the storm")
    parser.add_argument("--storm-shards", type=int, default=10_000, help="shards in the state")
    parser.add_argument(
        "--storm-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="storm: a server setting (felix serve --set), e.g. watch.snapshot_cache_ttl_ms=60000",
    )
    parser.add_argument(
        "--storm-timeout-s", type=float, default=600.0, help="per broker, for its first view"
    )
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "propagation.json")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of the CDFs")
    parser.add_argument("--keep-dir", action="store_true", help="keep logs and WALs")
    parser.add_argument(
        "--py-spy", type=Path, default=None, metavar="DIR",
        help="py-spy record every server and one broker worker over the writes, into DIR",
    )  # fmt: skip
    return parser.parse_args(argv)


def _interrupted(exc: BaseException) -> bool:
    """A KeyboardInterrupt, possibly inside trio's exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_interrupted(e) for e in exc.exceptions)
    return isinstance(exc, KeyboardInterrupt)


def _interrupt(signum: int, frame: Any) -> None:
    """SIGTERM: the same clean-up as Ctrl-C (through the SIGINT handler, which inside
    ``trio.run`` is trio's own, so the interrupt arrives at a safe point)."""
    signal.raise_signal(signal.SIGINT)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit()
    # a shell starts background jobs with SIGINT ignored: stop on it all the same
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    procs = Processes()
    root = Path(tempfile.mkdtemp(prefix="felix-propagation-"))
    payload: dict[str, Any] = {
        "machine": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "clock": "time.monotonic() = CLOCK_MONOTONIC (system-wide on Linux)",
        "loadavg_start": os.getloadavg(),
        "settings": {
            k: str(v) if isinstance(v, Path) else v for k, v in sorted(vars(args).items())
        },
    }
    started = now()
    try:
        if not args.no_steady:
            by_mode = steady(args, root / "steady", procs)
            payload["steady"] = by_mode["plain"]
            if args.tls:
                payload["steady_tls"] = by_mode["tls"]
                payload["tls_vs_plain"] = tls_ratios(by_mode["plain"], by_mode["tls"])
        if args.failover_trials:
            payload["failover"] = failover(args, root / "failover", procs)
        if args.catchup_shards:
            payload["catchup"] = catchup(args, root / "catchup", procs)
        if args.storm:
            payload["storm"] = storm(args, root / "storm", procs)
    except BaseException as exc:
        if not _interrupted(exc):
            raise
        print("\nbench: interrupted; stopping every process it started", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
        if args.keep_dir:
            print(f"logs and data kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    payload["elapsed_s"] = now() - started
    payload["loadavg_end"] = os.getloadavg()
    print_report(payload)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, allow_nan=True) + "\n")
    print(f"\nJSON: {args.json}")
    if args.plot:
        plot(payload, args.plot)
        print(f"plot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
