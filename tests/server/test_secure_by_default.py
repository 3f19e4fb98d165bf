"""Secure by default, with real processes: `felix serve` refuses to start without TLS and
auth unless told ``--insecure`` (and then says so); `felix dev` runs with both on, and
`felix ctl`, `felix status` and the broker library work against it from its files."""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from felix.broker import CredentialsRefused, TlsRefused, broker_ssl_context, open_metadata_client
from felix.metadata.tokens import format_token
from felix.proto.client_messages import ClientHello, Deltas, SnapshotChunk
from felix.security.certs import issue
from felix.testing.processes import ProcessCluster, ServeProcess, free_ports, http_bytes

FELIX = [sys.executable, "-m", "felix.cli"]


def felix(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FELIX_")}
    return subprocess.run(
        [*FELIX, *args], cwd=cwd, env={**clean, **(env or {})},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_serve_refuses_to_start_without_tls_and_auth(tmp_path: Path) -> None:
    result = felix("serve", "--data-dir", str(tmp_path / "d"), cwd=tmp_path)
    assert result.returncode == 2
    assert "refusing to start" in result.stderr
    for key in ("tls.ca", "tls.cert", "tls.key", "auth.bootstrap_token_file", "--insecure"):
        assert key in result.stderr
    assert not (tmp_path / "d").exists()  # nothing was created


def test_serve_refuses_a_certificate_for_another_node(tmp_path: Path) -> None:
    cluster = ProcessCluster(tmp_path)  # makes the CA, node certificates and token
    args = list(cluster.nodes[1].args)
    args[args.index(next(a for a in args if a.startswith("tls.cert=")))] = (
        f"tls.cert={tmp_path / 'tls' / 'node-2.crt'}"
    )
    args[args.index(next(a for a in args if a.startswith("tls.key=")))] = (
        f"tls.key={tmp_path / 'tls' / 'node-2.key'}"
    )
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert "names felix://proc-test/node/2, but this is node 1" in result.stderr


def wait_ready_text(node: ServeProcess) -> str:
    """``/readyz?verbose`` once the node listens (503 while it has no leader is fine)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return node.get_text("/readyz?verbose")[1]
        except OSError:  # not listening yet (URLError is an OSError)
            assert time.monotonic() < deadline, "the node never came up"
            time.sleep(0.05)


def test_insecure_is_said_at_start_and_on_readyz(tmp_path: Path) -> None:
    cluster = ProcessCluster(tmp_path, size=1, secure=False)
    node = cluster.nodes[1]
    node.start()
    try:
        text = wait_ready_text(node)
        assert "INSECURE: plaintext links, no authentication" in text
    finally:
        node.stop()
    assert "runs INSECURE" in node.log_path.read_text()


def test_the_ops_port_speaks_https_and_tls_ops_false_keeps_it_plaintext(
    tmp_path: Path,
) -> None:
    """A secure node's ops port is HTTPS (the admin token never travels in the clear):
    plain HTTP gets nothing, HTTPS trusting the cluster CA works, another CA is refused.
    ``tls.ops = false`` keeps it plaintext for probes that cannot do TLS, and says so."""
    cluster = ProcessCluster(tmp_path / "tls", size=1)
    node = cluster.nodes[1]
    node.start()
    try:
        assert "TLS and authentication on" in wait_ready_text(node)
        with pytest.raises(OSError):  # the server closes without an answer: not TLS
            http_bytes("GET", node.ops, "/livez")
        assert node.get("/v1/status")[0] == 200  # HTTPS, the CA, the admin token
        other = ProcessCluster(tmp_path / "other", size=1)  # only its CA is used
        with pytest.raises(urllib.error.URLError) as refused:
            http_bytes("GET", node.ops, "/livez", ca=other.creds.ca)
        assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)
    finally:
        node.stop()

    plain = ProcessCluster(tmp_path / "plain", size=1)
    node = plain.nodes[1]
    node.args += ["--set", "tls.ops=false"]
    node.ca = None  # the ops client: plain HTTP
    node.start()
    try:
        assert "the ops port is plaintext (tls.ops = false)" in wait_ready_text(node)
        assert node.get("/v1/status")[0] == 200
    finally:
        node.stop()
    assert "bearer tokens sent to its admin routes travel in the clear" in node.log_path.read_text()


def dev_base_port() -> int:
    """A base port whose peer, client and ops ranges are all free right now."""
    for _ in range(50):
        (base,) = free_ports(1)
        base = min(base, 60000)
        wanted = [base + o + i for o in (0, 1000, 2000) for i in range(3)]
        if all(_free(p) for p in wanted):
            return base
    raise AssertionError("no free port range")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    base = dev_base_port()
    log = (tmp_path / "dev.log").open("wb")
    proc = subprocess.Popen(
        [*FELIX, "dev", "--base-port", str(base)],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("FELIX_")},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "leader: node" not in (tmp_path / "dev.log").read_text():
            assert proc.poll() is None, (tmp_path / "dev.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "dev.log").read_text()
            time.sleep(0.05)
        yield tmp_path, base
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        log.close()


def test_felix_dev_runs_secure_and_the_tools_use_its_files(dev: tuple[Path, int]) -> None:
    cwd, base = dev
    text = (cwd / "dev.log").read_text()
    assert "TLS and authentication on" in text and "wss://" in text
    clients = ",".join(f"127.0.0.1:{base + 1000 + i}" for i in range(3))
    ops = ",".join(f"127.0.0.1:{base + 2000 + i}" for i in range(3))

    # The ctl and the admin commands find the token and CA in ./felix-data themselves.
    done = felix("ctl", "tenant", "set", "acme", "--endpoints", clients, cwd=cwd)
    assert done.returncode == 0, done.stderr
    status = felix("status", "--endpoints", ops, "-o", "json", cwd=cwd)
    assert status.returncode == 0, status.stderr
    assert {row["role"] for row in json.loads(status.stdout)} >= {"leader"}
    created = felix(
        "ctl", "token", "create", "--role", "broker", "--node", "7", "--ttl", "1d",
        "-o", "json", "--endpoints", clients, cwd=cwd,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    broker_token = json.loads(created.stdout)["token"]
    listed = felix("ctl", "token", "list", "-o", "json", "--endpoints", clients, cwd=cwd)
    assert listed.returncode == 0, listed.stderr
    assert broker_token not in listed.stdout  # ids and roles only, never the secret
    assert [t["node_id"] for t in json.loads(listed.stdout)["tokens"]] == [7]

    # Without credentials, or with a wrong token, the tools say why.
    empty = cwd / "elsewhere"
    empty.mkdir()
    plain = felix("ctl", "tenant", "list", "--endpoints", clients, "--timeout", "3", cwd=empty)
    assert plain.returncode == 1
    bad = felix(
        "ctl", "tenant", "set", "x", "--endpoints", clients, cwd=cwd,
        env={"FELIX_TOKEN": format_token("00000000000000aa", bytes(32)),
             "FELIX_CA": str(cwd / "felix-data" / "tls" / "ca.crt")},
    )  # fmt: skip
    assert bad.returncode == 1 and "unauthorized" in bad.stderr
    ca = cwd / "felix-data" / "tls" / "ca.crt"
    _, body = http_bytes("GET", f"127.0.0.1:{base + 2000}", "/metrics", ca=ca)  # no token
    metrics = body.decode()
    assert 'felix_client_unauthorized_total{operation="authenticate"} 1.0' in metrics

    # The broker library, with the broker token and the CA.
    context = broker_ssl_context(cwd / "felix-data" / "tls" / "ca.crt")
    endpoints = clients.split(",")

    async def as_broker() -> None:
        async with open_metadata_client(
            endpoints, node_id=7, address="10.0.0.7:9092", token=broker_token, ssl_context=context
        ) as view:
            assert "acme" in view.tenants
        with pytest.raises(CredentialsRefused, match="unknown or revoked"):
            async with open_metadata_client(
                endpoints, node_id=8, address="10.0.0.8:9092",
                token=format_token("00000000000000bb", bytes(32)), ssl_context=context,
            ):  # fmt: skip
                pass
        with pytest.raises(CredentialsRefused, match="may not watch as broker 8"):
            async with open_metadata_client(
                endpoints, node_id=8, address="10.0.0.8:9092", token=broker_token,
                ssl_context=context,
            ):  # fmt: skip
                pass

    trio.run(as_broker)
    assert TlsRefused  # exported for brokers that pin a CA (tested in tests/broker)


def test_sighup_reloads_a_renewed_certificate_and_keeps_open_connections(
    tmp_path: Path,
) -> None:
    cluster = ProcessCluster(tmp_path, size=1)
    node = cluster.nodes[1]
    node.start()
    try:
        cluster.wait_for_leader()
        creds = cluster.creds

        async def scenario() -> None:
            watcher = await creds.open(node.client_port)
            try:
                await watcher.send(ClientHello(None, None, ""))
                assert isinstance(await watcher.receive(), SnapshotChunk)
                before = watcher.server_certificate["serialNumber"]
                issue(tmp_path / "tls", "node", 1, overwrite=True)  # renewed in place
                node.signal(signal.SIGHUP)
                with trio.fail_after(20):
                    while True:  # the reload is asynchronous to us: new handshakes tell
                        fresh = await creds.open(node.client_port)
                        serial = fresh.server_certificate["serialNumber"]
                        await fresh.aclose()
                        if serial != before:
                            break
                        await trio.sleep(0.05)
                # The connection made before the reload still gets deltas.
                await trio.to_thread.run_sync(cluster.put, "after-reload", "x")
                with trio.fail_after(20):
                    while True:
                        message = await watcher.receive()
                        if isinstance(message, Deltas) and any(
                            c.key == "after-reload" for d in message.deltas for c in d.changes
                        ):
                            break
            finally:
                await watcher.aclose()

        trio.run(scenario)
    finally:
        assert node.stop() == 0
    assert "TLS and auth material reloaded" in node.log_path.read_text()
