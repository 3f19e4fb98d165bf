"""100,000 shards: building, snapshotting and restoring stay fast."""

from __future__ import annotations

import time

import pytest

from felix.metadata.commands import Command, CreateStream, NodeHealth, RegisterNode, SetTenant
from felix.metadata.digest import digest_of_records
from felix.metadata.state import MetadataState

NODES = 30
STREAMS = 100
SHARDS_PER_STREAM = 1000


@pytest.fixture(scope="module")
def big() -> MetadataState:
    return big_state()


def big_state() -> MetadataState:
    state = MetadataState()

    def do(cmd: Command) -> None:
        result = state.apply_command(state.version + 1, cmd)
        assert result.ok, result.error

    for n in range(NODES):
        do(RegisterNode(n, f"10.0.{n}.1:9092", f"rack-{n % 5}"))
        do(NodeHealth(n, "up"))
    do(SetTenant("acme"))
    for s in range(STREAMS):
        do(CreateStream(f"stream-{s}", SHARDS_PER_STREAM, "acme"))
    return state


@pytest.mark.slow
def test_100k_shards_snapshot_round_trip_is_fast(big: MetadataState) -> None:
    state = big
    assert len(state.shards) == STREAMS * SHARDS_PER_STREAM
    started = time.perf_counter()
    data = state.snapshot()
    encoded = time.perf_counter()
    restored = MetadataState.restore(data)
    done = time.perf_counter()
    assert restored.digest == state.digest
    assert restored.version == state.version
    assert digest_of_records(restored.records()) == state.digest
    assert encoded - started < 3.0, f"snapshot took {encoded - started:.2f}s"
    assert done - encoded < 5.0, f"restore took {done - encoded:.2f}s"


@pytest.mark.slow
def test_apply_cost_does_not_grow_with_state_size(big: MetadataState) -> None:
    """A leadership change on a 100k-shard state touches only the affected records
    (runs last: it mutates the shared state)."""
    state = big
    led = state.leader_count(0)
    started = time.perf_counter()
    result = state.apply_command(state.version + 1, NodeHealth(0, "down"))
    elapsed = time.perf_counter() - started
    moved = [c for c in result.delta.changes if c.kind == "shard"]
    assert len(moved) == led > 0
    assert len(result.delta.changes) == led + 1  # the moved shards and the node itself
    assert elapsed < 1.0, f"node down with {len(moved)} moves took {elapsed:.2f}s"
