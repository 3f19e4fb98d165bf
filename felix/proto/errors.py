"""One exception family for everything that can be wrong with bytes from outside.

Decoders raise only `ProtocolError` subclasses, so a connection handler needs exactly one
``except`` clause to turn hostile or broken input into "close and count", never a crash.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Input from a peer, broker or file violates the wire protocol."""


class FrameTooLarge(ProtocolError):
    """A length prefix announces more than the configured ``frame_bytes_max``."""


class TruncatedFrame(ProtocolError):
    """The stream ended (EOF) in the middle of a frame."""


class DecodeError(ProtocolError):
    """The payload is not exactly one acceptable CBOR item."""


class UnknownMessageType(ProtocolError):
    """The ``type`` field names no message this channel accepts."""


class SchemaError(ProtocolError):
    """A field is missing, extra, of the wrong type or out of range.

    The path to the offending field is built on the way out of nested decoders, so the
    happy path pays nothing for it.
    """

    def __init__(self, problem: str, path: str = "") -> None:
        self.problem = problem
        self.path = path
        super().__init__(f"{path}: {problem}" if path else problem)

    def under(self, segment: str) -> SchemaError:
        """The same error, one level further out (``segment`` prefixes the path)."""
        if not self.path:
            path = segment
        elif self.path.startswith("["):
            path = segment + self.path
        else:
            path = f"{segment}.{self.path}"
        return SchemaError(self.problem, path)


class NotInVersion(UnknownMessageType):
    """The message type exists, but not in the protocol version this connection
    negotiated (docs/architecture.md, "Protocol versions")."""


class MessageTooNew(ValueError):
    """Encoding a message type added after the connection's negotiated version: the
    peer could not read it, so it is never sent (the sender logs and drops it)."""

    def __init__(self, type_name: str, since: int, version: int) -> None:
        self.type_name, self.since, self.version = type_name, since, version
        super().__init__(
            f"{type_name} needs protocol version {since}, this connection speaks {version}"
        )
