"""Sans-IO length-prefixed frames: ``u32 big-endian length`` then ``length`` payload bytes.

The decoder is fed whatever the socket returned and hands out whole payloads.  It knows
nothing of sockets or Trio (like h11/wsproto), so every split of a stream can be tested
byte by byte.

Memory safety: the length prefix is checked against ``frame_bytes_max`` as soon as its
four bytes are in, before any payload byte is kept, so a hostile 4 GiB prefix costs
nothing.  The receive buffer never holds more than one maximal frame plus one ``feed``.
"""

from __future__ import annotations

from typing import Final

from felix.proto.errors import FrameTooLarge, ProtocolError, TruncatedFrame

HEADER_BYTES: Final = 4
FRAME_BYTES_MAX_DEFAULT: Final = 4 * 1024 * 1024
_U32_MAX: Final = 2**32 - 1


class NeedData:
    """Sentinel type: the decoder needs more bytes before it can return a frame."""

    _instance: NeedData | None = None

    def __new__(cls) -> NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()


class Closed:
    """Sentinel type: the peer closed the stream cleanly, between two frames."""

    _instance: Closed | None = None

    def __new__(cls) -> Closed:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "CLOSED"


CLOSED: Final = Closed()


def encode_frame(payload: bytes, frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT) -> bytes:
    """Prefix ``payload`` with its length; refuses what the receiver would refuse."""
    size = len(payload)
    if size > frame_bytes_max:
        raise FrameTooLarge(f"frame of {size} bytes exceeds frame_bytes_max={frame_bytes_max}")
    return size.to_bytes(HEADER_BYTES, "big") + payload


class FrameDecoder:
    """Incremental decoder: ``feed(bytes)`` in, ``next_frame()`` out.

    ``feed(b"")`` signals end of stream.  After that `next_frame` returns the remaining
    whole frames, then `CLOSED`; EOF inside a frame raises `TruncatedFrame`.  Once a
    `ProtocolError` was raised the decoder stays broken: the connection must be closed.
    """

    __slots__ = ("_buffer", "_eof", "_error", "_expected", "_start", "frame_bytes_max")

    def __init__(self, frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT) -> None:
        if not 0 < frame_bytes_max <= _U32_MAX:
            raise ValueError(f"frame_bytes_max must be in [1, {_U32_MAX}]")
        self.frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()
        self._start = 0  # bytes of _buffer already handed out (compacted lazily)
        self._expected: int | None = None  # payload length of the frame being read
        self._eof = False
        self._error: ProtocolError | None = None

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer) - self._start

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is not None:
            raise self._error
        if not data:
            self._eof = True
            return
        if self._eof:
            raise ProtocolError("data fed after end of stream")
        if self._start:
            del self._buffer[: self._start]  # one compaction per feed keeps this O(n)
            self._start = 0
        self._buffer += data
        if self._expected is None:
            self._read_header()

    def next_frame(self) -> bytes | NeedData | Closed:
        """One whole payload, or `NEED_DATA`, or `CLOSED` after a clean EOF."""
        if self._error is not None:
            raise self._error
        if self._expected is None and not self._read_header():
            return self._at_boundary()
        expected = self._expected
        assert expected is not None
        begin = self._start + HEADER_BYTES
        end = begin + expected
        if len(self._buffer) < end:
            if self._eof:
                self._fail(
                    TruncatedFrame(
                        f"stream ended inside a frame: got {len(self._buffer) - begin}"
                        f" of {expected} payload bytes"
                    )
                )
            return NEED_DATA
        payload = bytes(self._buffer[begin:end])
        self._start = end
        self._expected = None
        self._read_header()
        return payload

    def _at_boundary(self) -> NeedData | Closed:
        if not self._eof:
            return NEED_DATA
        if self.buffered_bytes:
            self._fail(
                TruncatedFrame(f"stream ended inside a frame header ({self.buffered_bytes} of 4)")
            )
        return CLOSED

    def _read_header(self) -> bool:
        """Parse the next length prefix if its 4 bytes are here; refuse oversize at once."""
        if self._expected is not None:
            return True
        start = self._start
        if len(self._buffer) - start < HEADER_BYTES:
            return False
        length = int.from_bytes(self._buffer[start : start + HEADER_BYTES], "big")
        if length > self.frame_bytes_max:
            self._buffer.clear()  # never keep a byte of a refused frame
            self._start = 0
            self._fail(
                FrameTooLarge(
                    f"frame of {length} bytes announced; frame_bytes_max={self.frame_bytes_max}"
                )
            )
        self._expected = length
        return True

    def _fail(self, error: ProtocolError) -> None:
        self._error = error
        raise error
