"""Real `felix serve` processes on loopback, for process-level tests and benches.

Every process is started with its own data dir and free ports, and stopped by its PID
(SIGTERM, then SIGKILL after a grace period) — nothing outlives the harness.  A cluster
is ``secure`` by default, as `felix serve` is: the harness makes a CA, one certificate
per node and a bootstrap admin token in its root, and talks ``wss://`` with that token;
``secure=False`` runs the nodes ``--insecure`` (benches compare the two).

``pods=True`` lays the nodes out the way a StatefulSet does: node ``felix-N`` (id N + 1)
has its own loopback address (``127.0.k.11``, ``.12``, ...: a pod IP) with the same fixed
ports on every node, and its own data dir ``felix-N/``; `ServeProcess.start` takes extra
environment variables, so a restart can run the same node with another environment.

``observers=K`` adds K observer processes (docs/architecture.md, "Observers"): ids
101, 102, ... (``cluster.node_id_base`` 101 with pods: pod ``felix-observer-N``), never
initial members, each joining through the membership path with ``cluster.role =
observer``; `ProcessCluster.observers` holds them, with the same API as ``nodes``.
`ProcessCluster.start_all` starts them after the voters.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from felix.broker.client import broker_ssl_context
from felix.broker.connection import ClientConnection, ConnectionClosed
from felix.metadata.tokens import ROLE_BROKER, format_token, parse_token, secret_hash
from felix.proto.client_messages import (
    Change,
    Error,
    GetSnapshot,
    Record,
    SnapshotChunk,
    WriteRequest,
    WriteResult,
)
from felix.security.certs import init_ca, issue
from felix.security.contexts import client_context

HTTP_TIMEOUT_S = 5.0
LOOPBACK = "127.0.0.1"
POD_PORTS = (7001, 8001, 9001)  # peer, client, ops: the defaults of felix/config.py
POD_SUBNETS_TRIED = 32  # 127.k.*: how many /24s are probed for a pod layout
OBSERVER_ID_BASE = 101  # the first observer's id (an observer StatefulSet's node_id_base)


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def pod_hosts(size: int, ports: Sequence[int] = POD_PORTS) -> list[str] | None:
    """One loopback address per pod (``127.k.0.11`` + ordinal), where every one of
    ``ports`` is free on every address, or None (no such layout here: use free ports).
    The /24 is picked at random among `POD_SUBNETS_TRIED`, so concurrent harnesses
    rarely probe the same one."""
    start = secrets.randbelow(POD_SUBNETS_TRIED)
    for k in range(POD_SUBNETS_TRIED):
        subnet = 100 + (start + k) % POD_SUBNETS_TRIED
        hosts = [f"127.{subnet}.0.{11 + ordinal}" for ordinal in range(size)]
        if all(_bindable(host, port) for host in hosts for port in ports):
            return hosts
    return None


def _bindable(host: str, port: int) -> bool:
    sock = socket.socket()
    try:
        sock.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def pod_identity(ordinal: int, members: Sequence[int]) -> tuple[list[str], dict[str, str]]:
    """The `felix serve` arguments and environment that make a process pod
    ``felix-<ordinal>``: the node id from ``POD_NAME`` (ordinal + 1), the cluster formed
    by ``members`` (docs/architecture.md §15), as one config serves every pod."""
    args = [
        "--set", "cluster.pod_identity=true",
        "--set", f"cluster.initial_members={','.join(map(str, members))}",
    ]  # fmt: skip
    return args, {"POD_NAME": f"felix-{ordinal}"}


def observer_pod_identity(ordinal: int, members: Sequence[int]) -> tuple[list[str], dict[str, str]]:
    """Pod ``felix-observer-<ordinal>`` of an observer StatefulSet: node id ordinal +
    `OBSERVER_ID_BASE`, asking ``members`` to add it as an observer."""
    args = [
        "--set", "cluster.pod_identity=true",
        "--set", f"cluster.node_id_base={OBSERVER_ID_BASE}",
        "--set", f"cluster.initial_members={','.join(map(str, members))}",
        "--set", "cluster.role=observer",
    ]  # fmt: skip
    return args, {"POD_NAME": f"felix-observer-{ordinal}"}


@dataclass
class ServeProcess:
    node_id: int
    peer_port: int
    ops_port: int
    client_port: int
    data_dir: Path
    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    token: str = ""  # presented on the ops port (admin routes, status)
    ca: Path | None = None  # the ops port speaks HTTPS (a secure cluster)
    host: str = LOOPBACK  # every port of this node listens here (a pod IP)
    env: dict[str, str] = field(default_factory=dict)  # on top of os.environ, every start
    name: str = ""  # the pod name (felix-N), when the cluster has pods

    @property
    def ops(self) -> str:
        return f"{self.host}:{self.ops_port}"

    @property
    def client_endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    def start(self, extra_env: Mapping[str, str] | None = None) -> None:
        """Start (again) with the same arguments and data dir; ``extra_env`` is added
        to this start's environment only (a restart with a changed pod template)."""
        assert self.proc is None or self.proc.poll() is not None
        env = {**os.environ, **self.env, **(extra_env or {})}
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()

    def probe(self, path: str) -> bool:
        """``path`` (``/livez``, ``/readyz``: what Kubernetes probes) answers 200."""
        try:
            code, _ = self.get_text(path, timeout_s=0.5)
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return code == 200

    def wait_probe(self, path: str = "/readyz", timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.probe(path):
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"node {self.node_id} exited ({self.proc.returncode})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {self.node_id}: {path} not 200 within {timeout_s} s")
            time.sleep(0.01)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        self.wait_probe("/readyz", timeout_s)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signum)

    def kill9(self) -> None:
        self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait()

    def stop(self, grace_s: float = 10.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
        self.proc.terminate()
        try:
            return self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None

    def get(self, path: str, timeout_s: float = HTTP_TIMEOUT_S) -> tuple[int, Any]:
        return http("GET", self.ops, path, timeout_s, self.token, self.ca)

    def post(self, path: str) -> tuple[int, Any]:
        return http("POST", self.ops, path, token=self.token, ca=self.ca)

    def get_text(self, path: str, timeout_s: float = HTTP_TIMEOUT_S) -> tuple[int, str]:
        """A GET of a text route (``/metrics``, ``/readyz?verbose``): status and body."""
        code, body = http_bytes("GET", self.ops, path, timeout_s, self.token, self.ca)
        return code, body.decode()


@dataclass(frozen=True, slots=True)
class Credentials:
    """How a client of a harness cluster connects: token and CA (empty: insecure)."""

    token: str = ""
    ca: Path | None = None

    def ssl_context(self) -> ssl.SSLContext | None:
        return broker_ssl_context(self.ca) if self.ca is not None else None

    async def open(
        self, port: int, timeout_s: float = HTTP_TIMEOUT_S, host: str = LOOPBACK
    ) -> ClientConnection:
        return await ClientConnection.open(
            host, port, timeout_s=timeout_s, token=self.token, ssl_context=self.ssl_context()
        )


async def _request(node: ServeProcess, request: WriteRequest, creds: Credentials) -> Any:
    with trio.fail_after(HTTP_TIMEOUT_S):
        conn = await creds.open(node.client_port, host=node.host)
        try:
            await conn.send(request)
            return await conn.receive()
        finally:
            await conn.aclose()


async def local_snapshot(node: ServeProcess, creds: Credentials) -> list[Change]:
    """Every record ``node`` has applied (a local, serializable read)."""
    with trio.fail_after(HTTP_TIMEOUT_S):
        conn = await creds.open(node.client_port, host=node.host)
        try:
            await conn.send(GetSnapshot(1, False))
            records: list[Change] = []
            while True:
                chunk = await conn.receive()
                if isinstance(chunk, SnapshotChunk):
                    records.extend(chunk.records)
                    if chunk.last:
                        return records
        finally:
            await conn.aclose()


async def mint_broker_tokens(
    port: int, creds: Credentials, node_ids: Sequence[int], host: str = LOOPBACK
) -> dict[int, str]:
    """A broker-role token bound to each of ``node_ids``, as `felix ctl token create
    --role broker --node N` makes them: the secret is made here and only its hash is
    written, pipelined over one admin connection.  Raises `ConnectionClosed` or
    `TokenMintError` (the leader changed, or a refusal): the caller retries."""
    made = {
        node_id: format_token(secrets.token_hex(8), secrets.token_bytes(32)) for node_id in node_ids
    }
    by_request: dict[int, int] = {}
    with trio.fail_after(HTTP_TIMEOUT_S + len(made) / 100):
        conn = await creds.open(port, host=host)
        try:
            for request_id, (node_id, token) in enumerate(made.items(), start=1):
                parsed = parse_token(token)
                args: Record = {
                    "token_id": parsed.id, "role": ROLE_BROKER, "node_id": node_id,
                    "secret_sha256": secret_hash(parsed.secret), "expires_at_ms": None,
                    "description": f"harness broker {node_id}",
                }  # fmt: skip
                by_request[request_id] = node_id
                await conn.send(WriteRequest(request_id, "create_token", args, None))
            while by_request:
                for reply in await conn.receive_batch():
                    if isinstance(reply, Error):
                        raise TokenMintError(f"create_token: {reply.code.value}: {reply.detail}")
                    if isinstance(reply, WriteResult):
                        by_request.pop(reply.request_id, None)
        finally:
            await conn.aclose()
    return made


class TokenMintError(Exception):
    """A create_token write was refused (typically: the node stopped leading)."""


def http(
    method: str,
    endpoint: str,
    path: str,
    timeout_s: float = HTTP_TIMEOUT_S,
    token: str = "",
    ca: Path | None = None,
) -> tuple[int, Any]:
    """One ops-port request with a JSON answer (see `http_bytes`)."""
    code, body = http_bytes(method, endpoint, path, timeout_s, token, ca)
    return code, json.loads(body or b"null")


def http_bytes(
    method: str,
    endpoint: str,
    path: str,
    timeout_s: float = HTTP_TIMEOUT_S,
    token: str = "",
    ca: Path | None = None,
) -> tuple[int, bytes]:
    """One ops-port request; HTTPS trusting only ``ca`` when it is given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    scheme = "https" if ca is not None else "http"
    request = urllib.request.Request(
        f"{scheme}://{endpoint}{path}",
        method=method,
        data=b"" if method == "POST" else None,
        headers=headers,
    )
    context = client_context(ca) if ca is not None else None
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:
            return response.status, bytes(response.read())
    except urllib.error.HTTPError as exc:  # 4xx/5xx: the status and the body
        return exc.code, bytes(exc.read())


@dataclass
class ProcessCluster:
    root: Path
    size: int = 3
    tick_ms: int = 20
    secure: bool = True
    cluster_id: str = "proc-test"
    pods: bool = False  # StatefulSet-like: felix-N, own address, fixed ports (see above)
    initial: int = 0  # pods: nodes 1..initial form the cluster, the others join (0: all)
    nodes: dict[int, ServeProcess] = field(default_factory=dict)
    observers: list[ServeProcess] = field(default_factory=list)  # ids 101, 102, ...
    creds: Credentials = field(default_factory=Credentials)
    _broker_creds: dict[int, Credentials] = field(default_factory=dict)

    def __init__(
        self,
        root: Path,
        size: int = 3,
        tick_ms: int = 20,
        secure: bool = True,
        cluster_id: str = "proc-test",
        pods: bool = False,
        initial: int = 0,
        observers: int = 0,
    ) -> None:
        """``observers``: how many observer processes to add (`observers` holds them)."""
        self.root, self.size, self.tick_ms, self.secure = root, size, tick_ms, secure
        self.cluster_id, self.pods, self.initial = cluster_id, pods, initial
        self.nodes, self.observers = {}, []
        self.creds, self._broker_creds = Credentials(), {}
        self._build(observers)

    def node(self, node_id: int) -> ServeProcess:
        """The voter or observer ``node_id``."""
        if node_id in self.nodes:
            return self.nodes[node_id]
        return next(o for o in self.observers if o.node_id == node_id)

    def all_nodes(self) -> list[ServeProcess]:
        """Voters, then observers."""
        return [*self.nodes.values(), *self.observers]

    async def credentials_for(self, node_id: int | None) -> Credentials:
        """What a client presents: the admin token for ``None``, otherwise a broker
        token bound to ``node_id`` (made once, on first use; insecure: no credentials)."""
        if node_id is None:
            return self.creds
        if node_id not in self._broker_creds:
            self._broker_creds.update(await self.broker_credentials([node_id]))
        return self._broker_creds[node_id]

    async def broker_credentials(self, node_ids: Sequence[int]) -> dict[int, Credentials]:
        """A broker token per id (`mint_broker_tokens` on the leader, retried across
        leader changes for up to 20 s); insecure clusters need none."""
        if not self.secure:
            return {node_id: Credentials() for node_id in node_ids}
        deadline = time.monotonic() + 20.0
        while True:
            leader = await trio.to_thread.run_sync(self.wait_for_leader)
            try:
                node = self.nodes[leader]
                tokens = await mint_broker_tokens(node.client_port, self.creds, node_ids, node.host)
            except (OSError, ConnectionClosed, TokenMintError, trio.TooSlowError):
                if time.monotonic() > deadline:
                    raise
                await trio.sleep(0.05)
                continue
            return {node_id: Credentials(t, self.creds.ca) for node_id, t in tokens.items()}

    def _security_args(self, node_id: int) -> list[str]:
        if not self.secure:
            return ["--insecure"]
        tls = self.root / "tls"
        return [
            "--set", f"tls.ca={tls / 'ca.crt'}",
            "--set", f"tls.cert={tls / f'node-{node_id}.crt'}",
            "--set", f"tls.key={tls / f'node-{node_id}.key'}",
            "--set", f"auth.bootstrap_token_file={self.root / 'admin-token'}",
        ]  # fmt: skip

    def _make_material(self, observers: int) -> None:
        tls = self.root / "tls"
        tls.mkdir(parents=True, exist_ok=True)
        init_ca(tls, self.cluster_id)
        for node_id in range(1, self.size + 2):  # one spare, for a node a test adds
            issue(tls, "node", node_id)
        for node_id in range(OBSERVER_ID_BASE, OBSERVER_ID_BASE + observers):
            issue(tls, "node", node_id)
        token = format_token(secrets.token_hex(8), secrets.token_bytes(32))
        (self.root / "admin-token").write_text(token + "\n")
        self.creds = Credentials(token, tls / "ca.crt")

    def _build(self, observers: int) -> None:
        if self.secure:
            self._make_material(observers)
        ids = list(range(1, self.size + 1))
        obs_ids = list(range(OBSERVER_ID_BASE, OBSERVER_ID_BASE + observers))
        hosts = pod_hosts(self.size + observers) if self.pods else None
        addresses: dict[int, tuple[str, int, int, int]]
        if hosts is not None:
            addresses = {n: (hosts[k], *POD_PORTS) for k, n in enumerate(ids + obs_ids)}
        else:  # every node on 127.0.0.1, each with free ports of its own
            count = self.size + observers
            ports = free_ports(3 * count)
            addresses = {
                n: (LOOPBACK, ports[k], ports[2 * count + k], ports[count + k])
                for k, n in enumerate(ids + obs_ids)
            }
        initial = ids[: self.initial or self.size]
        for i in ids + obs_ids:
            observer = i >= OBSERVER_ID_BASE
            host, peer_port, client_port, ops_port = addresses[i]
            peers = ",".join(f"{p}={addresses[p][0]}:{addresses[p][1]}" for p in ids if p != i)
            ordinal = i - OBSERVER_ID_BASE if observer else i - 1
            name = ""
            if self.pods:
                name = f"felix-observer-{ordinal}" if observer else f"felix-{ordinal}"
            data_dir = self.root / (f"{name}/data" if name else f"node-{i}")
            identity: list[str]
            if self.pods:
                make = observer_pod_identity if observer else pod_identity
                identity, env = make(ordinal, initial)
            elif observer:
                identity = [
                    "--node-id", str(i),
                    "--set", f"cluster.initial_members={','.join(map(str, initial))}",
                    "--set", "cluster.role=observer",
                ]  # fmt: skip
                env = {}
            else:
                identity, env = ["--node-id", str(i)], {}
            args = [
                sys.executable, "-m", "felix.cli", "serve",
                *identity, "--cluster-id", self.cluster_id,
                "--data-dir", str(data_dir), "--peers", peers,
                "--listen-peer", f"{host}:{peer_port}",
                "--listen-client", f"{host}:{client_port}",
                "--listen-ops", f"{host}:{ops_port}",
                "--set", f"raft.tick_ms={self.tick_ms}",
                *self._security_args(i),
            ]  # fmt: skip
            process = ServeProcess(
                i,
                peer_port,
                ops_port,
                client_port,
                data_dir,
                args,
                self.root / f"{name or f'node-{i}'}.log",
                token=self.creds.token,
                ca=self.creds.ca,
                host=host,
                env=env,
                name=name,
            )
            if observer:
                self.observers.append(process)
            else:
                self.nodes[i] = process

    def start_all(self) -> None:
        """The voters, then the observers (which ask the voters to add them)."""
        for node in self.all_nodes():
            node.start()

    def stop_all(self) -> None:
        for node in self.all_nodes():
            node.stop()

    def status(self, node_id: int) -> dict[str, Any] | None:
        try:
            # short: a paused (SIGSTOP) node accepts connections but never answers
            code, body = self.node(node_id).get("/v1/status", timeout_s=0.3)
        except (OSError, urllib.error.URLError, ValueError):
            return None
        return body if code == 200 and isinstance(body, dict) else None

    def wait_for_leader(self, timeout_s: float = 20.0, exclude: set[int] = frozenset()) -> int:  # type: ignore[assignment]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for node_id in self.nodes:
                if node_id in exclude:
                    continue
                status = self.status(node_id)
                if status and status["role"] == "leader":
                    return node_id
            time.sleep(0.02)
        raise TimeoutError(f"no leader within {timeout_s} s")

    def put(self, key: str, value: str, timeout_s: float = 20.0) -> int:
        """Write tenant ``key`` (display name ``value``) through the current leader,
        retrying across leader changes; returns the version it was applied at."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                leader = self.wait_for_leader(max(0.1, deadline - time.monotonic()))
                request = WriteRequest(1, "set_tenant", {"name": key, "display_name": value}, None)
                reply = trio.run(_request, self.nodes[leader], request, self.creds)
            except (OSError, TimeoutError, ConnectionClosed, trio.TooSlowError):
                time.sleep(0.02)
                continue
            if isinstance(reply, WriteResult):
                return reply.version
            time.sleep(0.02)
        raise TimeoutError(f"write {key!r} not acknowledged within {timeout_s} s")

    def local_items(self, node_id: int, keys: list[str]) -> dict[str, str | None]:
        """What ``node_id`` has applied for tenants ``keys`` (a local, serializable read)."""
        records = trio.run(local_snapshot, self.node(node_id), self.creds)
        names = {
            c.key: c.value.get("display_name") for c in records if c.kind == "tenant" and c.value
        }
        return {key: names.get(key) for key in keys}  # type: ignore[misc]

    def wait_caught_up(self, node_id: int, index: int, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.status(node_id)
            if status and status["applied_index"] >= index:
                return
            time.sleep(0.02)
        raise TimeoutError(f"node {node_id} did not apply index {index} within {timeout_s} s")
