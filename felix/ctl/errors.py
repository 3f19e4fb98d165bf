"""How a ctl command ends: `CtlError` carries the ``felix: ...`` message and the exit
code, and `core` turns it into the ``(exit code, text)`` every command returns, so the
command logic never prints or exits by itself.
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Awaitable, Callable

from felix.proto.client_messages import Error

Outcome = tuple[int, str]


class CtlError(Exception):
    """Ends a command: ``felix: <message>`` on stderr and ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def server_error(error: Error) -> CtlError:
    return CtlError(f"{error.code.value}: {error.detail}")


def core(
    fn: Callable[[argparse.Namespace], Awaitable[str]],
) -> Callable[[argparse.Namespace], Awaitable[Outcome]]:
    @functools.wraps(fn)
    async def wrapper(args: argparse.Namespace) -> Outcome:
        try:
            return 0, await fn(args)
        except CtlError as exc:
            return exc.exit_code, f"felix: {exc}"

    return wrapper
