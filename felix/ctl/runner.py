"""The synchronous edge: one `trio.run` per ctl command, its text on stdout or stderr,
its exit code; Ctrl-C is 130 (0 for ``watch``) and an unexpected exception is one
``felix: internal error`` line, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

import trio

from felix.ctl.watch import cmd_watch


def run(args: argparse.Namespace) -> int:
    """The ``handler`` of every ctl subcommand: one `trio.run`, output, exit code."""
    core = args.ctl_core
    watching = core is cmd_watch
    try:
        if watching:
            code, text = trio.run(cmd_watch, args, _print_line)
        else:
            code, text = trio.run(core, args)
    except BaseException as exc:
        if not _interrupted(exc):
            if isinstance(exc, Exception):  # never a traceback
                print(f"felix: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 1
            raise
        return 0 if watching else 130
    if text:
        print(text, file=sys.stdout if code == 0 else sys.stderr)
    return code


def _interrupted(exc: BaseException) -> bool:
    if isinstance(exc, KeyboardInterrupt):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_interrupted(e) for e in exc.exceptions)
    return False


def _print_line(line: str) -> None:
    print(line, flush=True)
