"""Digest, snapshot and determinism properties over random command sequences."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from felix.metadata.commands import (
    Command,
    CreateStream,
    DeleteStream,
    DrainNode,
    MoveShardLeader,
    NodeHealth,
    RegisterNode,
    SetConfig,
    SetQuota,
    SetTenant,
    UndrainNode,
    UpdateStream,
    encode_command,
)
from felix.metadata.digest import digest_of_records
from felix.metadata.state import MetadataState
from felix.metadata.view import view_of
from felix.proto.client_messages import Delta

from .harness import Harness

node_ids = st.integers(1, 5)
streams = st.sampled_from(["s1", "s2", "s3"])
tenants = st.sampled_from(["t1", "t2"])
small = st.integers(1, 4)

rarely = st.integers(0, 5).map(lambda i: i == 0)
create = st.builds(CreateStream, streams, small, tenants, replication_factor=st.none() | small)
commands: st.SearchStrategy[Command] = st.one_of(
    create,
    create,
    create,
    st.builds(RegisterNode, node_ids, st.sampled_from(["h1", "h2", "h3"]), st.sampled_from("abc")),
    st.builds(NodeHealth, node_ids, st.sampled_from(["up", "up", "down"])),
    st.builds(DrainNode, node_ids),
    st.builds(UndrainNode, node_ids),
    st.builds(UpdateStream, streams, shards=st.none() | st.integers(1, 6)),
    st.builds(DeleteStream, streams),
    st.builds(SetConfig, st.just("shards_per_node_max"), st.none() | st.integers(1, 8)),
    st.builds(SetConfig, st.just("rack_aware_placement"), st.booleans()),
    st.builds(SetTenant, tenants, remove=rarely),
    st.builds(SetQuota, tenants, streams_max=st.none() | small, shards_max=st.none() | small),
    st.builds(MoveShardLeader, st.builds("{}/{}".format, streams, st.integers(0, 3)), node_ids),
    st.builds(DrainNode, node_ids, expected_version=st.none() | st.integers(0, 40)),
)
# Bias towards a populated cluster: register and bring up nodes early.
SETUP: list[Command] = [
    *(RegisterNode(n, f"10.0.0.{n}", "abc"[n % 3]) for n in range(1, 6)),
    *(NodeHealth(n, "up") for n in range(1, 6)),
    SetTenant("t1"),
    SetTenant("t2"),
]
sequences = st.lists(commands, max_size=40).map(lambda cmds: SETUP + cmds)


def run(cmds: list[Command], state: MetadataState | None = None) -> list[Delta]:
    state = state or MetadataState()
    return [state.apply_command(state.version + 1, cmd).delta for cmd in cmds]


def check_indexes(state: MetadataState) -> None:
    """Derived indexes equal a recomputation from the tables."""
    leaders = Counter(s.leader for s in state.shards.values() if s.leader is not None)
    for node_id in set(state.nodes) | set(leaders):
        assert state.leader_count(node_id) == leaders[node_id]
        members = {k for k, s in state.shards.items() if node_id in s.replicas}
        assert set(state.node_shards(node_id)) == members
    for shard in state.shards.values():
        assert shard.leader is None or shard.leader in shard.replicas
        assert len(set(shard.replicas)) == len(shard.replicas)
        assert shard.key in {f"{s.name}/{i}" for s in state.streams.values() for i in
                             range(s.shards)}  # fmt: skip
    for node in state.nodes.values():
        done = node.draining and state.leader_count(node.id) == 0
        assert (node.drained_version is not None) == done


@settings(max_examples=150, deadline=None)
@given(sequences)
def test_incremental_digest_equals_recomputed_digest(cmds: list[Command]) -> None:
    h = Harness()
    for cmd in cmds:
        h.apply(cmd)  # the harness checks the view's incremental digest each step
        assert digest_of_records(h.state.records()) == h.state.digest
        check_indexes(h.state)
    h.check_view()
    assert digest_of_records(h.view) == h.state.digest


@settings(max_examples=100, deadline=None)
@given(sequences)
def test_snapshot_restore_is_exact(cmds: list[Command]) -> None:
    h = Harness()
    for cmd in cmds:
        h.apply(cmd)
    restored = MetadataState.restore(h.state.snapshot())
    assert restored.version == h.state.version
    assert restored.digest == h.state.digest
    assert list(restored.records()) == list(h.state.records())
    assert restored.snapshot() == h.state.snapshot()
    check_indexes(restored)
    assert view_of(restored.records()) == h.view


@settings(max_examples=100, deadline=None)
@given(sequences, st.integers(0, 60))
def test_determinism_including_across_a_restore(cmds: list[Command], cut: int) -> None:
    """Same commands -> same deltas; a node restored mid-way produces the same deltas."""
    assert run(cmds) == run(cmds)
    cut = min(cut, len(cmds))
    first = MetadataState()
    run(cmds[:cut], first)
    restored = MetadataState.restore(first.snapshot())
    assert run(cmds[cut:], restored) == run(cmds)[cut:]


@settings(max_examples=50, deadline=None)
@given(sequences)
def test_deltas_chain_and_rejections_change_nothing(cmds: list[Command]) -> None:
    state = MetadataState()
    for cmd in cmds:
        before = state.snapshot()
        result = state.apply(state.version + 1, encode_command(cmd))
        assert result.delta.prev_version + 1 == result.delta.version == state.version
        if result.error is not None:
            assert result.delta.changes == ()
            assert list(MetadataState.restore(before).records()) == list(state.records())
