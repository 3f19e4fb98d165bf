"""`felix broker-agent` as a real process against a real secure 3-node `felix serve`
cluster (felix/testing/processes.py), all over loopback TLS.

Two agents: broker 5 takes its id from its pod name (``POD_NAME=felix-broker-4``) and
authenticates with a client certificate whose path holds ``{node_id}``; broker 7 is
given ``--node-id`` and a broker token from a file.  Broker 5 starts before the
control plane: its ``/livez`` passes and its ``/readyz`` fails with the reason until
the cluster is up.  Then: both ready, registered with their address and rack; a stream
is created and every ownership event is logged and counted in ``/metrics``; the node
broker 5 is connected to is stopped and it moves to another node, resuming from its
version (one snapshot, no resync); SIGTERM makes each report itself down and exit 0.
A third agent with an unknown token exits 1 at once, saying its credentials were refused.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from felix.metadata.tokens import format_token
from felix.security.certs import issue
from felix.testing.processes import ProcessCluster, http_bytes
from tests.server.test_secure_by_default import FELIX, felix

DEADLINE_S = 60.0  # a bound on each wait, not the claim


def until(what: str, predicate: Callable[[], bool], logs: Callable[[], str] = str) -> None:
    """Poll (bounded) a condition the processes reach by themselves."""
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, f"{what}\n{logs()[-4000:]}"
        time.sleep(0.05)


class Agent:
    def __init__(self, root: Path, name: str, args: list[str], env: dict[str, str]) -> None:
        self.log = root / f"{name}.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("FELIX_", "POD_"))}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*FELIX, "broker-agent", "--listen-ops", "127.0.0.1:0", *args],
                stdout=out, stderr=subprocess.STDOUT, env={**clean, **env},
            )  # fmt: skip
        self.port = 0

    def text(self) -> str:
        return self.log.read_text()

    def wait_ops(self) -> None:
        def bound() -> bool:
            found = re.search(r"ops on http://127\.0\.0\.1:(\d+)", self.text())
            assert self.proc.poll() is None, self.text()
            if found:
                self.port = int(found[1])
            return found is not None

        until("the agent's ops port", bound, self.text)

    def get(self, path: str) -> tuple[int, str]:
        code, body = http_bytes("GET", f"127.0.0.1:{self.port}", path)
        return code, body.decode()

    def samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """Every sample of series ``name`` in ``/metrics``: (labels, value)."""
        found = []
        for line in self.get("/metrics")[1].splitlines():
            match = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)", line)
            if match and match[1] == name:
                labels = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
                found.append((labels, float(match[3])))
        return found

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of ``/metrics`` (None: no such series)."""
        values = [v for have, v in self.samples(name) if have == labels]
        return values[0] if values else None

    def connected(self) -> str:
        found = self.samples("felix_broker_connected_endpoint")
        return found[0][0]["endpoint"] if found else ""

    def stop(self) -> int:
        """SIGTERM by PID; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@contextmanager
def agents(*made: Agent) -> Iterator[None]:
    try:
        yield
    finally:
        for agent in made:
            if agent.proc.poll() is None:
                agent.proc.kill()  # only if a failed test left it running
                agent.proc.wait()


class Ctl:
    def __init__(self, cluster: ProcessCluster) -> None:
        self.cluster = cluster
        assert cluster.creds.ca is not None
        self.flags = [
            "--endpoints", ",".join(f"127.0.0.1:{n.client_port}" for n in cluster.nodes.values()),
            "--token", f"@{cluster.root / 'admin-token'}", "--ca", str(cluster.creds.ca),
            "-o", "json",
        ]  # fmt: skip

    def __call__(self, *args: str) -> Any:
        done = felix("ctl", *args, *self.flags, cwd=self.cluster.root)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return json.loads(done.stdout) if done.stdout.strip().startswith(("{", "[")) else None

    def nodes(self) -> dict[int, dict[str, Any]]:
        return {n["id"]: n for n in self("node", "list")}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    procs = ProcessCluster(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()  # every node, by PID


def test_agents_register_follow_fail_over_and_report_down(cluster: ProcessCluster) -> None:
    root, tls = cluster.root, cluster.root / "tls"
    issue(tls, "broker", 5)
    eps = ",".join(f"127.0.0.1:{n.client_port}" for n in cluster.nodes.values())
    ca = str(tls / "ca.crt")
    five = Agent(root, "broker-5", [
        "--endpoints", eps, "--pod-identity", "--ca", ca,
        "--cert", str(tls / "broker-{node_id}.crt"), "--key", str(tls / "broker-{node_id}.key"),
        "--address", "10.9.0.5:9092", "--copy-s", "0",
    ], {"POD_NAME": "felix-broker-4", "FELIX_RACK": "r1"})  # fmt: skip
    with agents(five):
        five.wait_ops()
        assert five.get("/livez")[0] == 200
        code, body = five.get("/readyz")  # no control plane yet: no view
        assert code == 503 and "waiting for a digest-checked snapshot" in body, body
        assert five.metric("felix_broker_ready") == 0

        cluster.start_all()
        cluster.wait_for_leader()
        token_file = root / "broker-7.token"
        creds = trio.run(cluster.broker_credentials, [7])
        token_file.write_text(creds[7].token + "\n")
        seven = Agent(root, "broker-7", [
            "--endpoints", eps, "--node-id", "7", "--ca", ca,
            "--token", f"@{root / 'broker-{node_id}.token'}",
            "--address", "10.9.0.7:9092", "--rack", "r2", "--copy-s", "0",
        ], {})  # fmt: skip
        (root / "bogus.token").write_text(format_token("0" * 16, b"x" * 32) + "\n")
        bogus = Agent(root, "broker-8", [
            "--endpoints", eps, "--node-id", "8", "--ca", ca, "--token", f"@{root / 'bogus.token'}",
        ], {})  # fmt: skip
        with agents(seven, bogus):
            assert bogus.proc.wait(30) == 1  # refused credentials: no retry loop
            assert "broker 8: credentials refused" in bogus.text()
            assert "Traceback" not in bogus.text()
            seven.wait_ops()
            ctl = Ctl(cluster)
            for agent in (five, seven):
                until("ready", lambda a=agent: a.get("/readyz")[0] == 200, agent.text)  # type: ignore[misc]
                assert "complete, digest-checked view at version" in agent.get("/readyz")[1]
            until("both up", lambda: {5: "up", 7: "up"}.items() <= {
                n: v["state"] for n, v in ctl.nodes().items()}.items())  # fmt: skip
            nodes = ctl.nodes()
            assert (nodes[5]["address"], nodes[5]["rack"]) == ("10.9.0.5:9092", "r1")
            assert (nodes[7]["address"], nodes[7]["rack"]) == ("10.9.0.7:9092", "r2")

            ctl("tenant", "set", "acme")
            ctl("stream", "create", "orders", "--shards", "4", "--replication-factor", "2",
                "--tenant", "acme")  # fmt: skip
            shards = ctl("shard", "list")
            assert len(shards) == 4 and all(sorted(s["replicas"]) == [5, 7] for s in shards)
            for agent, node in ((five, 5), (seven, 7)):
                for index in range(4):  # one line per event, with the shard and its role
                    until(
                        f"broker {node} logs orders/{index}",
                        lambda a=agent, i=index, n=node: (
                            f"broker {n}: start owning orders/{i} as"  # type: ignore[misc]
                            in a.text()
                        ),
                        agent.text,
                    )
                assert agent.metric("felix_broker_ownership_events_total", node=str(node)) == 4
                owned = sum(
                    agent.metric("felix_broker_owned_shards", node=str(node), role=r) or 0
                    for r in ("leader", "replica")
                )
                assert owned == 4
            version = ctl("snapshot")["version"]
            until(
                "broker 5 at the stream's version",
                lambda: (five.metric("felix_broker_applied_version", node="5") or 0) >= version,
                five.text,
            )

            # Failover: stop the node broker 5 is connected to.
            endpoint = five.connected()
            assert endpoint, five.get("/metrics")[1]
            victim = next(
                n for n in cluster.nodes.values() if endpoint.endswith(f":{n.client_port}")
            )
            assert victim.stop() == 0
            until(
                "broker 5 on another node",
                lambda: five.connected() not in ("", endpoint),
                five.text,
            )
            ctl("config", "set", "streams_max", "777")
            snapshot = ctl("snapshot")
            until(
                "broker 5 applied the write",
                lambda: (
                    (five.metric("felix_broker_applied_version", node="5") or 0)
                    >= snapshot["version"]
                ),
                five.text,
            )
            assert (five.metric("felix_broker_reconnects_total", node="5") or 0) >= 1
            assert five.metric("felix_broker_snapshots_total", node="5") == 1  # resumed
            assert five.samples("felix_broker_resyncs_total") == []  # none, for any reason
            assert re.search(
                rf"broker 5: now via \S+ \(was {re.escape(endpoint)}\), resumed", five.text()
            )
            assert five.get("/readyz")[0] == 200
            victim.start()

            for agent, node in ((five, 5), (seven, 7)):
                assert agent.stop() == 0, agent.text()
                assert f"broker {node}: reported itself down at version" in agent.text()
                assert f"broker {node}: stopped" in agent.text()
            until("both down", lambda: {5: "down", 7: "down"}.items() <= {
                n: v["state"] for n, v in ctl.nodes().items()}.items())  # fmt: skip
