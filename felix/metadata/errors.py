"""Errors of the metadata layer: one for commands, one for snapshots."""

from __future__ import annotations

from felix.proto.client_messages import ErrorCode


class CommandError(Exception):
    """A command is malformed (``bad_request``), invalid against the state
    (``rejected``) or lost a compare-and-set (``conflict``).

    Raised by `command_from_request` and inside handlers; `MetadataState.apply` turns it
    into a `Rejection`, so it never escapes apply.
    """

    def __init__(self, code: ErrorCode, detail: str) -> None:
        super().__init__(f"{code.value}: {detail}")
        self.code = code
        self.detail = detail


def rejected(detail: str) -> CommandError:
    """Shorthand: the command is well-formed but not valid against the current state."""
    return CommandError(ErrorCode.REJECTED, detail)


def bad_request(detail: str) -> CommandError:
    """Shorthand: the command itself is malformed, whatever the state."""
    return CommandError(ErrorCode.BAD_REQUEST, detail)


class SnapshotError(ValueError):
    """A metadata snapshot does not decode, is inconsistent, or fails its digest."""
