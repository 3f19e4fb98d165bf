"""Snapshot encoding: ``[format, version, digest, [[kind, key, value], ...], tokens,
history]`` as CBOR.

The records are the same `Change` records a broker receives (never with value None), in
`MetadataState.records` order, so a snapshot is byte-identical on every node at the same
version.  ``tokens`` (format 2) are the control plane's private token records, sorted
by id; a format-1 snapshot (written before tokens existed) decodes with none.
``history`` (format 3) names the lineage of the state: "" for a cluster that grew from
empty, a fresh id for each `felix snapshot restore` (docs/architecture.md §14), so a
broker holding a view of another lineage takes a snapshot instead of resuming; format 1
and 2 decode with "".  Decoding
checks the schema of every record; `MetadataState.restore` then rebuilds the typed state
and refuses the snapshot unless the recomputed digest matches.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Final, NamedTuple

from felix.metadata.digest import DIGEST_BYTES
from felix.metadata.errors import SnapshotError
from felix.metadata.tokens import TOKENS_MAX, TokenRecord
from felix.proto.cbor import (
    MaxItems,
    MaxLen,
    dumps,
    from_plain,
    safe_loads,
    schema_depth,
    to_plain,
    wire_array,
)
from felix.proto.client_messages import Change, Digest
from felix.proto.errors import ProtocolError

SNAPSHOT_FORMAT: Final = 3
SNAPSHOT_FORMAT_NO_HISTORY: Final = 2
SNAPSHOT_FORMAT_NO_TOKENS: Final = 1
HISTORY_CHARS_MAX: Final = 64
SNAPSHOT_RECORDS_MAX: Final = 10_000_000


@wire_array
@dataclass(frozen=True, slots=True)
class MetadataSnapshot:
    format: int
    version: int
    digest: Digest
    records: Annotated[tuple[Change, ...], MaxItems(SNAPSHOT_RECORDS_MAX)]
    tokens: Annotated[tuple[TokenRecord, ...], MaxItems(TOKENS_MAX)]
    history: Annotated[str, MaxLen(HISTORY_CHARS_MAX)]


@wire_array
@dataclass(frozen=True, slots=True)
class _SnapshotV2:
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


class DecodedSnapshot(NamedTuple):
    version: int
    digest: bytes
    records: tuple[Change, ...]
    tokens: tuple[TokenRecord, ...]
    history: str


def encode_snapshot(
    version: int,
    digest: bytes,
    records: Iterable[Change],
    tokens: Iterable[TokenRecord] = (),
    history: str = "",
) -> bytes:
    """Snapshot bytes of a state at ``version`` with ``digest``."""
    snap = MetadataSnapshot(
        SNAPSHOT_FORMAT, version, digest, tuple(records), tuple(tokens), history
    )
    return dumps(to_plain(snap))


def decode_snapshot(data: bytes) -> DecodedSnapshot:
    """The fields of snapshot bytes of any format; raises `SnapshotError`."""
    try:
        plain = safe_loads(data, max_depth=_DEPTH)
        snap: MetadataSnapshot | _SnapshotV2 | _SnapshotV1
        if isinstance(plain, list) and plain[:1] == [SNAPSHOT_FORMAT_NO_TOKENS]:
            snap = from_plain(_SnapshotV1, plain)
        elif isinstance(plain, list) and plain[:1] == [SNAPSHOT_FORMAT_NO_HISTORY]:
            snap = from_plain(_SnapshotV2, plain)
        else:
            snap = from_plain(MetadataSnapshot, plain)
    except ProtocolError as exc:
        raise SnapshotError(f"undecodable metadata snapshot: {exc}") from None
    if snap.format not in (SNAPSHOT_FORMAT, SNAPSHOT_FORMAT_NO_HISTORY, SNAPSHOT_FORMAT_NO_TOKENS):
        raise SnapshotError(f"unsupported metadata snapshot format {snap.format}")
    if len(snap.digest) != DIGEST_BYTES:
        raise SnapshotError(f"snapshot digest is {len(snap.digest)} bytes, not {DIGEST_BYTES}")
    tokens = snap.tokens if not isinstance(snap, _SnapshotV1) else ()
    history = snap.history if isinstance(snap, MetadataSnapshot) else ""
    return DecodedSnapshot(snap.version, snap.digest, snap.records, tokens, history)
