"""Every command's happy and rejection paths, CAS, quotas and config validation."""

from __future__ import annotations

import pytest

from felix.metadata.commands import (
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
)
from felix.metadata.model import Node, NodeState
from felix.metadata.state import MetadataState
from felix.proto.client_messages import Change

from .harness import Harness, cluster, with_stream

RACKS3 = {1: "a", 2: "b", 3: "c"}


def test_register_node_sets_epoch_to_the_entry_index() -> None:
    h = Harness()
    delta = h.ok(RegisterNode(7, "host:1", "r1"))
    node = Node(7, "host:1", "r1", "registered", 1, False, None)
    assert delta.changes == (Change("node", "7", node.to_record()),)
    h.ok(NodeHealth(7, "up"))
    h.ok(RegisterNode(7, "host:2", "r1"))  # restart: new epoch, fenced again
    assert h.state.nodes[7].epoch == 3
    assert h.state.nodes[7].state == NodeState.REGISTERED


def test_register_node_rejects_an_address_held_by_a_live_node() -> None:
    h = cluster(RACKS3)
    h.reject(RegisterNode(9, "10.0.0.1:9092", "a"), match="in use by live node 1")
    h.ok(NodeHealth(1, "down"))
    h.ok(RegisterNode(9, "10.0.0.1:9092", "a"))


def test_node_health_transitions_and_stale_epoch() -> None:
    h = Harness()
    h.ok(RegisterNode(1, "h:1"))
    h.reject(NodeHealth(2, "up"), match="node 2 is not registered")
    h.reject(NodeHealth(1, "up", epoch=99), code="conflict", match="epoch 99 is stale")
    h.ok(NodeHealth(1, "up", epoch=1))
    assert h.state.nodes[1].state == "up"
    assert h.ok(NodeHealth(1, "up")).changes == ()  # already up: a no-op success
    h.ok(NodeHealth(1, "down"))
    assert h.state.nodes[1].state == "down"


def test_drain_and_undrain() -> None:
    h = cluster(RACKS3)
    h.reject(DrainNode(5), match="node 5 is not registered")
    h.reject(UndrainNode(5), match="node 5 is not registered")
    h.ok(DrainNode(1))
    assert h.state.nodes[1].draining
    assert h.ok(DrainNode(1)).changes == ()
    h.ok(UndrainNode(1))
    assert not h.state.nodes[1].draining and h.state.nodes[1].drained_version is None


def test_create_stream_happy_path() -> None:
    h = cluster(RACKS3)
    delta = h.ok(CreateStream("orders", 2, "acme", retention_ms=1000))
    kinds = [(c.kind, c.key) for c in delta.changes]
    assert kinds == [("stream", "orders"), ("shard", "orders/0"), ("shard", "orders/1")]
    stream = h.state.streams["orders"]
    assert (stream.shards, stream.replication_factor, stream.retention_ms) == (2, 3, 1000)
    shard = h.state.shards["orders/0"]
    assert shard.leader == shard.replicas[0] and shard.leader_epoch == 1
    assert h.state.tenant_usage("acme") == (1, 2)


@pytest.mark.parametrize(
    ("cmd", "match"),
    [
        (CreateStream("s", 1, "nobody"), "tenant 'nobody' does not exist"),
        (CreateStream("s", 1, "acme", replication_factor=4), "needs that many live nodes"),
        (CreateStream("s", 10_001, "acme"), "exceeds shards_per_stream_max=10000"),
    ],
)
def test_create_stream_rejections(cmd: CreateStream, match: str) -> None:
    h = cluster(RACKS3)
    h.reject(cmd, match=match)


def test_create_stream_rejects_duplicates_and_cluster_limit() -> None:
    h = with_stream(cluster(RACKS3), "orders", 1)
    h.reject(CreateStream("orders", 1, "acme"), match="already exists")
    h.ok(SetConfig("streams_max", 1))
    h.reject(CreateStream("other", 1, "acme"), match="streams_max=1")


def test_defaults_come_from_config_at_creation() -> None:
    h = cluster(RACKS3)
    h.ok(SetConfig("replication_factor_default", 2))
    h.ok(SetConfig("retention_ms_default", 5000))
    h.ok(CreateStream("s", 1, "acme"))
    assert h.state.streams["s"].replication_factor == 2
    assert h.state.streams["s"].retention_ms == 5000


def test_update_stream() -> None:
    h = with_stream(cluster(RACKS3), "orders", 2)
    delta = h.ok(UpdateStream("orders", shards=4, retention_ms=77))
    assert [c.key for c in delta.changes] == ["orders", "orders/2", "orders/3"]
    assert h.state.streams["orders"].retention_ms == 77
    h.reject(UpdateStream("orders", shards=3), match="cannot shrink")
    h.reject(UpdateStream("orders", replication_factor=9), match="replication factor 9 needs")
    h.reject(UpdateStream("nope", retention_ms=1), match="stream 'nope' does not exist")
    assert h.ok(UpdateStream("orders")).changes == ()


def test_delete_stream() -> None:
    h = with_stream(cluster(RACKS3), "orders", 3)
    delta = h.ok(DeleteStream("orders"))
    assert {c.key for c in delta.changes} == {"orders", "orders/0", "orders/1", "orders/2"}
    assert all(c.value is None for c in delta.changes)
    assert not h.state.shards and h.state.tenant_usage("acme") == (0, 0)
    assert all(h.state.leader_count(n) == 0 for n in RACKS3)
    h.reject(DeleteStream("orders"), match="does not exist")


def test_delete_stream_can_be_disabled() -> None:
    h = with_stream(cluster(RACKS3), "orders", 1)
    h.ok(SetConfig("allow_stream_deletion", False))
    h.reject(DeleteStream("orders"), match="allow_stream_deletion=false")


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("nope", 1, "unknown config key 'nope'"),
        ("streams_max", "10", "takes a int, got str"),
        ("streams_max", True, "takes a int, got bool"),
        ("streams_max", -1, "out of range [0, 1000000]"),
        ("max_message_bytes", 0, "out of range"),
        ("rack_aware_placement", 1, "takes a bool, got int"),
    ],
)
def test_set_config_validation(name: str, value: object, match: str) -> None:
    h = Harness()
    h.reject(SetConfig(name, value), match=match)  # type: ignore[arg-type]


def test_set_config_and_revert_to_default() -> None:
    h = Harness()
    delta = h.ok(SetConfig("max_message_bytes", 4096))
    assert delta.changes == (
        Change("config", "max_message_bytes", {"name": "max_message_bytes", "value": 4096}),
    )
    assert h.state.config_values() == {"max_message_bytes": 4096}
    assert h.ok(SetConfig("max_message_bytes", None)).changes == (
        Change("config", "max_message_bytes", None),
    )
    assert h.state.config_values() == {}


def test_tenants() -> None:
    h = Harness()
    h.ok(SetTenant("acme", display_name="Acme"))
    h.ok(SetQuota("acme", streams_max=2, bytes_per_s=100))
    h.ok(SetTenant("acme", display_name="Acme Inc"))  # an update keeps the quotas
    tenant = h.state.tenants["acme"]
    assert (tenant.display_name, tenant.streams_max, tenant.bytes_per_s) == ("Acme Inc", 2, 100)
    h.reject(SetQuota("nobody", streams_max=1), match="tenant 'nobody' does not exist")
    h.reject(SetTenant("nobody", remove=True), match="does not exist")
    h.ok(SetTenant("acme", remove=True))
    assert "acme" not in h.state.tenants


def test_tenant_with_streams_cannot_be_removed() -> None:
    h = with_stream(cluster(RACKS3), "orders", 1)
    h.reject(SetTenant("acme", remove=True), match="still owns 1 stream(s)")


def test_tenant_quotas_are_enforced_at_write_time() -> None:
    h = cluster(RACKS3)
    h.ok(SetQuota("acme", streams_max=2, shards_max=5))
    h.ok(CreateStream("a", 2, "acme"))
    h.reject(CreateStream("b", 4, "acme"), match="shards_max=5 would be exceeded (2 + 4)")
    h.ok(CreateStream("b", 3, "acme"))
    h.reject(CreateStream("c", 1, "acme"), match="quota streams_max=2 reached")
    h.reject(UpdateStream("a", shards=3), match="shards_max=5")
    h.ok(SetQuota("acme"))  # None = unlimited
    h.ok(CreateStream("c", 1, "acme"))


def test_move_shard_leader() -> None:
    h = with_stream(cluster({1: "a", 2: "b", 3: "c", 4: "d"}), "s", 1)
    shard = h.state.shards["s/0"]
    outsider = ({1, 2, 3, 4} - set(shard.replicas)).pop()
    follower = shard.replicas[1]
    h.reject(MoveShardLeader("s/9", follower), match="shard 's/9' does not exist")
    h.reject(MoveShardLeader("s/0", outsider), match="is not a replica")
    h.ok(DrainNode(follower))
    h.reject(MoveShardLeader("s/0", follower), match="is not live")
    h.ok(UndrainNode(follower))
    h.ok(MoveShardLeader("s/0", follower))
    assert h.state.shards["s/0"].leader == follower
    assert h.state.shards["s/0"].leader_epoch == 2
    assert h.ok(MoveShardLeader("s/0", follower)).changes == ()


def test_compare_and_set() -> None:
    h = Harness()
    h.ok(SetTenant("acme", expected_version=0))
    error = h.reject(SetTenant("beta", expected_version=0), code="conflict")
    assert error.detail == "expected version 0, but the state is at version 1"
    h.ok(SetTenant("beta", expected_version=2))


def test_versions_advance_on_every_entry() -> None:
    state = MetadataState()
    noop = state.apply_noop(1)
    assert (noop.delta.prev_version, noop.delta.version, noop.delta.changes) == (0, 1, ())
    rejected = state.apply_command(2, DrainNode(1))
    assert rejected.error is not None and rejected.delta.version == 2
    assert state.version == 2
    with pytest.raises(AssertionError):
        state.apply_noop(4)


def test_a_rejection_midway_rolls_back_earlier_writes() -> None:
    """update_stream writes the stream record before placement fails for capacity."""
    h = with_stream(cluster(RACKS3), "orders", 2)
    h.ok(SetConfig("shards_per_node_max", 3))
    h.reject(UpdateStream("orders", shards=4, retention_ms=5), match="not enough capacity")
    assert h.state.streams["orders"].shards == 2
    assert all(len(h.state.node_shards(n)) == 2 for n in RACKS3)
