"""The sans-IO frame codec: round trips, every split, EOF rules, and the size bound."""

from __future__ import annotations

import itertools
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from felix.proto.errors import FrameTooLarge, ProtocolError, TruncatedFrame
from felix.proto.frames import CLOSED, NEED_DATA, FrameDecoder, encode_frame


def drain(decoder: FrameDecoder) -> list[bytes]:
    frames = []
    while True:
        frame = decoder.next_frame()
        if not isinstance(frame, bytes):
            return frames
        frames.append(frame)


PAYLOADS = [b"", b"a", b"hello world", bytes(range(256)) * 3, b"\x00\x00\x00\x05"]


def test_round_trip_in_one_feed() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"".join(encode_frame(p) for p in PAYLOADS))
    assert drain(decoder) == PAYLOADS
    assert decoder.next_frame() is NEED_DATA


def test_every_split_point_decodes_identically() -> None:
    stream = b"".join(encode_frame(p) for p in PAYLOADS)
    for cut in range(len(stream) + 1):
        decoder = FrameDecoder()
        got: list[bytes] = []
        for part in (stream[:cut], stream[cut:]):
            if part:  # an empty feed means EOF
                decoder.feed(part)
                got += drain(decoder)
        decoder.feed(b"")
        assert decoder.next_frame() is CLOSED
        assert got == PAYLOADS, cut


def test_byte_at_a_time() -> None:
    stream = b"".join(encode_frame(p) for p in PAYLOADS)
    decoder = FrameDecoder()
    got: list[bytes] = []
    for i in range(len(stream)):
        decoder.feed(stream[i : i + 1])
        got += drain(decoder)
    assert got == PAYLOADS
    assert decoder.buffered_bytes == 0


@given(
    payloads=st.lists(st.binary(max_size=300), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=10),
)
def test_arbitrary_chunking(payloads: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    decoder = FrameDecoder()
    got: list[bytes] = []
    for lo, hi in itertools.pairwise(bounds):
        decoder.feed(stream[lo:hi])
        got += drain(decoder)
    decoder.feed(b"")
    got += drain(decoder)
    assert got == payloads
    assert decoder.next_frame() is CLOSED


def test_clean_eof_between_frames() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(b"x"))
    decoder.feed(b"")
    assert decoder.next_frame() == b"x"
    assert decoder.next_frame() is CLOSED


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 5, 8])
def test_eof_mid_frame_is_an_error(cut: int) -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame(b"12345")[:cut])
    decoder.feed(b"")
    with pytest.raises(TruncatedFrame, match="stream ended inside a frame"):
        decoder.next_frame()
    # The decoder stays broken: the connection must be closed.
    with pytest.raises(TruncatedFrame):
        decoder.next_frame()


def test_data_after_eof_is_refused() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"")
    with pytest.raises(ProtocolError, match="after end of stream"):
        decoder.feed(b"\x00")


def test_oversized_frame_refused_from_the_prefix_alone() -> None:
    decoder = FrameDecoder(frame_bytes_max=16)
    decoder.feed(encode_frame(b"ok", 16))
    assert decoder.next_frame() == b"ok"
    with pytest.raises(FrameTooLarge, match="17 bytes announced; frame_bytes_max=16"):
        decoder.feed((17).to_bytes(4, "big"))  # not one payload byte sent yet
    assert decoder.buffered_bytes == 0
    with pytest.raises(FrameTooLarge):
        decoder.feed(b"more")


def test_frame_at_the_limit_is_accepted() -> None:
    decoder = FrameDecoder(frame_bytes_max=16)
    decoder.feed(encode_frame(b"x" * 16, 16))
    assert decoder.next_frame() == b"x" * 16


def test_encoder_refuses_what_the_receiver_would_refuse() -> None:
    with pytest.raises(FrameTooLarge):
        encode_frame(b"x" * 17, 16)


def test_bad_limits_rejected() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(frame_bytes_max=0)
    with pytest.raises(ValueError):
        FrameDecoder(frame_bytes_max=2**32)


def test_four_gib_prefix_allocates_nothing_big() -> None:
    """A lying length prefix costs the receiver nothing, refused or (if allowed) pending."""
    tracemalloc.start()
    try:
        refusing = FrameDecoder()  # default 4 MiB bound
        with pytest.raises(FrameTooLarge):
            refusing.feed(b"\xff\xff\xff\xff" + b"x" * 1000)
        allowing = FrameDecoder(frame_bytes_max=2**32 - 1)
        allowing.feed(b"\xff\xff\xff\xff")
        for _ in range(100):
            allowing.feed(b"y" * 100)
            assert allowing.next_frame() is NEED_DATA
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert allowing.buffered_bytes == 4 + 100 * 100
    assert peak < 1 << 20, f"peak {peak} bytes"


def test_many_small_frames_in_one_feed_is_linear() -> None:
    """Handing out frames must not re-copy the buffer per frame (no O(n²))."""
    stream = encode_frame(b"z" * 10) * 100_000
    decoder = FrameDecoder()
    decoder.feed(stream)
    assert len(drain(decoder)) == 100_000
