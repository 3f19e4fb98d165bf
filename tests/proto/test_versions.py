"""Protocol versions in the codec: fields and message types gated by `Since`, strict per
negotiated version, and the negotiation of a version from two ranges."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import cbor2
import pytest

from felix.proto.cbor import IntRange, OmitDefault, Registry, Since, wire_array, wire_type
from felix.proto.cli import run_decode
from felix.proto.client_messages import CLIENT_TO_SERVER, SERVER_TO_CLIENT, ClientHello
from felix.proto.client_messages import WatchProgress as RealWatchProgress
from felix.proto.errors import MessageTooNew, NotInVersion, SchemaError, UnknownMessageType
from felix.proto.frames import encode_frame
from felix.proto.raft_messages import PEER, AppendEntries, Entry, EntryKind
from felix.proto.versions import (
    VersionRange,
    VersionRefused,
    negotiate,
    supported_versions,
)

TEST = Registry("test")


@wire_array
@dataclass(frozen=True, slots=True)
class Pair:
    a: int
    b: Annotated[int, Since(2)] = 0  # an array's newer items come last


@wire_type
@dataclass(frozen=True, slots=True)
class Inner:
    x: int
    tag: Annotated[str, Since(2)] = ""


@TEST.message("Ping")
@dataclass(frozen=True, slots=True)
class Ping:
    seq: int
    inner: Inner
    pairs: tuple[Pair, ...]
    probe: Annotated[int, IntRange(0, 100), Since(2)] = 0
    labels: Annotated[tuple[str, ...], Since(2)] = field(default_factory=tuple)


@TEST.message("Shiny", since=2)
@dataclass(frozen=True, slots=True)
class Shiny:
    n: int


@TEST.message("Greeting")
@dataclass(frozen=True, slots=True)
class Greeting:
    name: str
    level: Annotated[int | None, OmitDefault()] = None


def wire(payload: bytes) -> Any:
    return cbor2.loads(payload)


PING = Ping(1, Inner(5, "t"), (Pair(1, 2),), probe=7, labels=("a",))


def test_encoding_at_v1_omits_newer_fields_everywhere() -> None:
    assert wire(TEST.encode(PING, 1)) == {
        "type": "Ping",
        "seq": 1,
        "inner": {"x": 5},
        "pairs": [[1]],
    }
    assert wire(TEST.encode(PING)) == wire(TEST.encode(PING, 1))  # the default: baseline


def test_encoding_at_v2_carries_them() -> None:
    assert wire(TEST.encode(PING, 2)) == {
        "type": "Ping",
        "seq": 1,
        "inner": {"x": 5, "tag": "t"},
        "pairs": [[1, 2]],
        "probe": 7,
        "labels": ["a"],
    }
    assert TEST.decode(TEST.encode(PING, 2), 2) == PING
    assert TEST.decode(TEST.encode(PING, 3), 3) == PING  # later versions: every field


def test_decoding_at_v1_gives_the_defaults() -> None:
    assert TEST.decode(TEST.encode(PING, 1), 1) == Ping(1, Inner(5), (Pair(1),))


def test_decoding_at_v1_refuses_a_v2_field() -> None:
    v2 = TEST.encode(PING, 2)
    with pytest.raises(
        SchemaError, match=r"Ping: field\(s\) labels, probe added after protocol version 1"
    ):
        TEST.decode(v2, 1)
    nested = wire(TEST.encode(PING, 1)) | {"inner": {"x": 5, "tag": "t"}}
    with pytest.raises(
        SchemaError, match=r"Ping\.inner: field\(s\) tag added after protocol version 1"
    ):
        TEST.decode(cbor2.dumps(nested), 1)
    array = wire(TEST.encode(PING, 1)) | {"pairs": [[1, 2]]}
    with pytest.raises(
        SchemaError,
        match=r"Ping\.pairs\[0\]: Pair needs 1 items \(a\) at protocol version 1, got 2",
    ):
        TEST.decode(cbor2.dumps(array), 1)


def test_decoding_at_v2_is_strict_for_v2() -> None:
    """A v2 connection requires the v2 fields: a v1 encoding is not a v2 message."""
    with pytest.raises(SchemaError, match="missing field"):
        TEST.decode(TEST.encode(PING, 1), 2)
    bad = wire(TEST.encode(PING, 2)) | {"probe": 101}
    with pytest.raises(SchemaError, match=r"Ping\.probe: integer 101 out of range"):
        TEST.decode(cbor2.dumps(bad), 2)


@pytest.mark.parametrize("version", [1, 2])
def test_unknown_fields_are_still_refused(version: int) -> None:
    plain = wire(TEST.encode(PING, version)) | {"bogus": 1}
    with pytest.raises(SchemaError, match=r"unexpected field\(s\): bogus"):
        TEST.decode(cbor2.dumps(plain), version)


def test_a_newer_message_type_is_neither_sent_nor_accepted() -> None:
    with pytest.raises(
        MessageTooNew, match="Shiny needs protocol version 2, this connection speaks 1"
    ):
        TEST.encode(Shiny(1), 1)
    v2 = TEST.encode(Shiny(1), 2)
    with pytest.raises(
        NotInVersion, match="'Shiny' needs protocol version 2, this connection speaks 1"
    ):
        TEST.decode(v2, 1)
    assert TEST.decode(v2, 2) == Shiny(1)
    with pytest.raises(UnknownMessageType, match="unknown test message type 'Nope'"):
        TEST.decode(cbor2.dumps({"type": "Nope"}), 2)
    assert TEST.since(Shiny) == 2
    assert TEST.since(Ping) == 1


def test_omit_default_fields_may_be_absent() -> None:
    assert wire(TEST.encode(Greeting("a"))) == {"type": "Greeting", "name": "a"}
    assert wire(TEST.encode(Greeting("a", 3))) == {"type": "Greeting", "name": "a", "level": 3}
    assert TEST.decode(cbor2.dumps({"type": "Greeting", "name": "a"})) == Greeting("a")
    assert TEST.decode(cbor2.dumps({"type": "Greeting", "name": "a", "level": 3})) == Greeting(
        "a", 3
    )
    with pytest.raises(SchemaError, match=r"Greeting\.level: expected integer"):
        TEST.decode(cbor2.dumps({"type": "Greeting", "name": "a", "level": "x"}))
    with pytest.raises(SchemaError, match=r"unexpected field\(s\): more"):
        TEST.decode(cbor2.dumps({"type": "Greeting", "name": "a", "more": 1}))
    with pytest.raises(SchemaError, match=r"missing field\(s\): name"):
        TEST.decode(cbor2.dumps({"type": "Greeting", "level": 1}))


def test_declarations_that_cannot_work_are_refused() -> None:
    reg = Registry("bad")
    with pytest.raises(TypeError, match="a field added in version 2 needs a default"):

        @reg.message("NoDefault")
        @dataclass(frozen=True, slots=True)
        class NoDefault:
            a: Annotated[int, Since(2)]

    with pytest.raises(TypeError, match="array fields must be in the order of their versions"):

        @wire_array
        @dataclass(frozen=True, slots=True)
        class Backwards:
            a: Annotated[int, Since(2)] = 0
            b: int = 0

    with pytest.raises(ValueError, match="protocol version 0 does not exist"):
        TEST.encode(PING, 0)


# --- the real protocol ----------------------------------------------------------------


def test_the_synthetic_v2_fields() -> None:
    append = AppendEntries(2, 1, 0, 0, (Entry(1, 2, EntryKind.NORMAL, b"x"),), 0, 3, next_probe=9)
    assert "next_probe" not in wire(PEER.encode(append, 1))
    assert PEER.decode(PEER.encode(append, 1), 1).next_probe == 0
    assert PEER.decode(PEER.encode(append, 2), 2) == append
    with pytest.raises(SchemaError, match="next_probe added after protocol version 1"):
        PEER.decode(PEER.encode(append, 2), 1)
    progress = RealWatchProgress(5, next_probe=5)
    assert SERVER_TO_CLIENT.decode(SERVER_TO_CLIENT.encode(progress, 1), 1).next_probe == 0
    assert SERVER_TO_CLIENT.decode(SERVER_TO_CLIENT.encode(progress, 2), 2) == progress


def test_an_old_client_hello_without_a_range_decodes() -> None:
    old = {"type": "Hello", "node_id": 3, "from_version": None, "token": "", "history": ""}
    assert CLIENT_TO_SERVER.decode(cbor2.dumps(old)) == ClientHello(3, None, "")
    new = ClientHello(3, None, "", "", 1, 2)
    assert wire(CLIENT_TO_SERVER.encode(new)) == old | {"version_min": 1, "version_max": 2}
    assert CLIENT_TO_SERVER.decode(CLIENT_TO_SERVER.encode(new)) == new
    with pytest.raises(
        SchemaError, match=r"Hello\.version_min: integer 0 out of range \[1, 65535\]"
    ):
        CLIENT_TO_SERVER.decode(cbor2.dumps(old | {"version_min": 0, "version_max": 1}))


# --- negotiation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "theirs", "chosen"),
    [((1, 1), (1, 1), 1), ((1, 2), (1, 1), 1), ((1, 1), (1, 2), 1), ((1, 2), (1, 2), 2),
     ((1, 3), (2, 5), 3), ((2, 2), (1, 2), 2)],
)  # fmt: skip
def test_the_highest_common_version_is_chosen(
    ours: tuple[int, int], theirs: tuple[int, int], chosen: int
) -> None:
    assert negotiate(VersionRange(*ours), VersionRange(*theirs)) == chosen
    assert negotiate(VersionRange(*theirs), VersionRange(*ours)) == chosen  # symmetric


def test_no_overlap_is_refused_naming_both_ranges() -> None:
    with pytest.raises(VersionRefused) as refused:
        negotiate(VersionRange(1, 1), VersionRange(2, 3), us="node 1", them="node 2")
    assert str(refused.value) == (
        "no common protocol version: node 2 speaks [2, 3], node 1 speaks [1, 1]"
    )


def test_ranges_are_checked() -> None:
    with pytest.raises(ValueError, match=r"bad protocol version range \[3, 2\]"):
        VersionRange(3, 2)
    with pytest.raises(ValueError, match=r"bad protocol version range \[0, 1\]"):
        VersionRange(0, 1)
    assert 2 in VersionRange(1, 2)
    assert 3 not in VersionRange(1, 2)


def test_next_version_only_with_the_environment_switch() -> None:
    assert supported_versions({}) == VersionRange(1, 1)
    assert supported_versions({"FELIX_PROTOCOL_NEXT": "0"}) == VersionRange(1, 1)
    assert supported_versions({"FELIX_PROTOCOL_NEXT": "1"}) == VersionRange(1, 2)


def test_proto_decode_reads_a_capture_at_its_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capture = tmp_path / "frames"
    message = AppendEntries(2, 1, 0, 0, (), 0, 3, next_probe=9)
    capture.write_bytes(encode_frame(PEER.encode(message, 2)))
    args = argparse.Namespace(file=str(capture), channel="peer", output="json")
    assert run_decode(argparse.Namespace(**vars(args), protocol_version=2)) == 0
    assert json.loads(capsys.readouterr().out)["next_probe"] == 9
    assert run_decode(argparse.Namespace(**vars(args), protocol_version=1)) == 1
    assert "next_probe added after protocol version 1" in capsys.readouterr().err
