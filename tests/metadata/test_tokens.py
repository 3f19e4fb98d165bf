"""API tokens in the metadata state: private records, applied like any command, kept in
snapshots, never in the brokers' view, deltas or digest."""

from __future__ import annotations

import dataclasses

import pytest

from felix.metadata.commands import CreateToken, RevokeToken, SetTenant, command_from_request
from felix.metadata.errors import CommandError
from felix.metadata.snapshot import decode_snapshot
from felix.metadata.state import MetadataState
from felix.metadata.tokens import (
    TokenFormatError,
    format_token,
    parse_token,
    secret_hash,
    secret_matches,
)
from felix.proto.cbor import dumps, to_plain
from tests.metadata.harness import Harness

SECRET = bytes(range(32))
TOKEN = format_token("0123456789abcdef", SECRET)
HASH = secret_hash(parse_token(TOKEN).secret)


def create(token_id: str = "0123456789abcdef", **fields: object) -> CreateToken:
    args: dict[str, object] = {"role": "admin", "secret_sha256": HASH, **fields}
    return CreateToken(token_id, **args)  # type: ignore[arg-type]


def test_a_token_round_trips_through_its_text_form() -> None:
    parsed = parse_token(TOKEN)
    assert TOKEN.startswith("fx1.0123456789abcdef.") and len(TOKEN) == 64
    assert parsed.id == "0123456789abcdef"
    assert secret_hash(parsed.secret) == HASH


@pytest.mark.parametrize(
    "text",
    [
        "",
        "fx1",
        "fx2.0123456789abcdef." + "A" * 43,
        "fx1.0123456789ABCDEF." + "A" * 43,
        "fx1.0123456789abcdef." + "A" * 42,
        "fx1.0123456789abcdef." + "A" * 43 + ".x",
        "fx1.0123456789abcdef." + "+" * 43,
        "x" * 10_000,
    ],
)
def test_malformed_tokens_are_refused_without_echoing_them(text: str) -> None:
    with pytest.raises(TokenFormatError) as info:
        parse_token(text)
    assert "A" * 10 not in str(info.value) and "x" * 50 not in str(info.value)


def test_a_created_token_is_private_to_the_control_plane() -> None:
    h = Harness()
    h.ok(SetTenant("acme"))
    records, digest = h.records(), h.state.digest
    delta = h.ok(create(description="ci"))
    assert delta.changes == ()  # brokers see a version bump, nothing else
    assert h.records() == records and h.state.digest == digest
    record = h.state.tokens["0123456789abcdef"]
    assert record.role == "admin" and record.description == "ci"
    assert secret_matches(record, parse_token(TOKEN).secret)
    assert not secret_matches(record, "B" * 43)
    assert h.state.tokens_generation == 1


@pytest.mark.parametrize(
    ("command", "code", "match"),
    [
        (create(role="root"), "bad_request", "role must be one of"),
        (create(role="broker"), "bad_request", "names exactly one node id"),
        (create(role="reader", node_id=3), "bad_request", "names exactly one node id"),
        (create(secret_sha256="ab" * 31), "bad_request", "64 lowercase hex"),
        (create(token_id="not-hex-digits!!"), "bad_request", "16 lowercase hex"),
        (RevokeToken("0123456789abcdef"), "rejected", "does not exist"),
    ],
)
def test_a_refused_token_command_changes_nothing(command: object, code: str, match: str) -> None:
    h = Harness()
    h.reject(command, code, match)  # type: ignore[arg-type]
    assert h.state.tokens == {} and h.state.tokens_generation == 0


def test_duplicate_ids_are_refused_and_revocation_removes_the_record() -> None:
    h = Harness()
    h.ok(create())
    h.reject(create(role="reader"), "rejected", "exists")
    assert h.state.tokens["0123456789abcdef"].role == "admin"
    assert h.ok(RevokeToken("0123456789abcdef")).changes == ()
    assert h.state.tokens == {} and h.state.tokens_generation == 2


def test_tokens_survive_a_snapshot_and_older_snapshots_still_restore() -> None:
    h = Harness()
    h.ok(SetTenant("acme"))
    h.ok(create("00000000000000aa", role="broker", node_id=7, expires_at_ms=5))
    h.ok(create("00000000000000bb", role="reader"))
    restored = MetadataState.restore(h.state.snapshot())
    assert restored.tokens == h.state.tokens
    assert restored.snapshot() == h.state.snapshot()
    version, digest, records, tokens, _ = decode_snapshot(h.state.snapshot())
    assert [t.id for t in tokens] == ["00000000000000aa", "00000000000000bb"]
    old_format = dumps([1, version, digest, [to_plain(r) for r in records]])
    assert MetadataState.restore(old_format).tokens == {}


def test_a_snapshot_with_a_bad_token_record_is_refused() -> None:
    h = Harness()
    h.ok(create())
    version, digest, records, tokens, _ = decode_snapshot(h.state.snapshot())
    bad = dataclasses.replace(tokens[0], role="root")
    data = dumps([2, version, digest, [to_plain(r) for r in records], [to_plain(bad)]])
    with pytest.raises(Exception, match="role must be one of"):
        MetadataState.restore(data)


def test_the_request_form_takes_optional_fields() -> None:
    cmd = command_from_request(
        "create_token", {"token_id": "0123456789abcdef", "role": "reader", "secret_sha256": HASH}
    )
    assert isinstance(cmd, CreateToken) and cmd.node_id is None and cmd.expires_at_ms is None
    with pytest.raises(CommandError, match="create_token"):
        command_from_request("create_token", {"token_id": "x", "role": 5, "secret_sha256": ""})
