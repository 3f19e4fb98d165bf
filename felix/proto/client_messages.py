"""Messages between brokers (and admin clients) and the control plane (docs/architecture.md §11).

Each WebSocket binary message is one CBOR map with a ``type``.  There are two registries,
one per direction, so a server never accepts a server-only message from a client and a
broker never accepts a client-only message from a server.

The metadata itself travels as `Change` records: ``kind`` (node, stream, shard, config,
tenant, ...), ``key`` within that kind, and a flat ``value`` map (``None`` = deleted).
A `Delta` is everything one committed Raft entry changed; versions are Raft indexes, so
they are identical on every control-plane node and a broker can resume on any of them.

Versions (docs/architecture.md, "Protocol versions"): a connection speaks the baseline
(1) until a `ClientHello` carrying a version range; the server answers it with
`HelloAck` naming the version both sides use for every later message (or an `Error`
naming both ranges, then closes).  A client that sends a range waits for that answer
before sending anything else.  A Hello without a range (an older client) gets no
`HelloAck`: the connection stays at the baseline.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Final

from felix.proto.cbor import (
    U63_MAX,
    IntRange,
    MaxItems,
    MaxLen,
    OmitDefault,
    Registry,
    ScalarValue,
    Since,
    dataclass_slot_setters,
    field_decoder,
    wire_array,
)
from felix.proto.codes import ErrorCode as ErrorCode  # re-exported: part of this protocol
from felix.proto.errors import SchemaError
from felix.proto.versions import PROTOCOL_VERSION_NEXT

CHANGES_PER_DELTA_MAX: Final = 1_000_000
DELTAS_PER_MESSAGE_MAX: Final = 100_000
RECORD_FIELDS_MAX: Final = 256

BrokerId = Annotated[int, IntRange(0, 2**63 - 1)]
Name = Annotated[str, MaxLen(256)]
Digest = Annotated[bytes, MaxLen(64)]
Detail = Annotated[str, MaxLen(4096)]
History = Annotated[str, MaxLen(64)]
Version = Annotated[int, IntRange(1, 65535)]  # a protocol version (`felix.proto.versions`)
BACKUP_CHUNK_BYTES_MAX: Final = 1 << 20
Record = Annotated[dict[Name, ScalarValue], MaxItems(RECORD_FIELDS_MAX)]


class HealthStatus(enum.StrEnum):
    UP = "up"
    DRAINING = "draining"
    DOWN = "down"


@wire_array
@dataclass(frozen=True, slots=True)
class Change:
    """One record set (``value`` is a map) or deleted (``value`` is None)."""

    kind: Name
    key: Name
    value: Record | None


@wire_array
@dataclass(frozen=True, slots=True)
class Delta:
    """What one committed entry changed; applies only on top of ``prev_version``.

    ``digest`` is the order-independent state digest after applying it, so a broker can
    prove its copy equals the control plane's.
    """

    prev_version: int
    version: int
    digest: Digest
    changes: Annotated[tuple[Change, ...], MaxItems(CHANGES_PER_DELTA_MAX)]


CLIENT_TO_SERVER = Registry("client-to-server")
SERVER_TO_CLIENT = Registry("server-to-client")


# --- client -> server ----------------------------------------------------------------


@CLIENT_TO_SERVER.message("Hello")
@dataclass(frozen=True, slots=True)
class ClientHello:
    """Opens a session and starts `WatchUpdates(from_version)`.

    ``from_version`` None asks for a snapshot first; otherwise deltas after
    ``from_version`` follow (or a snapshot if that version is no longer retained).
    ``node_id`` None is an admin/CLI session that does not watch as a broker.
    """

    node_id: BrokerId | None
    from_version: int | None
    token: Annotated[str, MaxLen(4096)]
    # The lineage of the view ``from_version`` is in ("" until a restore, see
    # docs/architecture.md §14): another lineage's version is never resumed from.
    history: History = ""
    # The protocol versions the client speaks; absent (None): the baseline, no HelloAck.
    version_min: Annotated[Version | None, OmitDefault()] = None
    version_max: Annotated[Version | None, OmitDefault()] = None


@CLIENT_TO_SERVER.message("GetSnapshot")
@dataclass(frozen=True, slots=True)
class GetSnapshot:
    request_id: int
    linearizable: bool


@CLIENT_TO_SERVER.message("ReportHealth")
@dataclass(frozen=True, slots=True)
class ReportHealth:
    node_id: BrokerId
    status: HealthStatus
    applied_version: int


@CLIENT_TO_SERVER.message("Write")
@dataclass(frozen=True, slots=True)
class WriteRequest:
    """An admin or broker write: ``command`` names a metadata command, ``args`` its
    arguments; ``expected_version`` makes it a compare-and-set on the state version."""

    request_id: int
    command: Name
    args: Record
    expected_version: int | None


@CLIENT_TO_SERVER.message("ListTokens")
@dataclass(frozen=True, slots=True)
class ListTokens:
    """Admin only: the cluster's API tokens as this node has applied them (never a
    secret or its hash)."""

    request_id: int


@CLIENT_TO_SERVER.message("GetBackup")
@dataclass(frozen=True, slots=True)
class GetBackup:
    """Admin only (``felix snapshot save``): the whole state as the control plane
    snapshots it (records, token hashes, lineage) at a linearizable version."""

    request_id: int


@CLIENT_TO_SERVER.message("RunPlanner")
@dataclass(frozen=True, slots=True)
class RunPlanner:
    """Admin only (``felix ctl rebalance run``): the control-plane leader's rebalancer
    runs a planner pass now and proposes its steps (docs/architecture.md §13); a
    follower forwards it to the leader."""

    request_id: int


# --- server -> client ----------------------------------------------------------------


TOKENS_LISTED_MAX = 10_000  # the cluster holds at most this many (felix.metadata.tokens)


@wire_array
@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: Annotated[str, MaxLen(16)]
    role: Annotated[str, MaxLen(16)]
    node_id: int | None
    expires_at_ms: int | None
    description: Annotated[str, MaxLen(200)]


@SERVER_TO_CLIENT.message("TokenList")
@dataclass(frozen=True, slots=True)
class TokenList:
    request_id: int
    version: int  # the applied version the list is from
    tokens: Annotated[tuple[TokenInfo, ...], MaxItems(TOKENS_LISTED_MAX)]


@SERVER_TO_CLIENT.message("WriteResult")
@dataclass(frozen=True, slots=True)
class WriteResult:
    """The write committed and was applied at ``version``."""

    request_id: int
    version: int


@SERVER_TO_CLIENT.message("BackupChunk")
@dataclass(frozen=True, slots=True)
class BackupChunk:
    """Part ``seq`` of the metadata snapshot bytes at ``version`` of cluster
    ``cluster_id``; ``last`` ends it."""

    request_id: int
    cluster_id: Name
    version: int
    seq: int
    data: Annotated[bytes, MaxLen(BACKUP_CHUNK_BYTES_MAX)]
    last: bool


@SERVER_TO_CLIENT.message("PlannerRan")
@dataclass(frozen=True, slots=True)
class PlannerRan:
    """The leader ran a planner pass: ``summary`` says what it proposed; ``version`` is
    the applied version after its steps."""

    request_id: int
    version: int
    summary: Detail


@SERVER_TO_CLIENT.message("Snapshot")
@dataclass(frozen=True, slots=True)
class SnapshotChunk:
    """One chunk of the full view at ``version``; ``last`` is the end marker.  A client
    applies the view only once ``last`` arrives (chunks are numbered by ``seq``)."""

    request_id: int | None
    version: int
    digest: Digest
    seq: int
    records: Annotated[tuple[Change, ...], MaxItems(CHANGES_PER_DELTA_MAX)]
    last: bool
    history: History = ""  # the view's lineage, for the next ClientHello


@SERVER_TO_CLIENT.message("Deltas")
@dataclass(frozen=True, slots=True)
class Deltas:
    """One or more consecutive versions, each chained to the previous by prev_version."""

    deltas: Annotated[tuple[Delta, ...], MaxItems(DELTAS_PER_MESSAGE_MAX)]


@SERVER_TO_CLIENT.message("DeltaPart")
@dataclass(frozen=True, slots=True)
class DeltaPart:
    """Part ``seq`` of one delta too big for one message; ``last`` is the end marker.
    The broker buffers parts and applies the delta atomically at the last one."""

    prev_version: int
    version: int
    digest: Digest
    seq: int
    last: bool
    changes: Annotated[tuple[Change, ...], MaxItems(CHANGES_PER_DELTA_MAX)]


@SERVER_TO_CLIENT.message("HelloAck")
@dataclass(frozen=True, slots=True)
class HelloAck:
    """The answer to a `ClientHello` with a version range, before anything else the
    watch sends: every later message on this connection, both ways, is ``version``."""

    protocol_version: Version


@SERVER_TO_CLIENT.message("WatchProgress")
@dataclass(frozen=True, slots=True)
class WatchProgress:
    """In order with deltas: everything up to ``version`` has been sent.

    ``next_probe`` is the synthetic field of test-only version 2 (`felix.proto.versions`):
    the server sets it to ``version``; nothing reads it."""

    version: int
    next_probe: Annotated[int, Since(PROTOCOL_VERSION_NEXT)] = 0


@SERVER_TO_CLIENT.message("Resync")
@dataclass(frozen=True, slots=True)
class Resync:
    """The server cannot continue this stream without gaps: take a snapshot."""

    reason: Detail


@SERVER_TO_CLIENT.message("Error")
@dataclass(frozen=True, slots=True)
class Error:
    code: ErrorCode
    detail: Detail
    request_id: int | None


ClientMessage = ClientHello | GetSnapshot | ReportHealth | WriteRequest | ListTokens
ServerMessage = (
    WriteResult
    | SnapshotChunk
    | Deltas
    | DeltaPart
    | WatchProgress
    | Resync
    | Error
    | TokenList
    | HelloAck
)


# --- the broker's hot path -------------------------------------------------------------


def _setters(cls: type, names: tuple[str, ...]) -> list[Callable[[Any, Any], None]]:
    setters = dataclass_slot_setters(cls, names)
    if setters is None:  # pragma: no cover - these are plain frozen dataclasses
        raise TypeError(f"{cls.__name__}: no slot setters")
    return setters


NAME_CHARS_MAX: Final = 256  # `Name`
DIGEST_BYTES_MAX: Final = 64  # `Digest`


def deltas_decoder(generated: Callable[[object], Any]) -> Callable[[object], Any]:
    """`Deltas` decoded in one function: every message a watching broker receives is
    one, and the generated decoders spend most of their time calling each other (one
    per level: message, tuple, delta, tuple, change).  The same checks in the same
    places (the record values through the schema's own field decoder); anything it does
    not accept as it goes is handed whole to ``generated``, which refuses it with the
    schema's error (or accepts it: never more than the schema would)."""
    new = object.__new__
    (set_deltas,) = _setters(Deltas, ("deltas",))
    set_prev, set_version, set_digest, set_changes = _setters(
        Delta, ("prev_version", "version", "digest", "changes")
    )
    set_kind, set_key, set_value = _setters(Change, ("kind", "key", "value"))
    record = field_decoder(Change, "value")
    name_max, digest_max = NAME_CHARS_MAX, DIGEST_BYTES_MAX
    deltas_max, changes_max, u63 = DELTAS_PER_MESSAGE_MAX, CHANGES_PER_DELTA_MAX, U63_MAX

    def decode(value: object) -> Any:
        message = fast(value)
        return generated(value) if message is None else message

    def fast(value: object) -> Any:
        """The message, or None: hand ``value`` to the generated decoder."""
        if type(value) is not dict or len(value) != 1:
            return None
        items = value.get("deltas")
        if type(items) is not list or len(items) > deltas_max:
            return None
        deltas = []
        for item in items:
            if type(item) is not list or len(item) != 4:
                return None
            prev, version, digest, raw = item
            if not (
                type(prev) is int
                and 0 <= prev <= u63
                and type(version) is int
                and 0 <= version <= u63
                and type(digest) is bytes
                and len(digest) <= digest_max
                and type(raw) is list
                and len(raw) <= changes_max
            ):
                return None
            changes = []
            for entry in raw:
                if type(entry) is not list or len(entry) != 3:
                    return None
                kind, key, fields = entry
                if not (
                    type(kind) is str
                    and len(kind) <= name_max
                    and type(key) is str
                    and len(key) <= name_max
                ):
                    return None
                try:
                    fields = record(fields)
                except SchemaError:
                    return None
                change = new(Change)
                set_kind(change, kind)
                set_key(change, key)
                set_value(change, fields)
                changes.append(change)
            delta = new(Delta)
            set_prev(delta, prev)
            set_version(delta, version)
            set_digest(delta, digest)
            set_changes(delta, tuple(changes))
            deltas.append(delta)
        message = new(Deltas)
        set_deltas(message, tuple(deltas))
        return message

    return decode


SERVER_TO_CLIENT.specialise("Deltas", deltas_decoder)
