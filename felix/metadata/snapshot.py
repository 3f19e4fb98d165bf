"""Snapshot encoding: ``[format, version, digest, [[kind, key, value], ...], tokens]``
as CBOR.

The records are the same `Change` records a broker receives (never with value None), in
`MetadataState.records` order, so a snapshot is byte-identical on every node at the same
version.  ``tokens`` (format 2) are the control plane's private token records, sorted
by id; a format-1 snapshot (written before tokens existed) decodes with none.  Decoding
checks the schema of every record; `MetadataState.restore` then rebuilds the typed state
and refuses the snapshot unless the recomputed digest matches.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Final

from felix.metadata.digest import DIGEST_BYTES
from felix.metadata.errors import SnapshotError
from felix.metadata.tokens import TOKENS_MAX, TokenRecord
from felix.proto.cbor import (
    MaxItems,
    dumps,
    from_plain,
    safe_loads,
    schema_depth,
    to_plain,
    wire_array,
)
from felix.proto.client_messages import Change, Digest
from felix.proto.errors import ProtocolError

SNAPSHOT_FORMAT: Final = 2
SNAPSHOT_FORMAT_NO_TOKENS: Final = 1
SNAPSHOT_RECORDS_MAX: Final = 10_000_000


@wire_array
@dataclass(frozen=True, slots=True)
class MetadataSnapshot:
    format: int
    version: int
    digest: Digest
    records: Annotated[tuple[Change, ...], MaxItems(SNAPSHOT_RECORDS_MAX)]
    tokens: Annotated[tuple[TokenRecord, ...], MaxItems(TOKENS_MAX)]


@wire_array
@dataclass(frozen=True, slots=True)
class _SnapshotV1:
    format: int
    version: int
    digest: Digest
    records: Annotated[tuple[Change, ...], MaxItems(SNAPSHOT_RECORDS_MAX)]


_DEPTH: Final = schema_depth(MetadataSnapshot)


def encode_snapshot(
    version: int, digest: bytes, records: Iterable[Change], tokens: Iterable[TokenRecord] = ()
) -> bytes:
    """Snapshot bytes of a state at ``version`` with ``digest``."""
    snap = MetadataSnapshot(SNAPSHOT_FORMAT, version, digest, tuple(records), tuple(tokens))
    return dumps(to_plain(snap))


def decode_snapshot(
    data: bytes,
) -> tuple[int, bytes, tuple[Change, ...], tuple[TokenRecord, ...]]:
    """(version, digest, records, tokens) of snapshot bytes; raises `SnapshotError`."""
    try:
        plain = safe_loads(data, max_depth=_DEPTH)
        snap: MetadataSnapshot | _SnapshotV1
        if isinstance(plain, list) and plain[:1] == [SNAPSHOT_FORMAT_NO_TOKENS]:
            snap = from_plain(_SnapshotV1, plain)
        else:
            snap = from_plain(MetadataSnapshot, plain)
    except ProtocolError as exc:
        raise SnapshotError(f"undecodable metadata snapshot: {exc}") from None
    if snap.format not in (SNAPSHOT_FORMAT, SNAPSHOT_FORMAT_NO_TOKENS):
        raise SnapshotError(f"unsupported metadata snapshot format {snap.format}")
    if len(snap.digest) != DIGEST_BYTES:
        raise SnapshotError(f"snapshot digest is {len(snap.digest)} bytes, not {DIGEST_BYTES}")
    tokens = snap.tokens if isinstance(snap, MetadataSnapshot) else ()
    return snap.version, snap.digest, snap.records, tokens
