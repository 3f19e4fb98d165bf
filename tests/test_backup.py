"""Backup and restore (docs/architecture.md §14), on real processes with TLS and auth:
`felix snapshot save` against a live cluster, `felix snapshot restore` into three fresh
data directories of a new cluster, which starts with the saved state and digest; a
broker of the old cluster that comes back takes exactly one snapshot (reason
``lineage``) and ends with the restored view; a token of the old cluster still works;
an old member's config (the old cluster id) is refused by a restored data directory.
Restore refuses damaged and foreign files and bad arguments, writing nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from felix.broker import open_metadata_client
from felix.broker.cache import MetadataCache
from felix.ctl.backup import lineage_of
from felix.metadata.commands import CreateStream, RegisterNode, SetTenant
from felix.metadata.snapshot import SNAPSHOT_FORMAT_NO_HISTORY, decode_snapshot
from felix.metadata.state import MetadataState
from felix.proto.cbor import dumps, to_plain
from felix.storage.backup import backup_meta, load_backup, write_backup
from felix.testing.processes import ProcessCluster
from tests.broker.test_client import FAST
from tests.broker.test_processes_client import endpoints, linearizable_view

FELIX = [sys.executable, "-m", "felix.cli"]


def felix(*args: str, cluster: ProcessCluster | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FELIX_")}
    if cluster is not None:
        env |= {"FELIX_TOKEN": cluster.creds.token, "FELIX_CA": str(cluster.creds.ca)}
    return subprocess.run(
        [*FELIX, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def ctl(cluster: ProcessCluster, *args: str) -> Any:
    eps = ",".join(endpoints(cluster))
    done = felix("ctl", *args, "--endpoints", eps, "-o", "json", cluster=cluster)
    assert done.returncode == 0, (args, done.stderr)
    return json.loads(done.stdout) if done.stdout.strip()[:1] in "{[" else None


@pytest.fixture
def old_cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    procs = ProcessCluster(tmp_path / "old", cluster_id="bk-old")
    try:
        procs.start_all()
        procs.wait_for_leader()
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture
def brokers(old_cluster: ProcessCluster, tmp_path: Path) -> Iterator[None]:
    """Four `felix brokers` whose new replicas take an hour to catch up: moves stay."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FELIX_")}
    env |= {"FELIX_TOKEN": old_cluster.creds.token, "FELIX_CA": str(old_cluster.creds.ca)}
    with (tmp_path / "brokers.log").open("wb") as log:
        proc = subprocess.Popen(
            [*FELIX, "brokers", "1-4", "--endpoints", ",".join(endpoints(old_cluster)),
             "--copy-s", "3600", "-q"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield
    finally:
        proc.terminate()  # by its PID
        proc.wait(30)


def fill(cluster: ProcessCluster) -> str:
    """Every kind of record, a move in flight and a broker token; returns the token."""
    ctl(cluster, "tenant", "set", "acme")
    ctl(cluster, "config", "set", "auto_rebalance", "false")  # the move stays in flight
    deadline = time.monotonic() + 60
    while sum(n["state"] == "up" for n in ctl(cluster, "node", "list")) < 4:
        assert time.monotonic() < deadline, "the four brokers never came up"
        time.sleep(0.1)  # polling the cluster for a condition, bounded
    ctl(cluster, "stream", "create", "orders", "--shards", "6", "--tenant", "acme",
        "--replication-factor", "3")  # fmt: skip
    shard = ctl(cluster, "shard", "list")[0]
    target = [n for n in (1, 2, 3, 4) if n not in shard["replicas"]][:1] + shard["replicas"][1:]
    ctl(cluster, "shard", "move", "orders", str(shard["index"]),
        "--replicas", ",".join(map(str, target)))  # fmt: skip
    made = ctl(cluster, "token", "create", "--role", "broker", "--node", "7", "--ttl", "1d")
    token: str = made["token"]
    return token


async def watcher_cache(cluster: ProcessCluster, at_least: int) -> MetadataCache:
    """A read-only broker's view of ``cluster`` at ``at_least`` or later, kept after."""
    async with open_metadata_client(
        endpoints(cluster), node_id=None, token=cluster.creds.token,
        ssl_context=cluster.creds.ssl_context(), **FAST,  # type: ignore[arg-type]
    ) as view:  # fmt: skip
        await view.wait_version(at_least)
        return view.cache


def test_save_restore_into_a_new_cluster_that_old_brokers_resync_from_once(
    tmp_path: Path, old_cluster: ProcessCluster, brokers: None
) -> None:
    broker_token = fill(old_cluster)
    backup = tmp_path / "backup.fxbk"
    saved = felix("snapshot", "save", str(backup), "--endpoints", ",".join(endpoints(old_cluster)),
                  "-o", "json", cluster=old_cluster)  # fmt: skip
    assert saved.returncode == 0, saved.stderr
    info = json.loads(saved.stdout)
    meta, state = load_backup(str(backup))
    assert (info["cluster_id"], info["version"]) == ("bk-old", meta.version)
    assert state.reassigning and state.tokens and state.tenants and state.config
    inspected = felix("snapshot", "inspect", str(backup), "-o", "json")
    assert inspected.returncode == 0 and json.loads(inspected.stdout)["version"] == meta.version

    ctl(old_cluster, "tenant", "set", "after-the-backup")  # the old brokers move past it
    version, _, _ = trio.run(linearizable_view, old_cluster)
    kept = trio.run(watcher_cache, old_cluster, version)
    assert kept.version is not None and kept.version > meta.version
    old_cluster.stop_all()

    new = ProcessCluster(tmp_path / "new", cluster_id="bk-new")
    members = ",".join(f"{n}=127.0.0.1:{p.peer_port}" for n, p in new.nodes.items())
    try:
        for n, node in new.nodes.items():
            done = felix("snapshot", "restore", str(backup), "--data-dir", str(node.data_dir),
                         "--node-id", str(n), "--initial-members", members,
                         "--cluster-id", "bk-new")  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert 'cluster_id = "bk-new"' in done.stdout
        new.start_all()
        _, digest, records = trio.run(linearizable_view, new)
        assert digest == meta.digest  # the saved state (a new leader's no-op changes nothing)
        assert records == {(c.kind, c.key): c.value for c in state.records()}

        async def old_broker_comes_back() -> tuple[Any, Any]:
            async with open_metadata_client(
                endpoints(new), node_id=None, cache=kept, token=new.creds.token,
                ssl_context=new.creds.ssl_context(), **FAST,  # type: ignore[arg-type]
            ) as view:  # fmt: skip
                now, _, _ = await linearizable_view(new)
                # Its kept version may be ahead of the new cluster's: wait until it has
                # heard from the new cluster (a snapshot, or deltas if that were a bug),
                # not only for a version it may already be past.
                with trio.fail_after(30):
                    await view.wait_until(lambda: view.stats.snapshots + view.stats.deltas > 0)
                await view.wait_version(now)
                return view.stats, dict(view.cache.records)

        stats, seen = trio.run(old_broker_comes_back)
        assert stats.snapshots == 1 and stats.resync_reasons == {"lineage": 1}
        assert {(k, key): v for (k, key), v in seen.items()} == records
        # The old cluster's broker token is in the restored state: it still works.
        eps = ",".join(endpoints(new))
        read = felix("ctl", "snapshot", "--endpoints", eps, "--token", broker_token,
                     "--ca", str(new.creds.ca), "-o", "json")  # fmt: skip
        assert read.returncode == 0, read.stderr
        # An old member (its config and certificates) on a restored data dir is refused.
        new.nodes[1].stop()
        old_args = [str(new.nodes[1].data_dir) if a == str(old_cluster.nodes[1].data_dir) else a
                    for a in old_cluster.nodes[1].args]  # fmt: skip
        refused = subprocess.run(old_args, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and "belongs to cluster 'bk-new'" in refused.stderr
    finally:
        new.stop_all()


def make_backup(path: Path) -> MetadataState:
    state = MetadataState()
    commands = [SetTenant("acme"), *(RegisterNode(n, f"10.0.0.{n}:1", "") for n in (1, 2, 3)),
                CreateStream("s", 4, "acme", 1)]  # fmt: skip
    for index, command in enumerate(commands, start=1):
        state.apply_command(index, command)
    data = state.snapshot()
    write_backup(str(path), backup_meta("c1", state, data, 0), data)
    return state


@pytest.mark.parametrize(
    "damage",
    ["truncated", "header bit", "data bit", "trailer bit", "empty", "foreign", "snapshot file"],
)
def test_restore_refuses_a_damaged_or_foreign_file_and_writes_nothing(
    tmp_path: Path, damage: str
) -> None:
    good = tmp_path / "good.fxbk"
    make_backup(good)
    blob = bytearray(good.read_bytes())
    bad = tmp_path / "bad.fxbk"
    if damage == "truncated":
        blob = blob[: len(blob) // 2]
    elif damage == "header bit":
        blob[20] ^= 0x01
    elif damage == "data bit":
        blob[len(blob) - 40] ^= 0x10
    elif damage == "trailer bit":
        blob[-1] ^= 0x80
    elif damage == "empty":
        blob = bytearray()
    elif damage == "foreign":
        blob = bytearray(b"PK\x03\x04 a zip file, not a backup" * 3)
    else:
        blob = bytearray(b"FXSN" + bytes(blob[4:]))  # the magic of a node's snapshot
    bad.write_bytes(bytes(blob))
    target = tmp_path / "data"
    done = felix("snapshot", "restore", str(bad), "--data-dir", str(target), "--node-id", "1",
                 "--initial-members", "1=127.0.0.1:7001")  # fmt: skip
    assert done.returncode == 1, done.stdout
    line = done.stderr.strip()
    assert line.startswith("felix snapshot restore: ") and "\n" not in line and str(bad) in line
    assert not target.exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "bad.fxbk", "good.fxbk"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--node-id", "4", "--initial-members", "1=h:1,2=h:2"], "not in --initial-members"),
        (["--node-id", "1", "--initial-members", "1=h:1,1=h:2"], "distinct"),
        (["--node-id", "1", "--initial-members", "one=h:1"], "--initial-members"),
        (["--node-id", "1", "--initial-members", "1=nowhere"], "--initial-members"),
    ],
)
def test_restore_refuses_bad_arguments_and_writes_nothing(
    tmp_path: Path, args: list[str], says: str
) -> None:
    backup = tmp_path / "b.fxbk"
    make_backup(backup)
    target = tmp_path / "data"
    done = felix("snapshot", "restore", str(backup), "--data-dir", str(target), *args)
    assert done.returncode == 1 and says in done.stderr and not target.exists()


def test_restore_into_a_directory_that_holds_anything_is_refused(tmp_path: Path) -> None:
    backup = tmp_path / "b.fxbk"
    make_backup(backup)
    target = tmp_path / "data"
    target.mkdir()
    (target / "keep-me").write_text("x")
    done = felix("snapshot", "restore", str(backup), "--data-dir", str(target), "--node-id",
                 "1", "--initial-members", "1=127.0.0.1:7001")  # fmt: skip
    assert done.returncode == 1 and "not empty" in done.stderr
    assert [p.name for p in target.iterdir()] == ["keep-me"]


def test_lineage_is_shared_by_members_of_one_restore_and_new_for_another(tmp_path: Path) -> None:
    make_backup(tmp_path / "b.fxbk")
    meta, _ = load_backup(str(tmp_path / "b.fxbk"))
    assert lineage_of("x", meta) == lineage_of("x", meta) != lineage_of("y", meta)
    assert lineage_of("x", meta) != ""


def test_an_older_snapshot_format_decodes_with_the_original_lineage() -> None:
    state = MetadataState()
    state.apply_command(1, SetTenant("acme"))
    snap = decode_snapshot(state.snapshot())  # format 3; then as format 2 wrote it:
    records = [to_plain(c) for c in snap.records]
    old = dumps([SNAPSHOT_FORMAT_NO_HISTORY, snap.version, snap.digest, records, []])
    assert decode_snapshot(old).history == "" and MetadataState.restore(old).history == ""
    state.history = "abc"
    assert MetadataState.restore(state.snapshot()).history == "abc"
