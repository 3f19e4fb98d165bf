"""Output of reads and writes: aligned text tables (``-o table``) and JSON (``-o json``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from typing import Any, Final

from felix.metadata.model import KIND_SHARD


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return ",".join(_cell(v) for v in value) or "-"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(headers)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


# Kinds whose key is not one of the fields: shown as a first column instead of these.
KEY_COLUMNS: Final[Mapping[str, tuple[str, tuple[str, ...]]]] = {
    KIND_SHARD: ("SHARD", ("stream", "index")),
}


def records_table(kind: str, records: Sequence[tuple[str, Mapping[str, Any]]], empty: str) -> str:
    """One column per field (the records of a kind all have the same fields)."""
    if not records:
        return empty
    key_header, replaced = KEY_COLUMNS.get(kind, ("", ()))
    fields = [f for f in records[0][1] if f not in replaced]
    headers = ([key_header] if key_header else []) + [f.upper() for f in fields]
    return table(
        headers,
        [([key] if key_header else []) + [value.get(f) for f in fields] for key, value in records],
    )


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, default=json_default)


def json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def written(args: argparse.Namespace, command: str, version: int) -> str:
    if args.output == "json":
        return json.dumps({"command": command, "version": version})
    return f"ok: {command} applied at version {version}"
