"""``ctl config``: cluster configuration keys shown with their defaults, and values typed
by the key's spec before they are written (ranges are the server's to check).
"""

from __future__ import annotations

import argparse
from typing import Final

from felix.ctl.errors import CtlError, core
from felix.ctl.reads import fetch_snapshot
from felix.ctl.render import table, to_json
from felix.ctl.writes import write_and_report
from felix.metadata.config import CONFIG_SPECS
from felix.metadata.model import KIND_CONFIG

TRUE_WORDS: Final = frozenset({"true", "yes", "on", "1"})
FALSE_WORDS: Final = frozenset({"false", "no", "off", "0"})


@core
async def cmd_config_get(args: argparse.Namespace) -> str:
    snap = await fetch_snapshot(args)
    set_values = {key: value.get("value") for key, value in snap.of_kind(KIND_CONFIG)}
    names = list(CONFIG_SPECS) + sorted(set(set_values) - set(CONFIG_SPECS))
    if args.key is not None:
        if args.key not in CONFIG_SPECS and args.key not in set_values:
            raise CtlError(f"bad_request: {_unknown_key(args.key)}")
        names = [args.key]
    rows = []
    for name in names:
        spec = CONFIG_SPECS.get(name)
        default = None if spec is None else spec.default
        is_set = name in set_values
        rows.append(
            {
                "name": name,
                "value": set_values[name] if is_set else default,
                "default": default,
                "set": is_set,
            }
        )
    if args.output == "json":
        return to_json(rows[0] if args.key is not None else rows)
    return table(
        ["NAME", "VALUE", "DEFAULT", "SOURCE"],
        [[r["name"], r["value"], r["default"], "set" if r["set"] else "default"] for r in rows],
    )


def _unknown_key(name: str) -> str:
    return f"unknown config key {name!r} (known: {', '.join(sorted(CONFIG_SPECS))})"


def parse_config_value(name: str, text: str) -> int | bool | str:
    """``text`` as the type of config key ``name`` (ranges are checked by the server)."""
    spec = CONFIG_SPECS.get(name)
    if spec is None:
        raise CtlError(f"bad_request: {_unknown_key(name)}")
    if spec.kind is bool:
        word = text.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise CtlError(f"bad_request: config {name} takes a bool (true/false), got {text!r}")
    if spec.kind is int:
        try:
            return int(text.strip(), 10)
        except ValueError:
            raise CtlError(f"bad_request: config {name} takes an int, got {text!r}") from None
    return text


@core
async def cmd_config_set(args: argparse.Namespace) -> str:
    value = parse_config_value(args.key, args.value)
    return await write_and_report(args, "set_config", {"name": args.key, "value": value})


@core
async def cmd_config_unset(args: argparse.Namespace) -> str:
    if args.key not in CONFIG_SPECS:
        raise CtlError(f"bad_request: {_unknown_key(args.key)}")
    return await write_and_report(args, "set_config", {"name": args.key, "value": None})
