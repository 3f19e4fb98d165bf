"""Sans-IO WebSocket framing for the watch hot path (RFC 6455 §5.2).

Server-to-client frames are never masked, so a frame built once serves every subscriber:
the watch hub encodes each delta message once and writes the same bytes to hundreds of
sockets.  The parser here reads such server frames on the broker side, leaner than a
general WebSocket library (no masking, no extensions): the broker's receive cost is the
largest cost when hundreds of brokers share a machine.

Client-to-server frames (masked) are handled by wsproto on the server; this module only
builds server frames and parses them.
"""

from __future__ import annotations

from typing import Final

from felix.proto.errors import FrameTooLarge, ProtocolError

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
_CONTROL: Final = frozenset({OP_CLOSE, OP_PING, OP_PONG})
_KNOWN: Final = frozenset({OP_CONTINUATION, OP_TEXT, OP_BINARY}) | _CONTROL


def server_frame(payload: bytes, opcode: int = OP_BINARY) -> bytes:
    """One unmasked, final frame carrying ``payload``."""
    size = len(payload)
    first = 0x80 | opcode
    if size < 126:
        header = bytes((first, size))
    elif size < 1 << 16:
        header = bytes((first, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((first, 127)) + size.to_bytes(8, "big")
    return header + payload


def close_frame(code: int, reason: str) -> bytes:
    return server_frame(code.to_bytes(2, "big") + reason.encode()[:120], OP_CLOSE)


class ServerFrameParser:
    """Incremental parser of unmasked server frames: ``feed(bytes)``, then ``messages()``.

    Yields ``(opcode, payload)`` for whole messages (continuations reassembled); control
    frames come out as they arrive, even between fragments.  A masked frame, a reserved
    bit, an unknown opcode or a message over ``message_bytes_max`` raise `ProtocolError`.
    """

    __slots__ = ("_buffer", "_fragments", "_fragments_op", "_start", "message_bytes_max")

    def __init__(self, message_bytes_max: int = 64 * 1024 * 1024) -> None:
        self.message_bytes_max = message_bytes_max
        self._buffer = bytearray()
        self._start = 0
        self._fragments: list[bytes] = []
        self._fragments_op = 0

    def feed(self, data: bytes) -> None:
        if self._start:
            del self._buffer[: self._start]
            self._start = 0
        self._buffer += data

    def messages(self) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        while (frame := self._next_frame()) is not None:
            fin, opcode, payload = frame
            if opcode in _CONTROL:
                out.append((opcode, payload))
            elif opcode == OP_CONTINUATION:
                if not self._fragments:
                    raise ProtocolError("WebSocket continuation frame without a message")
                self._add_fragment(payload)
                if fin:
                    out.append((self._fragments_op, b"".join(self._fragments)))
                    self._fragments = []
            elif self._fragments:
                raise ProtocolError("WebSocket data frame inside a fragmented message")
            elif fin:
                out.append((opcode, payload))
            else:
                self._fragments_op = opcode
                self._add_fragment(payload)
        return out

    def _add_fragment(self, payload: bytes) -> None:
        self._fragments.append(payload)
        if sum(len(f) for f in self._fragments) > self.message_bytes_max:
            raise FrameTooLarge(f"WebSocket message over {self.message_bytes_max} bytes")

    def _next_frame(self) -> tuple[bool, int, bytes] | None:
        buf, start = self._buffer, self._start
        available = len(buf) - start
        if available < 2:
            return None
        first, second = buf[start], buf[start + 1]
        if first & 0x70:
            raise ProtocolError("WebSocket frame with reserved bits set")
        opcode = first & 0x0F
        if opcode not in _KNOWN:
            raise ProtocolError(f"unknown WebSocket opcode {opcode:#x}")
        if second & 0x80:
            raise ProtocolError("masked frame from a server")
        size, header = second & 0x7F, 2
        if size == 126:
            if available < 4:
                return None
            size, header = int.from_bytes(buf[start + 2 : start + 4], "big"), 4
        elif size == 127:
            if available < 10:
                return None
            size, header = int.from_bytes(buf[start + 2 : start + 10], "big"), 10
        if size > self.message_bytes_max:
            raise FrameTooLarge(f"WebSocket frame of {size} bytes announced")
        if opcode in _CONTROL and (size > 125 or not first & 0x80):
            raise ProtocolError("invalid WebSocket control frame")
        end = start + header + size
        if len(buf) < end:
            return None
        self._start = end
        return bool(first & 0x80), opcode, bytes(buf[start + header : end])


# --- the client side: handshake and masked frames (RFC 6455 §4.1, §5.3) ----------------

_ACCEPT_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def client_handshake(host: str, path: str, key: bytes, token: str = "") -> bytes:
    """The HTTP upgrade request; ``key`` is 16 random bytes chosen by the caller;
    ``token`` (if any) goes in ``Authorization: Bearer`` and must be printable ASCII."""
    import base64

    if token and not (token.isascii() and token.isprintable() and " " not in token):
        raise ValueError("a token is printable ASCII without spaces")
    encoded = base64.b64encode(key).decode()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {encoded}\r\n"
        f"Sec-WebSocket-Version: 13\r\n{auth}\r\n"
    ).encode()


def accept_token(encoded_key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` value that answers ``Sec-WebSocket-Key: encoded_key``."""
    import base64
    import hashlib

    return base64.b64encode(hashlib.sha1(encoded_key + _ACCEPT_GUID).digest())


def check_handshake_response(head: bytes, key: bytes) -> None:
    """Raise `ProtocolError` unless ``head`` (the response up to the blank line) accepts
    the upgrade for ``key``."""
    import base64

    lines = head.decode("latin-1").split("\r\n")
    if not lines or " 101 " not in lines[0] + " ":
        raise ProtocolError(f"WebSocket upgrade refused: {lines[0] if lines else '(empty)'!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    expected = accept_token(base64.b64encode(key)).decode()
    if headers.get("sec-websocket-accept") != expected:
        raise ProtocolError("WebSocket upgrade answered with a wrong Sec-WebSocket-Accept")


def client_frame(payload: bytes, mask_key: bytes, opcode: int = OP_BINARY) -> bytes:
    """One masked, final client frame (clients must mask; ``mask_key`` is 4 bytes)."""
    size = len(payload)
    first = 0x80 | opcode
    if size < 126:
        header = bytes((first, 0x80 | size))
    elif size < 1 << 16:
        header = bytes((first, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((first, 0x80 | 127)) + size.to_bytes(8, "big")
    if size:
        repeated = (mask_key * (size // 4 + 1))[:size]
        masked = (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
            size, "big"
        )
    else:
        masked = b""
    return header + mask_key + masked
