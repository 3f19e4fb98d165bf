"""Real processes: the leader is stopped with SIGTERM while writes keep arriving on every
node.  Its hand-off (thesis §3.10) takes no proposals, so writes reaching it meanwhile
wait for the new leader and are forwarded there; after it, new ones are answered
``not_leader`` naming the new leader.  No answer from any node ever names the answering
node itself as the leader, and every acknowledged write is on every remaining node.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from felix.broker.connection import ConnectionClosed
from felix.proto.client_messages import Error, ErrorCode, WriteRequest, WriteResult
from felix.testing.processes import Credentials, ProcessCluster

IN_FLIGHT = 8
ACKS_BEFORE = 300  # acknowledged writes before the SIGTERM...
ACKS_AFTER = 300  # ...and after the old leader exited


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ProcessCluster]:
    procs = ProcessCluster(tmp_path)
    try:
        procs.start_all()
        yield procs
    finally:
        procs.stop_all()  # every process, by PID


@dataclass
class Writer:
    """Pipelines writes to one node and keeps every answer."""

    node_id: int
    port: int
    acked: dict[str, int] = field(default_factory=dict)  # key -> version
    errors: list[tuple[float, Error]] = field(default_factory=list)
    acked_at: list[float] = field(default_factory=list)  # time.monotonic of each ack
    closed: bool = False

    async def run(self, creds: Credentials, stop: trio.Event) -> None:
        sent: dict[int, str] = {}
        seq = 0
        try:
            conn = await creds.open(self.port)
        except (OSError, ConnectionClosed):
            self.closed = True
            return
        try:
            while not stop.is_set():
                while len(sent) < IN_FLIGHT:
                    seq += 1
                    key = f"n{self.node_id}-{seq}"
                    sent[seq] = key
                    args = {"name": key, "display_name": "x"}
                    await conn.send(WriteRequest(seq, "set_tenant", args, None))
                with trio.move_on_after(1):  # re-check ``stop`` now and then
                    for reply in await conn.receive_batch():
                        if isinstance(reply, WriteResult):
                            self.acked[sent.pop(reply.request_id)] = reply.version
                            self.acked_at.append(time.monotonic())
                        elif isinstance(reply, Error) and reply.request_id is not None:
                            sent.pop(reply.request_id, None)
                            self.errors.append((time.monotonic(), reply))
        except ConnectionClosed:
            self.closed = True  # the node stopped; what was in flight is unknown
        finally:
            await conn.aclose()


async def wait_acks(writers: list[Writer], count: int, since: float) -> None:
    with trio.fail_after(60):
        while sum(sum(t >= since for t in w.acked_at) for w in writers) < count:
            await trio.sleep(0.05)


def test_writes_during_a_sigterm_hand_off_are_forwarded_never_self_named(
    cluster: ProcessCluster,
) -> None:
    leader = cluster.wait_for_leader()
    cluster.put("warmup", "x")
    writers = [Writer(n, node.client_port) for n, node in cluster.nodes.items()]
    exit_code: list[int | None] = []

    async def main() -> float:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            for writer in writers:
                nursery.start_soon(writer.run, cluster.creds, stop)
            await wait_acks(writers, ACKS_BEFORE, 0.0)
            sigterm_at = time.monotonic()
            exit_code.append(await trio.to_thread.run_sync(cluster.nodes[leader].stop))
            others = [w for w in writers if w.node_id != leader]
            await wait_acks(others, ACKS_AFTER, time.monotonic())
            stop.set()
        return sigterm_at

    sigterm_at = trio.run(main)
    assert exit_code == [0]
    old = next(w for w in writers if w.node_id == leader)
    for writer in writers:
        for _, error in writer.errors:
            named = f"the leader is node {writer.node_id}"
            assert named not in error.detail, (writer.node_id, error)
    # The old leader answered only successes, or not_leader naming another node once it
    # had handed over (never "transfer in progress" pointing at itself).
    for _, error in old.errors:
        assert error.code is ErrorCode.NOT_LEADER, error
        assert "handing leadership over" not in error.detail, error
    answered_after = sum(t >= sigterm_at for t in old.acked_at)
    refused_after = sum(t >= sigterm_at for t, _ in old.errors)
    kinds = {w.node_id: sorted({f"{e.code}: {e.detail}" for _, e in w.errors}) for w in writers}
    print(
        f"\nSIGTERM hand-off: the old leader (node {leader}) acknowledged {answered_after} writes"
        f" and refused {refused_after} (not_leader naming the new leader) after the signal;"
        f" acknowledged in all: {sum(len(w.acked) for w in writers)};"
        f" errors by node: {kinds}"
    )
    acked = {key: "x" for writer in writers for key in writer.acked}
    last = max(v for writer in writers for v in writer.acked.values())
    for node_id in cluster.nodes:
        if node_id == leader:
            continue
        cluster.wait_caught_up(node_id, last)
        assert cluster.local_items(node_id, list(acked)) == acked, f"node {node_id}"
