"""`felix broker-agent`'s flags, identity and ops endpoint, without a control plane.

* A node id from a StatefulSet pod name (``POD_NAME``, else the hostname): ordinal + 1;
  a name without an ordinal is a clear error, exit 2, from the real command.
* Bad flags (no id, both ids, a certificate without its key or a CA, a token and a
  certificate, an unreadable token file, a bad address) exit 2 naming the flag.
* ``--prefer-endpoints`` (observers first): parsed, checked and kept once, for
  ``felix broker-agent`` and ``felix brokers``; an example broker given them connects
  to one of them (a real in-process control plane).
* An ops port that is taken: exit 1, saying so.
* The ops endpoint on a real socket: ``/livez``, ``/readyz`` (503 with the reason while
  the broker has no view), ``/metrics``; 404, 405 and 400 for anything else.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
from pathlib import Path

import pytest
import trio
from prometheus_client import CollectorRegistry

from felix.broker.agent import add_arguments, settings_from
from felix.broker.agent_identity import IdentityError, expand, node_id_from_pod
from felix.broker.agent_ops import AgentMetrics, AgentOps
from felix.broker.example_broker import BrokerSettings, ExampleBroker
from tests.broker.harness import control_plane, wait_for
from tests.server.test_secure_by_default import FELIX


@pytest.mark.parametrize(
    ("env", "hostname", "node_id"),
    [
        ({"POD_NAME": "felix-broker-4"}, "ignored", 5),
        ({"POD_NAME": "felix-broker-0"}, "ignored", 1),
        ({}, "felix-broker-11", 12),
        ({}, "kafka-2.kafka-headless.prod.svc.cluster.local", 3),
        ({"POD_NAME": ""}, "b-9", 10),
    ],
)
def test_node_id_is_the_pod_ordinal_plus_one(
    env: dict[str, str], hostname: str, node_id: int
) -> None:
    assert node_id_from_pod(env, hostname) == node_id


@pytest.mark.parametrize(
    "name", ["felix-broker", "felix-broker-", "felix-broker-04", "4", "felix_broker-1", "-1"]
)
def test_a_pod_name_without_an_ordinal_is_refused(name: str) -> None:
    with pytest.raises(IdentityError, match="not a StatefulSet pod name"):
        node_id_from_pod({"POD_NAME": name})


def test_paths_take_only_the_node_id() -> None:
    assert expand("/etc/felix/broker-{node_id}.crt", 5) == Path("/etc/felix/broker-5.crt")
    with pytest.raises(IdentityError, match="only \\{node_id\\}"):
        expand("/etc/{pod}.crt", 5)


def agent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FELIX_", "POD_"))}
    return subprocess.run(
        [*FELIX, "broker-agent", *args], env={**clean, **(env or {})},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_a_bad_pod_name_exits_2_with_a_clear_error() -> None:
    done = agent(
        "--endpoints", "127.0.0.1:1", "--pod-identity", env={"POD_NAME": "felix-broker"}
    )  # fmt: skip
    assert done.returncode == 2
    assert "POD_NAME is 'felix-broker', not a StatefulSet pod name" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "one of the arguments --node-id --pod-identity is required"),
        (["--node-id", "1", "--pod-identity"], "not allowed with argument"),
        (["--node-id", "0"], "--node-id must be >= 1"),
        (["--node-id", "x"], "invalid int value"),
        (["--node-id", "1", "--cert", "c.crt"], "--cert and --key go together"),
        (["--node-id", "1", "--cert", "c.crt", "--key", "c.key"], "needs --ca"),
        (["--node-id", "1", "--cert", "c", "--key", "k", "--token", "t"], "alternatives"),
        (["--node-id", "1", "--token", "@/nonexistent/t-{node_id}"], "/nonexistent/t-1"),
        (["--node-id", "1", "--ca", "/nonexistent/ca.crt"], "/nonexistent/ca.crt: no such file"),
        (["--node-id", "1", "--address", "nohost"], "--address: endpoint 'nohost'"),
        (["--node-id", "1", "--listen-ops", "127.0.0.1:99999"], "out of range"),
        (["--node-id", "1", "--copy-s", "-1"], "--copy-s must be within"),
        (["--node-id", "1", "--prefer-endpoints", "obs"], "--prefer-endpoints: endpoint 'obs'"),
        (["--node-id", "1", "--prefer-endpoints", "o:1,o:0"], "'o:0': port 0 is not within"),
        (["--node-id", "1", "--prefer-endpoints", "[]:1"], "'[]:1' has no host"),
    ],
)
def test_bad_flags_exit_2_naming_the_problem(args: list[str], message: str) -> None:
    done = agent("--endpoints", "127.0.0.1:1", *args)
    assert done.returncode == 2, done
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_prefer_endpoints_are_parsed_checked_and_kept_once() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--endpoints", "v-0:7000,v-1:7000", "--node-id", "4", "--address", "b:9092",
         "--prefer-endpoints", " o-0:7000, o-1:7000,,o-0:7000,v-0:7000"]
    )  # fmt: skip
    settings, _ = settings_from(args, {})
    assert settings.endpoints == ("v-0:7000", "v-1:7000")
    assert settings.preferred_endpoints == ("o-0:7000", "o-1:7000", "v-0:7000")
    args.prefer_endpoints = ""
    assert settings_from(args, {})[0].preferred_endpoints == ()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prefer-endpoints", "obs-0"], "--prefer-endpoints: endpoint 'obs-0' is not"),
        (["--endpoints", "v:99999"], "--endpoints: endpoint 'v:99999': port 99999"),
    ],
)
def test_felix_brokers_refuses_bad_endpoint_lists(args: list[str], message: str) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("FELIX_", "POD_"))}
    done = subprocess.run(
        [*FELIX, "brokers", "1-2", "--endpoints", "127.0.0.1:1", *args], env=clean,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done
    assert message in done.stderr and "Traceback" not in done.stderr, done.stderr


async def test_an_example_broker_prefers_the_endpoints_it_is_given() -> None:
    async with control_plane(seed=8) as cp:
        preferred = cp.endpoints[2]  # node 3 stands in for an observer
        settings = BrokerSettings(
            endpoints=tuple(cp.endpoints), node_id=7, address="10.0.0.7:9092",
            preferred_endpoints=(preferred,),
        )  # fmt: skip
        broker = ExampleBroker(settings, lambda _: None)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(broker.run, stop)
            await wait_for(lambda: broker.readiness()[0])
            assert broker.view is not None and broker.view.endpoint == preferred
            stop.set()


def test_a_taken_ops_port_exits_1_saying_so() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = agent("--endpoints", "127.0.0.1:1", "--node-id", "1",
                     "--listen-ops", f"127.0.0.1:{port}")  # fmt: skip
    assert done.returncode == 1
    assert "broker 1: cannot start:" in done.stderr and "Traceback" not in done.stderr


def test_the_module_runs_as_python_m() -> None:
    done = subprocess.run(
        [FELIX[0], "-m", "felix.broker.agent", "--endpoints", "127.0.0.1:1",
         "--pod-identity"], env={"POD_NAME": "nope", "PATH": os.environ.get("PATH", "")},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "'nope', not a StatefulSet pod name" in done.stderr


async def fetch(port: int, request: bytes) -> tuple[int, str]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body.decode()


async def test_ops_endpoint_answers_probes_and_metrics_on_a_real_socket() -> None:
    settings = BrokerSettings(endpoints=("127.0.0.1:1",), node_id=3, address="10.0.0.3:9092")
    broker = ExampleBroker(settings, lambda _: None)
    registry = CollectorRegistry(auto_describe=True)
    broker.metrics = AgentMetrics(registry, broker.readiness)
    ops = AgentOps(lambda: (True, "event loop answers"), broker.readiness, registry)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(ops.run, "127.0.0.1", 0)
        get = b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n"
        assert await fetch(port, get % b"/livez") == (200, "ok: event loop answers\n")
        code, body = await fetch(port, get % b"/readyz?verbose")
        assert code == 503 and "waiting for a digest-checked snapshot" in body
        code, body = await fetch(port, get % b"/metrics")
        assert code == 200 and "felix_broker_ready 0.0" in body
        assert "# TYPE felix_broker_ownership_events_total counter" in body
        broker.stopping = True
        assert await fetch(port, get % b"/readyz") == (503, "not ok: shutting down\n")
        assert (await fetch(port, get % b"/nope"))[0] == 404
        assert (await fetch(port, b"POST /readyz HTTP/1.1\r\n\r\n"))[0] == 405
        assert (await fetch(port, b"garbage\r\n\r\n"))[0] == 400
        nursery.cancel_scope.cancel()
