"""``felix ctl`` against an in-process 3-node metadata cluster on loopback.

The async command functions run inside the test's Trio loop (each returns the exit code
and the text the CLI would print); the synchronous entry point (`felix.cli.main`, one
`trio.run` per call) is exercised against a cluster running in a background thread.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import trio

from felix import ctl
from felix.cli import build_parser, main
from felix.metadata.config import CONFIG_SPECS
from felix.proto.client_messages import (
    CLIENT_TO_SERVER,
    SERVER_TO_CLIENT,
    Error,
    ErrorCode,
    GetSnapshot,
    WriteRequest,
)
from felix.server.graph import MetadataServices
from felix.server.metadata_sm import MetadataStateMachine
from felix.server.raft_node import NodeSettings
from felix.server.ws_server import WsConnection, serve_ws
from felix.testing.cluster import TrioCluster


@dataclass
class Cluster:
    trio_cluster: TrioCluster
    ports: dict[int, int]
    services: dict[int, MetadataServices]

    async def leader(self) -> int:
        return (await self.trio_cluster.wait_for_leader()).node_id

    async def endpoints(self, *, follower_first: bool = False) -> str:
        order = sorted(self.ports)
        if follower_first:
            leader = await self.leader()
            order = [n for n in order if n != leader] + [leader]
        return ",".join(f"127.0.0.1:{self.ports[n]}" for n in order)


async def start_cluster(nursery: trio.Nursery, seed: int = 5) -> Cluster:
    settings = NodeSettings(tick_s=0.01, snapshot_in_thread=False)
    cluster = TrioCluster(
        nursery, [1, 2, 3], seed=seed, settings=settings, state_machine_factory=MetadataStateMachine
    )
    ports: dict[int, int] = {}
    served: dict[int, MetadataServices] = {}
    for node_id in (1, 2, 3):
        _, served[node_id] = await cluster.start_metadata(node_id)
        ports[node_id] = await nursery.start(served[node_id].run, "127.0.0.1", 0)
    await cluster.wait_for_leader()
    return Cluster(cluster, ports, served)


@pytest.fixture
async def cluster(nursery: trio.Nursery) -> AsyncIterator[Cluster]:
    yield await start_cluster(nursery)


def parse(argv: list[str], endpoints: str) -> argparse.Namespace:
    return build_parser().parse_args(["ctl", *argv, "--endpoints", endpoints])


async def run(cluster: Cluster, *argv: str, endpoints: str | None = None) -> tuple[int, str]:
    args = parse(list(argv), endpoints or await cluster.endpoints())
    code, text = await args.ctl_core(args)
    assert "Traceback" not in text
    return code, text


async def ok(cluster: Cluster, *argv: str, endpoints: str | None = None) -> str:
    code, text = await run(cluster, *argv, endpoints=endpoints)
    assert code == 0, text
    return text


async def ok_json(cluster: Cluster, *argv: str) -> Any:
    return json.loads(await ok(cluster, *argv, "-o", "json"))


async def live_nodes(cluster: Cluster, count: int = 3) -> None:
    for n in range(1, count + 1):
        await ok(cluster, "node", "register", str(n), "--address", f"10.0.0.{n}:9000")
        await ok(cluster, "node", "health", str(n), "up")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- streams ------------------------------------------------------------------------


async def test_stream_create_list_update_delete(cluster: Cluster) -> None:
    await ok(cluster, "tenant", "set", "acme")
    await live_nodes(cluster)
    text = await ok(cluster, "stream", "create", "orders", "--shards", "4", "--tenant", "acme")
    assert text.startswith("ok: create_stream applied at version ")
    create_clicks = "stream create clicks --shards 2 --tenant acme"
    created = await ok_json(
        cluster, *create_clicks.split(), "--replication-factor", "2", "--retention-ms", "60000"
    )
    assert created["command"] == "create_stream" and created["version"] > int(text.split()[-1])

    table = await ok(cluster, "stream", "list")
    lines = table.splitlines()
    assert lines[0].split() == ["NAME", "TENANT", "SHARDS", "REPLICATION_FACTOR", "RETENTION_MS"]
    assert lines[1].split() == ["clicks", "acme", "2", "2", "60000"]
    retention_default = CONFIG_SPECS["retention_ms_default"].default
    assert lines[2].split() == ["orders", "acme", "4", "3", str(retention_default)]
    streams = await ok_json(cluster, "stream", "list")
    assert [s["name"] for s in streams] == ["clicks", "orders"]
    assert streams[1] == {
        "name": "orders",
        "tenant": "acme",
        "shards": 4,
        "replication_factor": 3,
        "retention_ms": retention_default,
    }

    await ok(cluster, "stream", "update", "orders", "--shards", "6", "--retention-ms", "5000")
    shards = await ok_json(cluster, "shard", "list", "--stream", "orders")
    assert [s["index"] for s in shards] == list(range(6))
    assert all(len(s["replicas"]) == 3 and s["leader"] in s["replicas"] for s in shards)
    assert "orders/5" in await ok(cluster, "shard", "list")

    code, text = await run(cluster, "stream", "update", "orders")
    assert code == 2 and "nothing to change" in text
    code, text = await run(cluster, "stream", "update", "orders", "--shards", "2")
    assert code == 1 and text.startswith("felix: rejected: ")

    await ok(cluster, "stream", "delete", "clicks")
    assert [s["name"] for s in await ok_json(cluster, "stream", "list")] == ["orders"]
    code, text = await run(cluster, "stream", "delete", "clicks")
    assert code == 1 and text.startswith("felix: rejected: ") and "clicks" in text


async def test_rejected_write_prints_the_servers_detail(cluster: Cluster) -> None:
    code, text = await run(cluster, "stream", "create", "x", "--shards", "1", "--tenant", "nobody")
    assert code == 1
    assert text.startswith("felix: rejected: ") and "nobody" in text
    assert "\n" not in text
    code, text = await run(
        cluster, "stream", "create", "bad name", "--shards", "1", "--tenant", "a"
    )
    assert code == 1 and text.startswith("felix: bad_request: ")
    assert await ok(cluster, "stream", "list") == "no streams"


# --- config -------------------------------------------------------------------------


async def test_config_get_and_set(cluster: Cluster) -> None:
    rows = await ok_json(cluster, "config", "get")
    assert [r["name"] for r in rows] == list(CONFIG_SPECS)
    assert all(not r["set"] and r["value"] == r["default"] for r in rows)
    table = await ok(cluster, "config", "get")
    assert table.splitlines()[0].split() == ["NAME", "VALUE", "DEFAULT", "SOURCE"]
    assert any(
        line.split() == ["streams_max", "10000", "10000", "default"] for line in table.splitlines()
    )

    await ok(cluster, "config", "set", "streams_max", "5")
    await ok(cluster, "config", "set", "rack_aware_placement", "false")
    assert await ok_json(cluster, "config", "get", "streams_max") == {
        "name": "streams_max",
        "value": 5,
        "default": 10_000,
        "set": True,
    }
    rack = await ok_json(cluster, "config", "get", "rack_aware_placement")
    assert rack["value"] is False and rack["set"]
    assert (await ok(cluster, "config", "get", "streams_max")).splitlines()[1].split() == [
        "streams_max",
        "5",
        "10000",
        "set",
    ]

    # Values are parsed by the key's type before anything is sent ...
    code, text = await run(cluster, "config", "set", "streams_max", "lots")
    assert (code, text) == (1, "felix: bad_request: config streams_max takes an int, got 'lots'")
    code, text = await run(cluster, "config", "set", "rack_aware_placement", "maybe")
    assert code == 1 and text.startswith("felix: bad_request: ") and "bool" in text
    code, text = await run(cluster, "config", "set", "no_such_key", "1")
    assert code == 1 and "unknown config key 'no_such_key'" in text
    code, text = await run(cluster, "config", "get", "no_such_key")
    assert code == 1 and "unknown config key" in text
    # ... and ranges are the server's to check.
    code, text = await run(cluster, "config", "set", "streams_max", "-1")
    assert code == 1 and text.startswith("felix: rejected: ") and "out of range" in text

    await ok(cluster, "config", "unset", "streams_max")
    restored = await ok_json(cluster, "config", "get", "streams_max")
    assert restored == {"name": "streams_max", "value": 10_000, "default": 10_000, "set": False}


# --- nodes and tenants --------------------------------------------------------------


async def test_node_register_drain_list(cluster: Cluster) -> None:
    assert await ok(cluster, "node", "list") == "no nodes"
    await ok(cluster, "node", "register", "7", "--address", "10.0.0.7:9000", "--rack", "r1")
    await ok(cluster, "node", "register", "10", "--address", "10.0.0.10:9000")
    nodes = await ok_json(cluster, "node", "list")
    assert [n["id"] for n in nodes] == [7, 10]  # numeric order, not text order
    assert nodes[0]["address"] == "10.0.0.7:9000" and nodes[0]["rack"] == "r1"
    assert nodes[0]["state"] == "registered" and nodes[0]["draining"] is False

    await ok(cluster, "node", "health", "7", "up", "--epoch", str(nodes[0]["epoch"]))
    await ok(cluster, "node", "drain", "7")
    table = await ok(cluster, "node", "list")
    header, row7, row10 = table.splitlines()
    assert header.split()[:6] == ["ID", "ADDRESS", "RACK", "STATE", "EPOCH", "DRAINING"]
    assert row7.split()[:4] == ["7", "10.0.0.7:9000", "r1", "up"] and "true" in row7.split()
    assert row10.split()[:2] == ["10", "10.0.0.10:9000"]
    await ok(cluster, "node", "undrain", "7")
    assert (await ok_json(cluster, "node", "list"))[0]["draining"] is False

    code, text = await run(cluster, "node", "drain", "99")
    assert code == 1 and text.startswith("felix: ") and "99" in text
    code, text = await run(cluster, "node", "health", "7", "down", "--epoch", "1")
    assert code == 1 and text.startswith("felix: conflict: ")


async def test_tenant_set_quota_list(cluster: Cluster) -> None:
    await ok(cluster, "tenant", "set", "acme", "--display-name", "Acme Corp")
    await ok(cluster, "tenant", "set", "zeta")
    await ok(cluster, "tenant", "quota", "acme", "--streams-max", "1", "--bytes-per-s", "1000")
    tenants = await ok_json(cluster, "tenant", "list")
    assert tenants[0] == {
        "name": "acme",
        "display_name": "Acme Corp",
        "streams_max": 1,
        "shards_max": None,
        "bytes_per_s": 1000,
    }
    table = await ok(cluster, "tenant", "list")
    assert table.splitlines()[0].split() == [
        "NAME",
        "DISPLAY_NAME",
        "STREAMS_MAX",
        "SHARDS_MAX",
        "BYTES_PER_S",
    ]
    assert table.splitlines()[2].split() == ["zeta", "-", "-", "-"]  # empty name, no quotas

    # The quota is enforced by the cluster, and the ctl reports the refusal.
    await live_nodes(cluster, 1)
    create = "stream create {} --shards 1 --tenant acme --replication-factor 1"
    await ok(cluster, *create.format("a").split())
    code, text = await run(cluster, *create.format("b").split())
    assert code == 1 and text.startswith("felix: rejected: ")

    code, text = await run(cluster, "tenant", "quota", "nobody", "--streams-max", "1")
    assert code == 1 and "nobody" in text
    await ok(cluster, "tenant", "remove", "zeta")
    assert [t["name"] for t in await ok_json(cluster, "tenant", "list")] == ["acme"]


# --- compare-and-set, endpoints, retries --------------------------------------------


async def test_expected_version_compare_and_set(cluster: Cluster) -> None:
    version = (await ok_json(cluster, "snapshot"))["version"]
    first = await ok_json(cluster, "tenant", "set", "a", "--expected-version", str(version))
    assert first["version"] > version
    code, text = await run(cluster, "tenant", "set", "b", "--expected-version", str(version))
    assert code == 1 and text.startswith("felix: conflict: ")
    names = [t["name"] for t in await ok_json(cluster, "tenant", "list")]
    assert names == ["a"]


async def test_not_leader_moves_on_to_the_next_endpoint(
    cluster: Cluster, nursery: trio.Nursery
) -> None:
    """A node that says ``not_leader`` (here a stub that always does) is skipped."""
    asked: list[str] = []

    async def never_the_leader(conn: WsConnection) -> None:
        while True:
            message = CLIENT_TO_SERVER.decode(await conn.receive())
            asked.append(type(message).__name__)
            assert isinstance(message, (WriteRequest, GetSnapshot))
            reply = Error(
                ErrorCode.NOT_LEADER, "not the leader; the leader is node 3", message.request_id
            )
            conn.send_message(SERVER_TO_CLIENT.encode(reply))

    stub = await nursery.start(
        lambda task_status: serve_ws(
            never_the_leader, "127.0.0.1", 0, backlog_bytes_max=1 << 20, task_status=task_status
        )
    )
    endpoints = f"127.0.0.1:{stub}," + await cluster.endpoints()
    text = await ok(cluster, "tenant", "set", "acme", endpoints=endpoints)
    assert text.startswith("ok: set_tenant applied at version")
    assert "acme" in await ok(cluster, "tenant", "list", endpoints=endpoints)
    assert asked == ["WriteRequest", "GetSnapshot"]

    # Real followers first: they either refuse (and the ctl moves on) or forward.
    endpoints = await cluster.endpoints(follower_first=True)
    await ok(cluster, "tenant", "set", "beta", endpoints=endpoints)
    assert "beta" in await ok(cluster, "tenant", "list", endpoints=endpoints)

    # Only ever refused: the write is given up after --timeout, saying why.
    code, text = await run(
        cluster, "tenant", "set", "c", "--timeout", "0.5", endpoints=f"127.0.0.1:{stub}"
    )
    assert code == 1 and text.startswith("felix: timeout: ")
    assert "not_leader: not the leader; the leader is node 3" in text


async def test_unreachable_endpoints_fail_cleanly(cluster: Cluster) -> None:
    dead = f"127.0.0.1:{free_port()}"
    code, text = await run(cluster, "stream", "list", endpoints=dead)
    assert code == 1 and text.startswith("felix: no endpoint reachable (")
    assert dead in text and "connection refused" in text
    code, text = await run(cluster, "tenant", "set", "a", endpoints=dead)
    assert code == 1 and "no endpoint reachable" in text
    code, text = await run(cluster, "watch", endpoints=dead)
    assert code == 1 and "no endpoint reachable" in text
    # A dead endpoint before live ones is just skipped.
    await ok(cluster, "tenant", "set", "a", endpoints=dead + "," + await cluster.endpoints())
    code, text = await run(cluster, "node", "list", endpoints="nonsense")
    assert code == 2 and text.startswith("felix: --endpoints: ")


# --- snapshot and watch -------------------------------------------------------------


async def test_snapshot_json_and_table(cluster: Cluster) -> None:
    await ok(cluster, "tenant", "set", "acme")
    await live_nodes(cluster)
    await ok(cluster, "stream", "create", "s", "--shards", "2", "--tenant", "acme")
    await ok(cluster, "config", "set", "streams_max", "50")
    snap = await ok_json(cluster, "snapshot")
    assert set(snap) == {"version", "digest", "endpoint", "records"}
    records = snap["records"]
    assert list(records) == ["config", "tenant", "node", "stream", "shard"]
    assert records["config"] == {"streams_max": {"name": "streams_max", "value": 50}}
    assert list(records["node"]) == ["1", "2", "3"]
    assert records["stream"]["s"]["shards"] == 2
    assert sorted(records["shard"]) == ["s/0", "s/1"]
    assert len(bytes.fromhex(snap["digest"])) > 0

    serializable = await ok_json(cluster, "snapshot", "--consistency", "s")
    assert serializable["version"] >= snap["version"] - 1

    table = await ok(cluster, "snapshot")
    assert table.startswith(f"version {snap['version']}")
    for heading in ("config (1)", "tenant (1)", "node (3)", "stream (1)", "shard (2)"):
        assert f"\n\n{heading}\n" in table


async def test_watch_count_and_from_version(cluster: Cluster, nursery: trio.Nursery) -> None:
    lines: list[str] = []
    done = trio.Event()
    outcome: list[tuple[int, str]] = []
    args = parse(["watch", "--count", "3"], await cluster.endpoints())

    async def watch() -> None:
        outcome.append(await ctl.cmd_watch(args, lines.append))
        done.set()

    nursery.start_soon(watch)
    with trio.fail_after(10):
        while not lines:
            await trio.sleep(0.01)
    assert lines[0].startswith("# snapshot version=")
    first = (await ok_json(cluster, "tenant", "set", "acme"))["version"]
    await ok(cluster, "config", "set", "streams_max", "9")
    await ok(cluster, "tenant", "set", "acme", "--display-name", "Acme")
    await ok(cluster, "tenant", "set", "never-seen")  # after --count: not printed
    with trio.fail_after(10):
        await done.wait()
    assert outcome == [(0, "")]  # everything went to emit
    changes = lines[1:]
    assert len(changes) == 3
    assert (
        changes[0] == f'{first}  PUT     tenant acme  {{"name":"acme","display_name":"",'
        '"streams_max":null,"shards_max":null,"bytes_per_s":null}'
    )
    assert changes[1].split()[1:4] == ["PUT", "config", "streams_max"]
    assert changes[2].split()[1:4] == ["PUT", "tenant", "acme"] and '"Acme"' in changes[2]

    # Replaying from a version: the deltas after it, as JSON lines, no snapshot.
    code, text = await run(
        cluster, "watch", "--from-version", str(first - 1), "--count", "2", "-o", "json"
    )
    assert code == 0
    events = [json.loads(line) for line in text.splitlines()]
    assert [(e["version"], e["kind"], e["key"]) for e in events] == [
        (first, "tenant", "acme"),
        (events[1]["version"], "config", "streams_max"),
    ]
    assert events[1]["value"] == {"name": "streams_max", "value": 9}

    # A delete is a DELETE line.
    await ok(cluster, "config", "unset", "streams_max")
    version = (await ok_json(cluster, "snapshot"))["version"]
    code, text = await run(cluster, "watch", "--from-version", str(version - 1), "--count", "1")
    assert (code, text) == (0, f"{version}  DELETE  config streams_max")


# --- the real entry point -----------------------------------------------------------


@pytest.fixture
def threaded_cluster() -> Iterator[str]:
    """A cluster in its own thread and Trio loop, for `felix.cli.main` (which runs
    `trio.run` itself); yields its client endpoints."""
    started = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            cluster = await start_cluster(nursery, seed=11)
            box["endpoints"] = await cluster.endpoints()
            box["stop"] = trio.lowlevel.current_trio_token(), nursery.cancel_scope.cancel
            started.set()

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    assert started.wait(30)
    yield box["endpoints"]
    token, cancel = box["stop"]
    trio.from_thread.run_sync(cancel, trio_token=token)
    thread.join(10)


def test_main_runs_ctl_commands(threaded_cluster: str, capsys: pytest.CaptureFixture[str]) -> None:
    eps = ["--endpoints", threaded_cluster]
    assert main(["ctl", "tenant", "set", "acme", *eps]) == 0
    assert capsys.readouterr().out.startswith("ok: set_tenant applied at version ")
    assert main(["ctl", "tenant", "list", "-o", "json", *eps]) == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "acme"
    assert main(["ctl", "stream", "create", "s", "--shards", "1", "--tenant", "x", *eps]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("felix: rejected: ") and "Traceback" not in captured.err
    assert main(["ctl", "watch", "--from-version", "0", "--count", "1", *eps]) == 0
    assert "PUT     tenant acme" in capsys.readouterr().out


def test_main_without_a_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"127.0.0.1:{free_port()}"
    assert main(["ctl", "config", "get", "--endpoints", dead]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("felix: no endpoint reachable") and captured.out == ""
    assert main(["ctl", "stream", "update", "s", "--endpoints", dead]) == 2
    assert "nothing to change" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["ctl", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("snapshot", "watch", "stream", "node", "shard", "config", "tenant"):
        assert command in out


def test_watch_exits_0_on_ctrl_c(threaded_cluster: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "felix.cli", "ctl", "watch", "--endpoints", threaded_cluster],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("# snapshot version=")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "Traceback" not in err


# --- replicas and rebalancing ------------------------------------------------------------


async def test_rebalance_plan_run_status_and_shard_moves(cluster: Cluster) -> None:
    """Four brokers on a 3-replica stream, then two more join: ``rebalance plan`` shows
    the leader's planner steps with reasons (nothing applied), ``run`` proposes them,
    ``status`` and ``shard list --reassigning`` show the moves in flight; a manual move
    and its cancel; the filters; RF change; decommission refused then accepted."""
    await ok(cluster, "config", "set", "auto_rebalance", "false")  # the test drives it
    await live_nodes(cluster, 4)
    await ok(cluster, "tenant", "set", "acme")
    await ok(cluster, "stream", "create", "s", "--shards", "8", "--tenant", "acme",
             "--replication-factor", "3")  # fmt: skip
    for n in (5, 6):
        await ok(cluster, "node", "register", str(n), "--address", f"10.0.0.{n}:9000")
        await ok(cluster, "node", "health", str(n), "up")
    before = await ok_json(cluster, "snapshot")
    planned = await ok_json(cluster, "rebalance", "plan")
    moves = [s for s in planned["steps"] if s["step"] == "move"]
    assert moves and all(s["add"] in (5, 6) and s["reason"].startswith("balance") for s in moves)
    assert (await ok_json(cluster, "snapshot"))["version"] == before["version"]  # a plan only
    text = await ok(cluster, "rebalance", "plan")
    assert "balance: broker" in text and "STEP" in text
    leader = await cluster.leader()
    follower = next(n for n in cluster.ports if n != leader)
    passes = {n: s.rebalancer.stats.passes for n, s in cluster.services.items()}
    ran = await ok(cluster, "rebalance", "run", endpoints=f"127.0.0.1:{cluster.ports[follower]}")
    assert f"proposed {len(planned['steps'])} command(s)" in ran  # forwarded to the leader
    after = {n: s.rebalancer.stats.passes for n, s in cluster.services.items()}
    assert after[leader] == passes[leader] + 1 and after[follower] == passes[follower]
    status = await ok_json(cluster, "rebalance", "status")
    assert {s["stream"] + "/" + str(s["index"]) for s in status["reassigning"]} == {
        m["shard"] for m in moves
    }
    assert all(s["catching_up"] for s in status["reassigning"])
    moving = await ok_json(cluster, "shard", "list", "--reassigning")
    assert len(moving) == len(moves)
    assert await ok_json(cluster, "shard", "list", "--offline") == []
    for shard in status["reassigning"]:
        await ok(cluster, "shard", "cancel-move", shard["stream"], str(shard["index"]))
    assert await ok_json(cluster, "shard", "list", "--reassigning") == []

    first = next(s for s in before["records"]["shard"].values())
    target = [n for n in (5, 6) if n not in first["replicas"]] + list(first["replicas"][:1])
    for n in target:  # they never heartbeat: on a slow machine their health may have lapsed
        await ok(cluster, "node", "health", str(n), "up")
    await ok(cluster, "shard", "move", "s", str(first["index"]), "--replicas",
             ",".join(map(str, target)))  # fmt: skip
    code, text = await run(cluster, "shard", "move", "s", str(first["index"]), "--replicas", "1")
    assert code == 1 and "cancel that first" in text
    code, text = await run(cluster, "shard", "move", "s", "0", "--replicas", "x,y")
    assert code == 2 and "node ids" in text

    await ok(cluster, "node", "health", "3", "down")
    under = await ok_json(cluster, "shard", "list", "--under-replicated")
    after = await ok_json(cluster, "snapshot")  # brokers that never heartbeat may expire too
    down = {n["id"] for n in after["records"]["node"].values() if n["state"] != "up"}
    listed = {(s["stream"], s["index"]) for s in under}
    shards = after["records"]["shard"].values()
    assert {(s["stream"], s["index"]) for s in shards if 3 in s["replicas"]} <= listed
    for s in under:  # each has a replica down or catching up (nodes only went down since)
        assert any(r in down or r in s["catching_up"] for r in s["replicas"]), s
    for n in range(1, 7):  # 3 back up; the others never heartbeat and may have lapsed
        await ok(cluster, "node", "health", str(n), "up")
    code, text = await run(cluster, "stream", "update", "s", "--replication-factor", "9")
    assert code == 1 and "needs that many live brokers" in text
    await ok(cluster, "stream", "update", "s", "--replication-factor", "4")
    code, text = await run(cluster, "node", "remove", "1")
    assert code == 1 and "decommission it first" in text
    await ok(cluster, "node", "decommission", "1")
    assert (await ok_json(cluster, "node", "list"))[0]["evacuate"] == "decommission"


async def test_drain_and_down_safety_checks_and_force(cluster: Cluster) -> None:
    await live_nodes(cluster, 3)
    await ok(cluster, "tenant", "set", "acme")
    await ok(cluster, "stream", "create", "s", "--shards", "2", "--tenant", "acme",
             "--replication-factor", "3")  # fmt: skip
    await ok(cluster, "node", "drain", "1")
    code, text = await run(cluster, "node", "drain", "2")
    assert code == 1 and "min_live_replicas" in text and "s/0, s/1" in text
    code, text = await run(cluster, "node", "health", "2", "down")
    assert code == 1 and "marking down node 2" in text
    await ok(cluster, "node", "drain", "2", "--force")
    assert (await ok_json(cluster, "node", "list"))[1]["draining"] is True
    # --wait: no broker reports here, so no live broker can confirm: the drain stays open.
    code, text = await run(cluster, "node", "drain", "3", "--force", "--wait", "--timeout", "1")
    assert code == 1 and "did not complete within 1 s" in text
