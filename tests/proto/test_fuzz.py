"""Hostile input: nothing but ProtocolError may ever leave a decoder."""

from __future__ import annotations

import contextlib
import random

import cbor2
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from felix.proto.client_messages import CLIENT_TO_SERVER, SERVER_TO_CLIENT
from felix.proto.errors import ProtocolError
from felix.proto.frames import FrameDecoder, encode_frame
from felix.proto.raft_messages import PEER
from tests.proto.strategies import message_strategy

REGISTRIES = (PEER, CLIENT_TO_SERVER, SERVER_TO_CLIENT)
ALL_TYPES = [(reg, cls) for reg in REGISTRIES for cls in reg.classes]


def decode_or_protocol_error(payload: bytes) -> None:
    for registry in REGISTRIES:
        with contextlib.suppress(ProtocolError):
            registry.decode(payload)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
@example(b"")
@example(b"\xff")
@example(b"\xa1\x64type\xf9\x7e\x00")  # {"type": NaN}
@example(b"\xa1\x64type\xd8\x23\x61a")  # {"type": regex}
def test_arbitrary_bytes_raise_only_protocol_error(payload: bytes) -> None:
    decode_or_protocol_error(payload)


CBOR_ITEMS = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats()
    | st.text(max_size=10)
    | st.binary(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8) | st.integers(), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(item=CBOR_ITEMS, type_name=st.sampled_from([cls for _, cls in ALL_TYPES]))
def test_well_formed_cbor_of_the_wrong_shape(item: object, type_name: type) -> None:
    """Valid CBOR that is not a valid message: wrong types in every position."""
    for registry in REGISTRIES:
        if type_name in registry.classes:
            plain = {"type": registry.type_name(type_name)}
            if isinstance(item, dict):
                plain.update({str(k): v for k, v in item.items()})
            else:
                plain["x"] = item
            with contextlib.suppress(ProtocolError):
                registry.decode(cbor2.dumps(plain))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(min_value=0, max_value=2**32))
def test_mutated_valid_messages(data: st.DataObject, seed: int) -> None:
    """Bit flips, truncations, insertions and lying lengths in real messages."""
    registry, cls = data.draw(st.sampled_from(ALL_TYPES))
    encoded = bytearray(registry.encode(data.draw(message_strategy(cls))))
    rng = random.Random(seed)
    for _ in range(rng.randint(1, 4)):
        action = rng.randrange(4)
        pos = rng.randrange(len(encoded) + 1)
        if action == 0 and encoded:
            encoded[pos % len(encoded)] ^= 1 << rng.randrange(8)
        elif action == 1:
            del encoded[pos:]
        elif action == 2:
            encoded[pos:pos] = rng.randbytes(rng.randint(1, 4))
        elif encoded:
            encoded[pos % len(encoded)] = rng.choice([0x5B, 0x7B, 0x9B, 0xBB, 0xFF, 0xD8])
    decode_or_protocol_error(bytes(encoded))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.integers(min_value=1, max_value=64))
def test_frame_stream_garbage(stream: bytes, frame_bytes_max: int) -> None:
    decoder = FrameDecoder(frame_bytes_max=frame_bytes_max)
    try:
        decoder.feed(stream)
        decoder.feed(b"")
        while isinstance(frame := decoder.next_frame(), bytes):
            decode_or_protocol_error(frame)
    except ProtocolError:
        pass


def test_large_message_through_a_chunked_stream() -> None:
    """8,000 entries fed in 1 KB chunks come out whole (time linearity: bench/codec.py)."""
    small = PEER.encode(_append_with(1_000))
    big = PEER.encode(_append_with(8_000))
    assert len(PEER.decode(big).entries) == 8 * len(PEER.decode(small).entries)
    frame = encode_frame(big)
    decoder = FrameDecoder()
    for i in range(0, len(frame), 1000):
        decoder.feed(frame[i : i + 1000])
    assert decoder.next_frame() == big


def _append_with(n: int) -> object:
    from felix.proto.raft_messages import AppendEntries, Entry, EntryKind

    entries = tuple(Entry(i + 1, 1, EntryKind.NORMAL, b"e") for i in range(n))
    return AppendEntries(1, 1, 0, 0, entries, 0, 0)
