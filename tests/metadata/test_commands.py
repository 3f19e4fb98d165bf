"""Command encoding, request mapping and hostile bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from felix.metadata.commands import (
    COMMAND_CLASSES,
    AckDrain,
    CancelReassignment,
    Command,
    CreateStream,
    CreateToken,
    DecommissionNode,
    DeleteStream,
    DrainNode,
    ExpireNode,
    FinishReassignment,
    MoveShardLeader,
    NodeHealth,
    ReassignShard,
    RegisterNode,
    RemoveNode,
    ReplicaReady,
    RevokeToken,
    SetConfig,
    SetQuota,
    SetTenant,
    UndrainNode,
    UpdateStream,
    command_args,
    command_from_request,
    decode_command,
    encode_command,
)
from felix.metadata.errors import CommandError
from felix.metadata.state import MetadataState
from felix.proto.cbor import dumps

EXAMPLES: list[Command] = [
    RegisterNode(1, "10.0.0.1:9092", "rack-a"),
    NodeHealth(1, "up", epoch=4),
    DrainNode(1),
    UndrainNode(1, expected_version=9),
    CreateStream("orders", 12, "acme", replication_factor=3, retention_ms=60_000),
    UpdateStream("orders", shards=16),
    DeleteStream("orders"),
    SetConfig("streams_max", 5),
    SetConfig("rack_aware_placement", False),
    SetConfig("streams_max", None),
    SetTenant("acme", display_name="Acme Inc"),
    SetQuota("acme", streams_max=3, shards_max=None, bytes_per_s=1 << 20),
    MoveShardLeader("orders/3", 2),
    CreateToken("00000000000000ab", "broker", "0" * 64, node_id=7, expires_at_ms=5),
    RevokeToken("00000000000000ab"),
    ReassignShard("orders/3", (4, 5, 6), reason="balance", force=True),
    ReplicaReady("orders/3", 4),
    FinishReassignment("orders/3"),
    CancelReassignment("orders/3"),
    AckDrain(1, 17),
    DecommissionNode(1, force=True),
    RemoveNode(1),
    ExpireNode(1, epoch=4),
    NodeHealth(1, "down", operator=True, force=True),
    DrainNode(2, force=True),
    UpdateStream("orders", replication_factor=5, force=True),
]


def test_every_command_has_an_example() -> None:
    assert {type(c) for c in EXAMPLES} == set(COMMAND_CLASSES.values())


@pytest.mark.parametrize("cmd", EXAMPLES, ids=lambda c: type(c).__name__)
def test_encode_decode_round_trip(cmd: Command) -> None:
    assert decode_command(encode_command(cmd)) == cmd


@pytest.mark.parametrize("cmd", EXAMPLES, ids=lambda c: type(c).__name__)
def test_request_round_trip(cmd: Command) -> None:
    assert command_from_request(cmd.NAME, command_args(cmd), cmd.expected_version) == cmd


def test_optional_args_may_be_omitted() -> None:
    cmd = command_from_request("create_stream", {"name": "s", "shards": 2, "tenant": "t"})
    assert cmd == CreateStream("s", 2, "t")


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("nope", {}, "unknown command 'nope'"),
        ("create_stream", {"name": "s", "tenant": "t"}, "missing field(s): shards"),
        ("create_stream", {"name": "s", "shards": 1, "tenant": "t", "x": 1}, "unexpected"),
        ("create_stream", {"name": "s", "shards": 0, "tenant": "t"}, "shards: integer 0 out"),
        ("create_stream", {"name": "s", "shards": "2", "tenant": "t"}, "expected integer"),
        ("create_stream", {"name": "a/b", "shards": 1, "tenant": "t"}, "name 'a/b' must"),
        ("create_stream", {"name": "s", "shards": 1, "tenant": ""}, "tenant '' must"),
        ("node_health", {"node_id": 1, "status": "sideways"}, "status must be one of"),
        ("node_health", {"node_id": -1, "status": "up"}, "node_id"),
        ("register_node", {"node_id": 1, "address": ""}, "address must not be empty"),
        ("drain_node", {"node_id": True}, "expected integer, got bool"),
        ("drain_node", {"node_id": 1, "expected_version": 3}, "belongs on the request"),
    ],
)
def test_request_validation_errors_are_clear(name: str, args: dict, message: str) -> None:
    with pytest.raises(CommandError) as info:
        command_from_request(name, args)
    assert info.value.code == "bad_request"
    assert message in info.value.detail


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff",
        b"\x80",
        dumps(["create_stream"]),
        dumps({"command": "drain_node"}),
        dumps(["drain_node", {"node_id": 1}, None]) + b"\x00",
        dumps(["drain_node", {"node_id": {"deep": [1]}}, None]),
        dumps(["drain_node", {1: 1}, None]),
        dumps(["bogus", {}, None]),
        dumps(["drain_node", {"node_id": 1}, -5]),
    ],
)
def test_bad_bytes_are_a_rejection_not_an_exception(data: bytes) -> None:
    state = MetadataState()
    result = state.apply(1, data)
    assert result.error is not None and result.error.code == "bad_request"
    assert result.command is None
    assert result.delta.version == 1 and result.delta.changes == ()
    assert state.version == 1


@given(st.binary(max_size=200))
def test_fuzzed_bytes_never_raise(data: bytes) -> None:
    result = MetadataState().apply(1, data)
    assert result.error is not None and result.delta.changes == ()


@given(st.sampled_from(EXAMPLES), st.integers(0, 60), st.integers(0, 255))
def test_bit_flipped_commands_never_raise(cmd: Command, position: int, value: int) -> None:
    data = bytearray(encode_command(cmd))
    data[position % len(data)] = value
    state = MetadataState()
    state.apply(1, bytes(data))
    assert state.version == 1
