"""The ``felix`` command: argv -> a subcommand handler -> exit code.

Each feature area contributes its subcommands from its own module through a
``register(subparsers)`` function listed in `COMMAND_MODULES`, so this file stays small
and nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

import felix

COMMAND_MODULES: tuple[str, ...] = (
    "felix.server.cli",
    "felix.server.recover_cli",
    "felix.storage.cli",
    "felix.proto.cli",
    "felix.ctl",
    "felix.ctl.brokers",
    "felix.broker.agent",
    "felix.ctl.backup",
    "felix.security.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="felix",
        description="Felix control plane: Raft-replicated cluster metadata, watched by brokers.",
    )
    parser.add_argument("--version", action="version", version=f"felix {felix.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        code: int = handler(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
