"""Reads: the full metadata view fetched from one endpoint (digest-checked), and the
commands that show it (``snapshot`` and the ``list`` subcommands).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from felix.broker.connection import ClientConnection, ConnectionClosed
from felix.ctl.errors import core, server_error
from felix.ctl.render import records_table, to_json
from felix.ctl.session import REQUEST_ID, Retry, Tries, on_some_endpoint
from felix.metadata.digest import digest_bytes
from felix.metadata.model import KIND_NODE, KIND_SHARD, KIND_STREAM, KIND_TENANT, KINDS
from felix.metadata.view import RecordView, apply_changes
from felix.proto.client_messages import Change, Error, ErrorCode, GetSnapshot, SnapshotChunk
from felix.proto.errors import ProtocolError

READ_RETRY_CODES: Final = frozenset(
    {ErrorCode.NOT_LEADER, ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT}
)


@dataclass(frozen=True)
class Snapshot:
    version: int
    digest: bytes
    records: RecordView
    endpoint: str

    def of_kind(self, kind: str) -> list[tuple[str, Mapping[str, Any]]]:
        """(key, value) of every record of ``kind``, in a stable, natural order."""
        items = [(key, value) for (k, key), value in self.records.items() if k == kind]
        return sorted(items, key=lambda item: _natural_key(item[0]))


def _natural_key(key: str) -> tuple[tuple[int, int, str], ...]:
    """Sorts "2" before "10" and "s/2" before "s/10"."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in key.split("/"))


async def fetch_snapshot(args: argparse.Namespace) -> Snapshot:
    """The full metadata view (linearizable unless ``--consistency s``)."""
    request = GetSnapshot(REQUEST_ID, getattr(args, "consistency", "l") == "l")

    async def attempt(conn: ClientConnection, name: str, tries: Tries) -> Snapshot:
        records: list[Change] = []
        seq = 0
        try:
            await conn.send(request)
            while True:
                message = await conn.receive()
                if isinstance(message, SnapshotChunk) and message.request_id == REQUEST_ID:
                    if message.seq != seq:
                        raise Retry(f"snapshot chunk {message.seq} arrived, expected {seq}")
                    seq += 1
                    records.extend(message.records)
                    if message.last:
                        break
                elif isinstance(message, Error) and message.request_id in (REQUEST_ID, None):
                    if message.code in READ_RETRY_CODES:
                        raise Retry(f"{message.code.value}: {message.detail}")
                    raise server_error(message)
        except (ConnectionClosed, ProtocolError) as exc:
            raise Retry(f"connection lost: {exc}") from None
        view: RecordView = {}
        digest = digest_bytes(apply_changes(view, records))
        if digest != message.digest:
            raise Retry(f"snapshot at version {message.version} failed its digest check")
        return Snapshot(message.version, message.digest, view, name)

    return await on_some_endpoint(args, attempt)


def _list_output(args: argparse.Namespace, snap: Snapshot, kind: str, empty: str) -> str:
    records = snap.of_kind(kind)
    if args.output == "json":
        return to_json([dict(value) for _, value in records])
    return records_table(kind, records, empty)


@core
async def cmd_snapshot(args: argparse.Namespace) -> str:
    snap = await fetch_snapshot(args)
    kinds = list(KINDS) + sorted({kind for kind, _ in snap.records} - set(KINDS))
    if args.output == "json":
        return to_json(
            {
                "version": snap.version,
                "digest": snap.digest.hex(),
                "endpoint": snap.endpoint,
                "records": {
                    kind: {key: dict(value) for key, value in snap.of_kind(kind)} for kind in kinds
                },
            }
        )
    sections = [f"version {snap.version}  digest {snap.digest.hex()[:16]}  from {snap.endpoint}"]
    for kind in kinds:
        records = snap.of_kind(kind)
        sections.append(f"{kind} ({len(records)})\n" + records_table(kind, records, "(none)"))
    return "\n\n".join(sections)


@core
async def cmd_stream_list(args: argparse.Namespace) -> str:
    return _list_output(args, await fetch_snapshot(args), KIND_STREAM, "no streams")


@core
async def cmd_node_list(args: argparse.Namespace) -> str:
    return _list_output(args, await fetch_snapshot(args), KIND_NODE, "no nodes")


@core
async def cmd_tenant_list(args: argparse.Namespace) -> str:
    return _list_output(args, await fetch_snapshot(args), KIND_TENANT, "no tenants")


@core
async def cmd_shard_list(args: argparse.Namespace) -> str:
    snap = await fetch_snapshot(args)
    records = [
        (key, value)
        for key, value in snap.of_kind(KIND_SHARD)
        if args.stream is None or value.get("stream") == args.stream
    ]
    if args.output == "json":
        return to_json([dict(value) for _, value in records])
    return records_table(KIND_SHARD, records, "no shards")
