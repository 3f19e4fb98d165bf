"""Replica management against a `felix dev` cluster with real brokers, all real processes
(docs/architecture.md §13): `felix dev --brokers N` runs the control plane and N
example brokers (`felix brokers`: real `felix.broker` clients that log their ownership
and report catching-up replicas ready); `felix ctl` drives it.

- The quick start, `felix dev --brokers 3`: three brokers up on three racks; a stream's
  replicas placed on all three, each broker logging what it owns; a drained broker's
  leaderships fail over to the others, both sides logging the change.

- Decommission: every replica leaves the broker make-before-break, the broker is then
  removed, and it stops itself.
- Ten brokers join a cluster of fifty: the leader's planner balances replicas and
  leaders within the skews; replaying the leader's WAL from its files shows that at no
  committed entry did moves in flight exceed ``moves_per_node_max`` or
  ``moves_cluster_max``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from felix.metadata.state import MetadataState
from felix.proto.raft_messages import EntryKind
from felix.storage.files import OsFiles
from felix.storage.recovery import iter_records
from felix.storage.segment_format import BatchRecord
from felix.storage.segmented_wal import WAL_DIR
from tests.server.test_secure_by_default import FELIX, dev_base_port, felix

DEADLINE_S = 120.0  # a bound on each wait, not the claim


class Dev:
    def __init__(self, cwd: Path, base: int, log: Path) -> None:
        self.cwd, self.base, self.log = cwd, base, log
        self.clients = ",".join(f"127.0.0.1:{base + 1000 + i}" for i in range(3))

    def ctl(self, *args: str) -> Any:
        done = felix("ctl", *args, "--endpoints", self.clients, "-o", "json", cwd=self.cwd)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        return json.loads(done.stdout) if done.stdout.strip().startswith(("{", "[")) else None

    def until(self, what: str, predicate: Callable[[], bool]) -> None:
        """Poll (bounded) a condition that the cluster reaches by itself."""
        deadline = time.monotonic() + DEADLINE_S
        while not predicate():
            assert time.monotonic() < deadline, f"{what}\n{self.log.read_text()[-3000:]}"
            time.sleep(0.2)

    def nodes(self) -> dict[int, dict[str, Any]]:
        return {n["id"]: n for n in self.ctl("node", "list")}

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.ctl("rebalance", "status")
        return status


@contextmanager
def dev_cluster(tmp_path: Path, brokers: int) -> Iterator[Dev]:
    base = dev_base_port()
    log = tmp_path / "dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*FELIX, "dev", "--base-port", str(base), "--brokers", str(brokers)],
            cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("FELIX_")},
        )  # fmt: skip
        try:
            dev = Dev(tmp_path, base, log)
            dev.until("a leader", lambda: "leader: node" in log.read_text())
            dev.until(
                f"{brokers} brokers up",
                lambda: sum(n["state"] == "up" for n in dev.nodes().values()) == brokers,
            )
            yield dev
        finally:
            proc.send_signal(signal.SIGTERM)  # stops its brokers by PID, then the nodes
            assert proc.wait(60) == 0, log.read_text()[-3000:]


def test_dev_with_three_brokers_shows_placement_ownership_and_failover(tmp_path: Path) -> None:
    """The quick start: `felix dev --brokers 3`, a stream, a broker drained."""
    with dev_cluster(tmp_path, brokers=3) as dev:
        racks = {n: v["rack"] for n, v in dev.nodes().items()}
        assert sorted(racks) == [1, 2, 3] and len(set(racks.values())) == 3
        dev.ctl("tenant", "set", "acme")
        dev.ctl("stream", "create", "orders", "--shards", "6", "--replication-factor", "3",
                "--tenant", "acme")  # fmt: skip
        shards = dev.ctl("shard", "list")
        assert len(shards) == 6 and all(sorted(s["replicas"]) == [1, 2, 3] for s in shards)
        for n in (1, 2, 3):  # every broker logs its placement, one line per shard
            for i in range(6):
                dev.until(f"broker {n} owns orders/{i}", lambda n=n, i=i: (  # type: ignore[misc]
                    f"broker {n}: start owning orders/{i} as" in dev.log.read_text()))  # fmt: skip
        led = [s["index"] for s in shards if s["leader"] == 1]
        assert led  # preferred leaders spread over the three brokers
        dev.ctl("node", "drain", "1", "--wait")
        after = {s["index"]: s for s in dev.ctl("shard", "list")}
        assert all(after[i]["leader"] in (2, 3) for i in led)
        text = dev.log.read_text()
        for i in led:  # leadership failed over: broker 1 is told, and so is the new leader
            assert f"broker 1: leader -> orders/{i} as replica" in text
            new = after[i]["leader"]
            assert f"broker {new}: replica -> orders/{i} as leader" in text, (i, text[-3000:])


def test_decommission_moves_every_replica_off_then_removes_the_broker(tmp_path: Path) -> None:
    with dev_cluster(tmp_path, brokers=4) as dev:
        dev.ctl("tenant", "set", "acme")
        dev.ctl("stream", "create", "orders", "--shards", "8", "--replication-factor", "3",
                "--tenant", "acme")  # fmt: skip
        shards = dev.ctl("shard", "list")
        held = [s["stream"] + "/" + str(s["index"]) for s in shards if 4 in s["replicas"]]
        assert held  # 24 replicas on 4 brokers: broker 4 holds some
        dev.ctl("node", "decommission", "4")
        dev.until("broker 4 removed", lambda: 4 not in dev.nodes())
        status = dev.status()
        assert status["reassigning"] == [] and status["under_replicated"] == 0
        for shard in dev.ctl("shard", "list"):
            assert len(shard["replicas"]) == 3 and 4 not in shard["replicas"], shard
            assert shard["leader"] in shard["replicas"]
        text = dev.log.read_text()
        for key in held:  # each moved shard got a new replica that caught up first
            assert f"{key} as catching_up" in text and f"{key} caught up" in text, key
            assert f"broker 4: stop owning {key}" in text
        assert "broker 4: removed from the cluster" in text


def replay(wal_dir: Path, check: Callable[[MetadataState], None]) -> int:
    """Replay a node's WAL from its files (later records replace the tail from their
    first index, as Raft truncates), up to the last commit index; ``check`` after each
    committed entry.  Returns the number of entries checked."""
    log: dict[int, Any] = {}
    commit = 0
    for _, _, _, record in iter_records(OsFiles(), str(wal_dir)):
        if not isinstance(record, BatchRecord):
            continue
        assert record.snapshot is None  # no compaction in this run: the log is whole
        for entry in record.entries:
            for index in [i for i in log if i >= entry.index]:
                del log[index]
            log[entry.index] = entry
        if record.hard_state is not None:
            commit = max(commit, record.hard_state.commit)
    state = MetadataState()
    assert min(log) == 1
    for index in range(1, commit + 1):
        entry = log[index]
        if entry.kind is EntryKind.NORMAL:
            state.apply(index, entry.data)
        else:
            state.apply_noop(index)
        check(state)
    return commit


def test_ten_brokers_join_fifty_and_the_planner_balances_within_the_bounds(
    tmp_path: Path,
) -> None:
    with dev_cluster(tmp_path, brokers=50) as dev:
        dev.ctl("tenant", "set", "acme")
        dev.ctl("stream", "create", "orders", "--shards", "200", "--replication-factor", "3",
                "--tenant", "acme")  # fmt: skip
        before = dev.status()
        assert before["replica_skew"] <= 2
        joined_log = (tmp_path / "joined.log").open("wb")
        joined = subprocess.Popen(
            [*FELIX, "brokers", "51-60", "--endpoints", dev.clients, "--copy-s", "0.2"],
            cwd=tmp_path, stdout=joined_log, stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("FELIX_")},
        )  # fmt: skip
        try:
            dev.until("60 brokers up", lambda: len(dev.nodes()) == 60)

            def balanced() -> bool:
                s = dev.status()
                return not s["reassigning"] and s["replica_skew"] <= 2 and s["leader_skew"] <= 2

            dev.until("balanced within the skews", balanced)
            counts = {n: 0 for n in range(1, 61)}
            for shard in dev.ctl("shard", "list"):
                assert len(set(shard["replicas"])) == 3
                for r in shard["replicas"]:
                    counts[r] += 1
            assert min(counts[n] for n in range(51, 61)) >= min(counts.values())
            assert max(counts.values()) - min(counts.values()) <= 2
        finally:
            joined.send_signal(signal.SIGTERM)
            assert joined.wait(30) == 0, (tmp_path / "joined.log").read_text()[-3000:]
            joined_log.close()
    peak = {"node": 0, "cluster": 0}

    def within_bounds(state: MetadataState) -> None:
        per_node = max((state.moves_of(n) for n in state.nodes), default=0)
        peak["node"] = max(peak["node"], per_node)
        peak["cluster"] = max(peak["cluster"], len(state.reassigning))
        assert per_node <= 2 and len(state.reassigning) <= 64, state.version

    entries = replay(tmp_path / "felix-data" / "node-1" / WAL_DIR, within_bounds)
    assert entries > 200 and peak["cluster"] > 1  # moves ran concurrently, within bounds
