"""One handler per command: validate against the state, then mutate through it.

A handler raises `CommandError` to reject; `MetadataState` rolls back whatever it had
already written, so handlers stay straight-line.  Handlers only use the state's
mutation helpers (`_put`, `_delete`, `_node_changed`, `_reelect`, `_add_shards`), which
keep indexes and the digest in step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from felix.metadata import commands as cmds
from felix.metadata import replicas
from felix.metadata.config import config_bool, validate_config
from felix.metadata.errors import CommandError, rejected
from felix.metadata.model import (
    EVACUATE_DECOMMISSION,
    EVACUATE_DOWN_TIMEOUT,
    KIND_CONFIG,
    KIND_SHARD,
    KIND_STREAM,
    KIND_TENANT,
    ConfigEntry,
    Node,
    NodeState,
    Shard,
    Stream,
    Tenant,
    shard_key,
)
from felix.metadata.tokens import TOKENS_MAX, TokenRecord, check_record
from felix.proto.client_messages import ErrorCode

if TYPE_CHECKING:
    from felix.metadata.state import MetadataState


def register_node(state: MetadataState, cmd: cmds.RegisterNode) -> None:
    """Epoch = this entry's index (strictly increasing per registration, as in KRaft).
    The node starts fenced (``registered``); a drain in progress survives a restart."""
    for other in state.nodes.values():
        if other.id != cmd.node_id and other.address == cmd.address and not _down(other):
            raise rejected(f"address {cmd.address!r} is in use by live node {other.id}")
    old = state.nodes.get(cmd.node_id)
    draining = old.draining if old is not None else False
    evacuate = old.evacuate if old is not None and old.evacuate == EVACUATE_DECOMMISSION else ""
    node = Node(cmd.node_id, cmd.address, cmd.rack, NodeState.REGISTERED, state._index,
                draining, None, False, evacuate)  # fmt: skip
    state._node_changed(node)


def _down(node: Node) -> bool:
    return node.state == NodeState.DOWN


def node_health(state: MetadataState, cmd: cmds.NodeHealth) -> None:
    """Move a node up or down; an ``epoch`` from an older registration is a conflict."""
    node = state._node(cmd.node_id)
    if cmd.epoch is not None and cmd.epoch != node.epoch:
        raise CommandError(
            ErrorCode.CONFLICT,
            f"node {node.id} epoch {cmd.epoch} is stale (current epoch {node.epoch})",
        )
    if cmd.operator and cmd.status == NodeState.DOWN and node.state != NodeState.DOWN:
        replicas.check_availability(state, node.id, "marking down", cmd.force)
    if node.state != cmd.status:
        evacuate = (
            "" if cmd.status == NodeState.UP and node.evacuate == EVACUATE_DOWN_TIMEOUT else None
        )
        changed = dataclasses.replace(node, state=cmd.status)
        if evacuate is not None:
            changed = dataclasses.replace(changed, evacuate=evacuate)
        state._node_changed(changed)


def drain_node(state: MetadataState, cmd: cmds.DrainNode) -> None:
    """Refused (unless ``force``) if a shard would be left short of live replicas."""
    node = state._node(cmd.node_id)
    if not node.draining:
        replicas.check_availability(state, node.id, "draining", cmd.force)
        state._node_changed(dataclasses.replace(node, draining=True))


def undrain_node(state: MetadataState, cmd: cmds.UndrainNode) -> None:
    node = state._node(cmd.node_id)
    evacuate = "" if node.evacuate == EVACUATE_DECOMMISSION else node.evacuate
    if node.draining or evacuate != node.evacuate:
        state._node_changed(
            dataclasses.replace(
                node, draining=False, drained_version=None, drain_acked=False, evacuate=evacuate
            )
        )


def create_stream(state: MetadataState, cmd: cmds.CreateStream) -> None:
    if cmd.name in state.streams:
        raise rejected(f"stream {cmd.name!r} already exists")
    tenant = state._tenant(cmd.tenant)
    _check_shard_count(state, cmd.shards)
    state._check_stream_quotas(tenant, 1, cmd.shards)
    rf = cmd.replication_factor or state._cfg_int("replication_factor_default")
    retention = cmd.retention_ms or state._cfg_int("retention_ms_default")
    stream = Stream(cmd.name, cmd.tenant, cmd.shards, rf, retention)
    state._put(stream)
    state._add_shards(stream, 0)
    replicas.check_strict_spread(state, _keys(stream, 0), cmd.force)


def _keys(stream: Stream, first: int) -> list[str]:
    return [shard_key(stream.name, index) for index in range(first, stream.shards)]


def _check_shard_count(state: MetadataState, shards: int) -> None:
    limit = state._cfg_int("shards_per_stream_max")
    if shards > limit:
        raise rejected(f"{shards} shards exceeds shards_per_stream_max={limit}")


def update_stream(state: MetadataState, cmd: cmds.UpdateStream) -> None:
    """Retention changes in place; new shards are placed like a create's; a new
    replication factor is reached by the planner's moves (`felix.metadata.planner`)."""
    stream = state._stream(cmd.name)
    rf = stream.replication_factor if cmd.replication_factor is None else cmd.replication_factor
    if rf != stream.replication_factor:
        replicas.check_rf_change(state, rf, cmd.force)
    shards = stream.shards if cmd.shards is None else cmd.shards
    if shards < stream.shards:
        raise rejected(f"stream {stream.name!r} has {stream.shards} shards; cannot shrink")
    _check_shard_count(state, shards)
    state._check_stream_quotas(state._tenant(stream.tenant), 0, shards - stream.shards)
    retention = stream.retention_ms if cmd.retention_ms is None else cmd.retention_ms
    updated = dataclasses.replace(
        stream, shards=shards, retention_ms=retention, replication_factor=rf
    )
    state._put(updated)
    if shards > stream.shards:
        state._add_shards(updated, stream.shards)
        replicas.check_strict_spread(state, _keys(updated, stream.shards), cmd.force)


def delete_stream(state: MetadataState, cmd: cmds.DeleteStream) -> None:
    if not config_bool(state.config_values(), "allow_stream_deletion"):
        raise rejected("stream deletion is disabled (config allow_stream_deletion=false)")
    stream = state._stream(cmd.name)
    for index in range(stream.shards):
        state._delete(KIND_SHARD, shard_key(stream.name, index))
    state._delete(KIND_STREAM, stream.name)


def set_config(state: MetadataState, cmd: cmds.SetConfig) -> None:
    value = validate_config(cmd.name, cmd.value)
    if value is None:
        state._delete(KIND_CONFIG, cmd.name)
    else:
        state._put(ConfigEntry(cmd.name, value))


def set_tenant(state: MetadataState, cmd: cmds.SetTenant) -> None:
    old = state.tenants.get(cmd.name)
    if cmd.remove:
        if old is None:
            raise rejected(f"tenant {cmd.name!r} does not exist")
        streams, _ = state.tenant_usage(cmd.name)
        if streams:
            raise rejected(f"tenant {cmd.name!r} still owns {streams} stream(s)")
        state._delete(KIND_TENANT, cmd.name)
    elif old is None:
        state._put(Tenant(cmd.name, cmd.display_name, None, None, None))
    else:
        state._put(dataclasses.replace(old, display_name=cmd.display_name))


def set_quota(state: MetadataState, cmd: cmds.SetQuota) -> None:
    tenant = state._tenant(cmd.tenant)
    quotas = Tenant(tenant.name, tenant.display_name, cmd.streams_max, cmd.shards_max,
                    cmd.bytes_per_s)  # fmt: skip
    state._put(quotas)


def move_shard_leader(state: MetadataState, cmd: cmds.MoveShardLeader) -> None:
    shard: Shard | None = state.shards.get(cmd.shard)
    if shard is None:
        raise rejected(f"shard {cmd.shard!r} does not exist")
    if cmd.node_id not in shard.replicas:
        raise rejected(f"node {cmd.node_id} is not a replica of {cmd.shard} {shard.replicas}")
    if not state._is_live(cmd.node_id):
        raise rejected(f"node {cmd.node_id} is not live (up and not draining)")
    if shard.leader != cmd.node_id:
        epoch = shard.leader_epoch + 1
        state._put(dataclasses.replace(shard, leader=cmd.node_id, leader_epoch=epoch))


def create_token(state: MetadataState, cmd: cmds.CreateToken) -> None:
    """Everything is checked before the one write: a token command never rolls back."""
    record = TokenRecord(cmd.token_id, cmd.role, cmd.node_id, cmd.secret_sha256,
                         cmd.expires_at_ms, cmd.description)  # fmt: skip
    problem = check_record(record)
    if problem is not None:
        raise CommandError(ErrorCode.BAD_REQUEST, f"create_token: {problem}")
    if record.id in state.tokens:
        raise rejected(f"token {record.id} exists")
    if len(state.tokens) >= TOKENS_MAX:
        raise rejected(f"the cluster already holds TOKENS_MAX={TOKENS_MAX} tokens")
    state._set_token(record.id, record)


def revoke_token(state: MetadataState, cmd: cmds.RevokeToken) -> None:
    if cmd.token_id not in state.tokens:
        raise rejected(f"token {cmd.token_id} does not exist")
    state._set_token(cmd.token_id, None)


HANDLERS: Final[dict[type, Callable[[MetadataState, Any], None]]] = {
    cmds.RegisterNode: register_node,
    cmds.NodeHealth: node_health,
    cmds.DrainNode: drain_node,
    cmds.UndrainNode: undrain_node,
    cmds.CreateStream: create_stream,
    cmds.UpdateStream: update_stream,
    cmds.DeleteStream: delete_stream,
    cmds.SetConfig: set_config,
    cmds.SetTenant: set_tenant,
    cmds.SetQuota: set_quota,
    cmds.MoveShardLeader: move_shard_leader,
    cmds.CreateToken: create_token,
    cmds.RevokeToken: revoke_token,
    cmds.ReassignShard: replicas.reassign_shard,
    cmds.ReplicaReady: replicas.replica_ready,
    cmds.FinishReassignment: replicas.finish_reassignment,
    cmds.CancelReassignment: replicas.cancel_reassignment,
    cmds.AckDrain: replicas.ack_drain,
    cmds.DecommissionNode: replicas.decommission_node,
    cmds.RemoveNode: replicas.remove_node,
    cmds.ExpireNode: replicas.expire_node,
}
assert set(HANDLERS) == set(cmds.COMMAND_CLASSES.values())
