"""Real processes: brokers watch a 3-process cluster while the leader is killed (-9).

Brokers resume on a surviving node from the last version they applied — no snapshot, no
gap, no duplicate — and end with exactly the leader's records and digest.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from felix.metadata.digest import digest_bytes
from felix.proto.client_messages import GetSnapshot, SnapshotChunk
from felix.testing.processes import Credentials, ProcessCluster
from tests.server.test_metadata_watch import Broker, run_broker


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    procs = ProcessCluster(tmp_path)
    procs.start_all()
    try:
        yield procs
    finally:
        procs.stop_all()


async def leader_view(
    port: int, creds: Credentials
) -> tuple[int, bytes, dict[tuple[str, str], object]]:
    conn = await creds.open(port)
    try:
        await conn.send(GetSnapshot(1, True))
        records: dict[tuple[str, str], object] = {}
        while True:
            chunk = await conn.receive()
            assert isinstance(chunk, SnapshotChunk)
            records.update({(c.kind, c.key): c.value for c in chunk.records})
            if chunk.last:
                return chunk.version, chunk.digest, records
    finally:
        await conn.aclose()


def test_brokers_survive_kill9_of_the_leader(cluster: ProcessCluster) -> None:
    for i in range(10):
        cluster.put(f"before{i}", "x")
    brokers = [Broker(f"b{i}") for i in range(6)]
    ports = [node.client_port for node in cluster.nodes.values()]

    async def main() -> None:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for i, broker in enumerate(brokers):
                nursery.start_soon(run_broker, broker, ports, i, stop, cluster.creds)
            with trio.fail_after(20):
                while any(b.version is None for b in brokers):
                    await trio.sleep(0.02)
            leader = await trio.to_thread.run_sync(cluster.wait_for_leader)
            await trio.to_thread.run_sync(cluster.nodes[leader].kill9)
            last = 0
            for i in range(10):
                last = await trio.to_thread.run_sync(cluster.put, f"after{i}", "y")
            with trio.fail_after(20):
                while any(b.version is None or b.version < last for b in brokers):
                    await trio.sleep(0.02)
            new_leader = await trio.to_thread.run_sync(cluster.wait_for_leader)
            port = cluster.nodes[new_leader].client_port
            version, digest, records = await leader_view(port, cluster.creds)
            with trio.fail_after(20):  # nothing is written any more: all converge on it
                while any(b.version != version for b in brokers):
                    await trio.sleep(0.02)
            stop.set()
            nursery.cancel_scope.cancel()
        for broker in brokers:
            assert broker.version == version >= last
            assert broker.records == records and digest_bytes(broker.digest) == digest
            assert broker.applied == sorted(set(broker.applied))
            assert broker.snapshots == 1, f"{broker.name} needed a second snapshot"
        assert sum(b.reconnects for b in brokers) >= 1

    trio.run(main)
