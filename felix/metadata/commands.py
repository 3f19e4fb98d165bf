"""Metadata commands: typed, schema-checked, and encoded once for the Raft log.

A command travels as CBOR ``[name, args, expected_version]`` (the same three things a
`WriteRequest` carries), and both the client API and apply go through
`command_from_request`, so a command is validated by exactly one piece of code: the
schema of its dataclass (types, ranges, lengths, missing/extra fields) plus the static
checks below (name syntax, enum values).  Checks that depend on the state happen at
apply time in `state.py`.

``expected_version`` makes any command a compare-and-set on the state version before
apply (the version of the previous entry).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Final

from felix.metadata.errors import CommandError, bad_request
from felix.proto.cbor import (
    IntRange,
    MaxItems,
    MaxLen,
    ScalarValue,
    dumps,
    from_plain,
    safe_loads,
    schema_depth,
    to_plain,
    wire_array,
    wire_type,
)
from felix.proto.client_messages import Name, Record
from felix.proto.errors import ProtocolError

NodeId = Annotated[int, IntRange(0, 2**63 - 1)]
Version = Annotated[int, IntRange(0, 2**63 - 1)]
Address = Annotated[str, MaxLen(256)]
Shards = Annotated[int, IntRange(1, 100_000)]
ReplicationFactor = Annotated[int, IntRange(1, 16)]
RetentionMs = Annotated[int, IntRange(1, 2**62)]
Quota = Annotated[int, IntRange(0, 2**62)]
ReplicaSet = Annotated[tuple[NodeId, ...], MaxItems(16)]
Reason = Annotated[str, MaxLen(200)]

if TYPE_CHECKING:
    ConfigArg = int | bool | str | None
else:  # the wire schema: any scalar; `config.validate_config` checks the type per key
    ConfigArg = ScalarValue

NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
HEALTH_STATUSES: Final = ("up", "down")


@wire_type
@dataclass(frozen=True, slots=True)
class RegisterNode:
    """A broker (re)starts: new epoch = this entry's index; fenced until reported up."""

    NAME: ClassVar[str] = "register_node"
    node_id: NodeId
    address: Address
    rack: Address = ""
    expected_version: Version | None = None


@wire_type
@dataclass(frozen=True, slots=True)
class NodeHealth:
    """The leader's health verdict (or a broker report); ``epoch`` fences stale ones."""

    NAME: ClassVar[str] = "node_health"
    node_id: NodeId
    status: Name
    epoch: Version | None = None
    operator: bool = False  # an admin's "down": safety-checked unless ``force``
    force: bool = False
    expected_version: Version | None = None


@wire_type
@dataclass(frozen=True, slots=True)
class DrainNode:
    """Move leadership off a broker (controlled shutdown); refused if a shard would be
    left below ``min_live_replicas`` unless ``force`` (recorded in the entry)."""

    NAME: ClassVar[str] = "drain_node"
    node_id: NodeId
    force: bool = False
    expected_version: Version | None = None


@wire_type
@dataclass(frozen=True, slots=True)
class UndrainNode:
    """End a drain, and a decommission not yet finished."""

    NAME: ClassVar[str] = "undrain_node"
    node_id: NodeId
    expected_version: Version | None = None


@wire_type
@dataclass(frozen=True, slots=True)
class AckDrain:
    """The leader saw every live broker apply ``drained_version``: the drain is complete
    (controlled shutdown, docs/architecture.md §13).  Stale if the version moved."""

    NAME: ClassVar[str] = "ack_drain"
    node_id: NodeId
    drained_version: Version
    expected_version: Version | None = None


@wire_type
@dataclass(frozen=True, slots=True)
class DecommissionNode:
    """Drain a broker and move every replica off it (through the planner, bounded);
    ``remove_node`` deregisters it once it holds nothing."""

    NAME: ClassVar[str] = "decommission_node"
    node_id: NodeId
    force: bool = False
    expected_version: Version | None = None


@wire_type
@dataclass(frozen=True, slots=True)
class RemoveNode:
    """Forget a broker that holds no replica (decommissioned, or never used)."""

    NAME: ClassVar[str] = "remove_node"
    node_id: NodeId
    expected_version: Version | None = None


@wire_type
@dataclass(frozen=True, slots=True)
class ExpireNode:
    """The leader's verdict that a broker has been down past ``replica_down_timeout_s``:
    its replicas are re-replicated elsewhere.  ``epoch`` fences a broker that came back."""

    NAME: ClassVar[str] = "expire_node"
    node_id: NodeId
    epoch: Version
    expected_version: Version | None = None


@wire_type
@dataclass(frozen=True, slots=True)
class CreateStream:
    """None for replication_factor / retention_ms means the cluster default (resolved
    once, at creation, and stored on the stream)."""

    NAME: ClassVar[str] = "create_stream"
    name: Name
    shards: Shards
    tenant: Name
    replication_factor: ReplicationFactor | None = None
    retention_ms: RetentionMs | None = None
    force: bool = False  # place without rack spread even when placement is strict
    expected_version: Version | None = None


@wire_type
@dataclass(frozen=True, slots=True)
class UpdateStream:
    """None leaves a field unchanged; shards may only grow; a new replication factor is
    reached by the planner's bounded, make-before-break moves."""

    NAME: ClassVar[str] = "update_stream"
    name: Name
    shards: Shards | None = None
    replication_factor: ReplicationFactor | None = None
    retention_ms: RetentionMs | None = None
    force: bool = False
    expected_version: Version | None = None


@wire_type
@dataclass(frozen=True, slots=True)
class DeleteStream:
    NAME: ClassVar[str] = "delete_stream"
    name: Name
    expected_version: Version | None = None


@wire_type
@dataclass(frozen=True, slots=True)
class SetConfig:
    """value None reverts the key to its default."""

    NAME: ClassVar[str] = "set_config"
    name: Name
    value: ConfigArg
    expected_version: Version | None = None


@wire_type
@dataclass(frozen=True, slots=True)
class SetTenant:
    """Create or update a tenant; ``remove`` deletes it (only when it owns no streams)."""

    NAME: ClassVar[str] = "set_tenant"
    name: Name
    display_name: Name = ""
    remove: bool = False
    expected_version: Version | None = None


@wire_type
@dataclass(frozen=True, slots=True)
class SetQuota:
    """Replace all of a tenant's quotas (None = unlimited).  Lowering a quota below the
    current usage is allowed: it only refuses further growth."""

    NAME: ClassVar[str] = "set_quota"
    tenant: Name
    streams_max: Quota | None = None
    shards_max: Quota | None = None
    bytes_per_s: Quota | None = None
    expected_version: Version | None = None


@wire_type
@dataclass(frozen=True, slots=True)
class MoveShardLeader:
    """Make ``node_id`` (a live replica) the leader of ``shard`` ("stream/index")."""

    NAME: ClassVar[str] = "move_shard_leader"
    shard: Name
    node_id: NodeId
    expected_version: Version | None = None


@wire_type
@dataclass(frozen=True, slots=True)
class CreateToken:
    """Store an API token's role and secret hash (`felix.metadata.tokens`); the secret
    itself never reaches the cluster."""

    NAME: ClassVar[str] = "create_token"
    token_id: Annotated[str, MaxLen(16)]
    role: Name
    secret_sha256: Annotated[str, MaxLen(64)]
    node_id: NodeId | None = None
    expires_at_ms: Annotated[int, IntRange(0, 2**62)] | None = None
    description: Annotated[str, MaxLen(200)] = ""
    expected_version: Version | None = None


@wire_type
@dataclass(frozen=True, slots=True)
class RevokeToken:
    """Forget a token: every node refuses it, and closes its streams, once applied."""

    NAME: ClassVar[str] = "revoke_token"
    token_id: Annotated[str, MaxLen(16)]
    expected_version: Version | None = None


@wire_type
@dataclass(frozen=True, slots=True)
class ReassignShard:
    """Start moving ``shard`` to the replica set ``replicas`` (make-before-break): new
    replicas join catching up, old ones leave only once every new one is ready.  The
    ``reason`` is the planner's (or the operator's) and is shown by ``felix ctl``."""

    NAME: ClassVar[str] = "reassign_shard"
    shard: Name
    replicas: ReplicaSet
    reason: Reason = ""
    force: bool = False  # past the move bounds and the live-replica check
    expected_version: Version | None = None


@wire_type
@dataclass(frozen=True, slots=True)
class ReplicaReady:
    """A broker's copy of ``shard`` has caught up (`MetadataView.report_replica_ready`)."""

    NAME: ClassVar[str] = "replica_ready"
    shard: Name
    node_id: NodeId
    expected_version: Version | None = None


@wire_type
@dataclass(frozen=True, slots=True)
class FinishReassignment:
    """Drop the leaving replicas of ``shard``: every joining one is ready and none of
    the leaving ones leads.  ``force`` drops them even before (recorded)."""

    NAME: ClassVar[str] = "finish_reassignment"
    shard: Name
    force: bool = False
    expected_version: Version | None = None


@wire_type
@dataclass(frozen=True, slots=True)
class CancelReassignment:
    """Return ``shard`` to the replicas it had before its reassignment."""

    NAME: ClassVar[str] = "cancel_reassignment"
    shard: Name
    expected_version: Version | None = None


TOKEN_COMMANDS: Final = (CreateToken, RevokeToken)
REPLICA_COMMANDS: Final = (ReassignShard, ReplicaReady, FinishReassignment, CancelReassignment)
NODE_COMMANDS: Final = (AckDrain, DecommissionNode, RemoveNode, ExpireNode)

Command = (
    RegisterNode
    | NodeHealth
    | DrainNode
    | UndrainNode
    | CreateStream
    | UpdateStream
    | DeleteStream
    | SetConfig
    | SetTenant
    | SetQuota
    | MoveShardLeader
    | CreateToken
    | RevokeToken
    | ReassignShard
    | ReplicaReady
    | FinishReassignment
    | CancelReassignment
    | AckDrain
    | DecommissionNode
    | RemoveNode
    | ExpireNode
)
COMMAND_CLASSES: Final[dict[str, type[Command]]] = {
    cls.NAME: cls
    for cls in (
        RegisterNode,
        NodeHealth,
        DrainNode,
        UndrainNode,
        CreateStream,
        UpdateStream,
        DeleteStream,
        SetConfig,
        SetTenant,
        SetQuota,
        MoveShardLeader,
        CreateToken,
        RevokeToken,
        *REPLICA_COMMANDS,
        *NODE_COMMANDS,
    )
}


@wire_array
@dataclass(frozen=True, slots=True)
class _Envelope:
    command: Name
    args: Record
    expected_version: Version | None


_ENVELOPE_DEPTH: Final = schema_depth(_Envelope)


def command_from_request(
    command: str, args: Record, expected_version: int | None = None
) -> Command:
    """Build a command from a `WriteRequest`'s name and args, or raise `CommandError`
    (code ``bad_request``) saying what is wrong.  Optional args may be omitted."""
    cls = COMMAND_CLASSES.get(command)
    if cls is None:
        known = ", ".join(sorted(COMMAND_CLASSES))
        raise bad_request(f"unknown command {command!r} (known: {known})")
    if "expected_version" in args:
        raise bad_request(f"{command}: expected_version belongs on the request, not in args")
    plain: dict[str, Any] = _defaults(cls)
    # A Record holds arrays as tuples (immutable); the schema decoder takes lists.
    plain.update({k: list(v) if isinstance(v, tuple) else v for k, v in args.items()})
    plain["expected_version"] = expected_version
    try:
        cmd = from_plain(cls, plain)
    except ProtocolError as exc:
        raise bad_request(f"{command}: {exc}") from None
    _check_static(cmd)
    return cmd


def _defaults(cls: type[Command]) -> dict[str, Any]:
    return {
        f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
    }


def _check_static(cmd: Command) -> None:
    """State-independent checks the schema cannot express."""
    for field in ("name", "tenant"):
        value = getattr(cmd, field, None)
        if isinstance(value, str) and not NAME_PATTERN.fullmatch(value):
            raise bad_request(
                f"{cmd.NAME}: {field} {value[:64]!r} must match {NAME_PATTERN.pattern}"
            )
    if isinstance(cmd, NodeHealth) and cmd.status not in HEALTH_STATUSES:
        raise bad_request(f"node_health: status must be one of {HEALTH_STATUSES}")
    if isinstance(cmd, RegisterNode) and not cmd.address:
        raise bad_request("register_node: address must not be empty")
    if isinstance(cmd, ReassignShard) and (
        not cmd.replicas or len(set(cmd.replicas)) != len(cmd.replicas)
    ):
        raise bad_request("reassign_shard: replicas must be distinct node ids, at least one")


def command_args(cmd: Command) -> Record:
    """The args map of ``cmd`` (everything but expected_version), as in a WriteRequest."""
    plain: dict[str, Any] = to_plain(cmd)
    del plain["expected_version"]
    return plain


def encode_command(cmd: Command) -> bytes:
    """The bytes proposed to Raft for ``cmd``."""
    return dumps(to_plain(_Envelope(cmd.NAME, command_args(cmd), cmd.expected_version)))


def decode_command(data: bytes) -> Command:
    """Inverse of `encode_command`; any problem raises `CommandError` (bad_request)."""
    try:
        envelope = from_plain(_Envelope, safe_loads(data, max_depth=_ENVELOPE_DEPTH))
    except ProtocolError as exc:
        raise bad_request(f"undecodable command: {exc}") from None
    return command_from_request(envelope.command, envelope.args, envelope.expected_version)


__all__ = [
    "COMMAND_CLASSES",
    "NODE_COMMANDS",
    "REPLICA_COMMANDS",
    "TOKEN_COMMANDS",
    "AckDrain",
    "CancelReassignment",
    "Command",
    "CommandError",
    "CreateStream",
    "CreateToken",
    "DecommissionNode",
    "DeleteStream",
    "DrainNode",
    "ExpireNode",
    "FinishReassignment",
    "MoveShardLeader",
    "NodeHealth",
    "ReassignShard",
    "RegisterNode",
    "RemoveNode",
    "ReplicaReady",
    "RevokeToken",
    "SetConfig",
    "SetQuota",
    "SetTenant",
    "UndrainNode",
    "UpdateStream",
    "command_args",
    "command_from_request",
    "decode_command",
    "encode_command",
]
