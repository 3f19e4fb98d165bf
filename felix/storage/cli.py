"""``felix wal dump DIR``: read-only inspection of a write-ahead log.

Like etcd-dump-logs: one line per record (per entry for batches) with index, term, kind
and size, or ``-o json``.  Nothing is repaired here: a torn tail or corruption is shown
as a one-line error on stderr after the good records, with exit code 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from felix.storage.errors import StorageError
from felix.storage.files import OsFiles
from felix.storage.recovery import iter_records
from felix.storage.segment_format import BatchRecord, RecordType, StateRecord
from felix.storage.segmented_wal import WAL_DIR

Row = dict[str, Any]
_COLUMNS = ("segment", "offset", "record", "index", "term", "kind", "size", "detail")


def register(subparsers: Any) -> None:
    """Add the ``wal`` command to the ``felix`` parser (``snapshot``: `felix.ctl.backup`)."""
    wal = subparsers.add_parser("wal", help="inspect a write-ahead log")
    wal.set_defaults(handler=_usage(wal))
    wal_commands = wal.add_subparsers(dest="wal_command", metavar="SUBCOMMAND")
    dump = wal_commands.add_parser("dump", help="print every record (one line per entry)")
    dump.add_argument("directory", help="a node's data directory, or its wal/ directory")
    _add_output(dump)
    dump.set_defaults(handler=wal_dump)


def _add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")


def _usage(parser: argparse.ArgumentParser) -> Any:
    def handler(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    return handler


def _fail(command: str, message: str) -> int:
    print(f"felix {command}: {message}", file=sys.stderr)
    return 1


def wal_dump(args: argparse.Namespace) -> int:
    directory = args.directory
    if os.path.isdir(os.path.join(directory, WAL_DIR)):
        directory = os.path.join(directory, WAL_DIR)
    if not os.path.isdir(directory):
        return _fail("wal dump", f"no such directory: {directory}")
    table = args.output == "table"
    if table:
        print(_header())
    rows: list[Row] = []
    error = None
    try:
        for row in _rows(directory):
            if table:
                print(_table_line(row))
            else:
                rows.append(row)
    except (StorageError, OSError) as exc:
        error = str(exc)
    if not table:
        print(json.dumps(rows, indent=1))
    return _fail("wal dump", error) if error else 0


def _rows(directory: str) -> Iterator[Row]:
    for path, offset, record_type, record in iter_records(OsFiles(), directory):
        segment = os.path.basename(path)
        base: Row = dict.fromkeys(_COLUMNS)
        base.update(segment=segment, offset=offset)
        if record_type == RecordType.STATE:
            assert isinstance(record, StateRecord)
            yield {**base, "record": "STATE", "detail": _state_detail(record)}
            continue
        assert isinstance(record, BatchRecord)
        if record.snapshot is not None:
            index, term = record.snapshot
            yield {**base, "record": "SNAPSHOT", "index": index, "term": term}
        for entry in record.entries:
            yield {
                **base,
                "record": "ENTRY",
                "index": entry.index,
                "term": entry.term,
                "kind": entry.kind.name,
                "size": len(entry.data),
            }
        if record.hard_state is not None:
            hs = record.hard_state
            detail = f"term={hs.term} vote={hs.vote} commit={hs.commit}"
            yield {**base, "record": "HARDSTATE", "term": hs.term, "detail": detail}


def _state_detail(state: StateRecord) -> str:
    hs = state.hard_state
    return (
        f"term={hs.term} vote={hs.vote} commit={hs.commit} "
        f"snapshot={state.base_index}/{state.base_term} last={state.last_index}"
    )


_WIDTHS = (38, 8, 9, 10, 6, 7, 8, 0)


def _header() -> str:
    return _format([c.upper() for c in _COLUMNS])


def _table_line(row: Row) -> str:
    return _format(["-" if row[c] is None else str(row[c]) for c in _COLUMNS])


def _format(cells: list[str]) -> str:
    return " ".join(cell.ljust(width) for cell, width in zip(cells, _WIDTHS, strict=True)).rstrip()
