"""One snapshot encode per version: the node's cache of encoded `SnapshotChunk` frames.

Every watch start that needs a snapshot and every ``GetSnapshot`` wants the view at the
node's *current* version (docs/architecture.md §1, §7): a watch start at the version its
pending deltas follow, a linearizable read at or after its ReadIndex point.  So the
cache is keyed by (version, lineage, protocol version) and only ever asked for the
current one: a newer version is a miss and a new encode, and whatever was cached for an
older version (or another lineage) is dropped when the newer one is stored.  An entry
lives until ``ttl_s`` on Trio's clock have passed since it was last served or a send
ended, and never expires while snapshot sends are in flight or queued, so a storm that
takes longer than the TTL to work through still shares one encode.  The retained frames
are bounded by ``bytes_max``, oldest evicted first; a snapshot bigger than the bound is
not kept (it still serves the requests that waited for its build).  Requests for a
version whose build is in progress wait for it (one `trio.Event` per build) instead of
starting another.

The build encodes chunk by chunk with the GC paused and a checkpoint between chunks,
as the per-request encode did, so the event loop is blocked no longer than before.  The
records come from the view taken synchronously at the start of the build (a list copy:
the frozen view the chunks are made of).  The build is shielded from its requester's
cancellation: others may be waiting for it, and it cannot be restarted once the node has
moved on to a newer version.

Request ids: ``SnapshotChunk.request_id`` sits inside each frame (None for a watch
start, the request's id for ``GetSnapshot``).  The frames are encoded once with None.
The encoder writes a message's fields as a CBOR map in declaration order, and
``request_id`` is the first field, so an encoded chunk begins with a one-byte map
header, the key ``"request_id"`` and the one-byte null; a ``GetSnapshot`` answer is
that prefix, the id's own CBOR encoding, then the rest of the chunk unchanged, framed
anew one chunk at a time.  The bytes are exactly what encoding the chunk with that id
would give (tests compare them), so the wire format is unchanged in every version.  If
a protocol version ever encodes the chunk otherwise (checked once per version with a
probe), its cache is keyed by the request id too: still correct, just shared less.

Sends are bounded per node (``sends_max``, a FIFO `trio.Semaphore`): past it a request
queues for a slot, never refused, so a reconnect storm has at most that many snapshots
being written (and their socket backlogs filled) at once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import cbor2
import trio

from felix.gc_pause import gc_paused
from felix.proto.cbor import schema_top
from felix.proto.client_messages import SERVER_TO_CLIENT, Change, SnapshotChunk
from felix.proto.versions import BASELINE
from felix.proto.ws_frames import server_frame
from felix.server.ws_server import WsConnection

ViewSource = Callable[[], tuple[int, bytes, Sequence[Change]]]
"""(version, digest, records) of the current view, consistently."""

_NULL_ID = b"\x6arequest_id\xf6"  # CBOR: the 10-byte text "request_id", then null
_ID_AT = 1 + len(_NULL_ID) - 1  # where the null sits, after a one-byte map header


@dataclass(frozen=True, slots=True)
class SnapshotLimits:
    chunk_records: int = 2000  # records per SnapshotChunk
    bytes_max: int = 256 * 1024 * 1024  # frames kept (``watch.snapshot_cache_bytes_max``)
    ttl_s: float = 5.0  # how long an encoded version is kept (``watch.snapshot_cache_ttl_ms``)
    sends_max: int = 16  # snapshot sends at once per node (``watch.snapshot_sends_max``)


@dataclass(slots=True)
class SnapshotStats:
    encodes: int = 0  # snapshots built and encoded
    served: int = 0  # snapshots handed to a watch start or a GetSnapshot
    joined: int = 0  # of those, served by waiting for a build in progress
    cache_bytes: int = 0  # encoded frames retained now
    sends_in_flight: int = 0
    sends_in_flight_peak: int = 0
    sends_waiting: int = 0  # queued for a send slot now


@dataclass(frozen=True, slots=True)
class EncodedSnapshot:
    """The view at ``version`` as framed ``SnapshotChunk``s with ``request_id`` None."""

    version: int
    history: str
    protocol_version: int  # the encoding's (lowest version encoding the chunk alike)
    frames: tuple[bytes, ...]
    splice: bool  # frames take another request id by `with_request_id`
    size_bytes: int
    built_at: float  # trio.current_time()
    order: int  # when its view was taken, among all builds

    def frames_for(self, request_id: int | None) -> Iterator[bytes]:
        """Its frames carrying ``request_id``, built one at a time."""
        if request_id is None or not self.splice:
            yield from self.frames
            return
        for frame in self.frames:
            yield with_request_id(frame, request_id)


@dataclass(eq=False, slots=True)
class _Build:
    done: trio.Event = field(default_factory=trio.Event)
    result: EncodedSnapshot | None = None


def with_request_id(frame: bytes, request_id: int) -> bytes:
    """A framed chunk encoded with ``request_id`` None, re-framed carrying ``request_id``."""
    length = frame[1] & 0x7F
    start = 2 if length < 126 else 4 if length == 126 else 10
    payload = memoryview(frame)[start:]
    return server_frame(
        b"".join((payload[:_ID_AT], cbor2.dumps(request_id), payload[_ID_AT + 1 :]))
    )


def _splices(protocol_version: int) -> bool:
    """Whether chunks encoded at ``protocol_version`` take a request id by splicing."""
    probe = SnapshotChunk(None, 7, b"\x00" * 8, 0, (Change("k", "x", {"v": 1}),), True, "h")
    frame = server_frame(SERVER_TO_CLIENT.encode(probe, protocol_version))
    if frame[2 : 2 + _ID_AT + 1][1:] != _NULL_ID:
        return False
    for request_id in (0, 23, 24, 2**16, 2**63 - 1):
        with_id = SnapshotChunk(request_id, *_fields_after_id(probe))
        expected = server_frame(SERVER_TO_CLIENT.encode(with_id, protocol_version))
        if with_request_id(frame, request_id) != expected:
            return False
    return True


def _fields_after_id(chunk: SnapshotChunk) -> tuple[int, bytes, int, tuple[Change, ...], bool, str]:
    return chunk.version, chunk.digest, chunk.seq, chunk.records, chunk.last, chunk.history


class SnapshotCache:
    """Encoded snapshots of one node, shared by its watch hub and its client API."""

    def __init__(self, limits: SnapshotLimits = SnapshotLimits()) -> None:
        self.limits = limits
        self.stats = SnapshotStats()
        self._entries: OrderedDict[tuple[int, str, int, int | None], EncodedSnapshot] = (
            OrderedDict()
        )
        self._building: dict[tuple[int, str, int, int | None], _Build] = {}
        self._served_at: dict[tuple[int, str, int, int | None], float] = {}  # Trio clock
        self._splices: dict[int, bool] = {}
        self._builds_started = 0
        self._sends = trio.Semaphore(limits.sends_max)

    @asynccontextmanager
    async def send_slot(self) -> AsyncIterator[None]:
        """One of the node's ``sends_max`` snapshot sends; waits (in order) for a slot."""
        stats = self.stats
        stats.sends_waiting += 1
        try:
            await self._sends.acquire()
        finally:
            stats.sends_waiting -= 1
        stats.sends_in_flight += 1
        stats.sends_in_flight_peak = max(stats.sends_in_flight_peak, stats.sends_in_flight)
        try:
            yield
        finally:
            stats.sends_in_flight -= 1
            self._sends.release()
            now = trio.current_time()  # a send just ended: the TTL runs from here
            for key in self._served_at:
                self._served_at[key] = now

    async def get(
        self,
        version: int,
        history: str,
        view: ViewSource,
        protocol_version: int = BASELINE,
        request_id: int | None = None,
    ) -> EncodedSnapshot:
        """The encoded snapshot at ``version`` -- which must be the current one: on a
        miss ``view`` is called before this first yields and must return ``version``."""
        wire = min(protocol_version, schema_top(SnapshotChunk))
        splice = self._splices.get(wire)
        if splice is None:
            splice = self._splices[wire] = _splices(wire)
        key = (version, history, wire, None if splice else request_id)
        self.expire()
        entry = self._entries.get(key)
        if entry is not None:
            self.stats.served += 1
            self._served_at[key] = trio.current_time()
            return entry
        build = self._building.get(key)
        if build is not None:
            await build.done.wait()
            if build.result is None:
                raise RuntimeError(f"the snapshot build of version {version} failed")
            self.stats.served += 1
            self.stats.joined += 1
            if key in self._entries:
                self._served_at[key] = trio.current_time()
            return build.result
        got, digest, records = view()
        if got != version:
            raise RuntimeError(f"snapshot view at version {got}, expected {version} (a bug)")
        build = self._building[key] = _Build()
        self._builds_started += 1
        order = self._builds_started
        self.stats.encodes += 1
        try:
            with trio.CancelScope(shield=True):
                frames = await self._encode(version, digest, records, history, wire, key[3])
            entry = EncodedSnapshot(
                version, history, wire, frames, splice, sum(map(len, frames)),
                trio.current_time(), order,
            )  # fmt: skip
            build.result = entry
            self._store(key, entry)
            if key in self._entries:
                self._served_at[key] = entry.built_at
        finally:
            del self._building[key]
            build.done.set()
        self.stats.served += 1
        return entry

    async def _encode(
        self,
        version: int,
        digest: bytes,
        records: Sequence[Change],
        history: str,
        wire: int,
        request_id: int | None,
    ) -> tuple[bytes, ...]:
        """Chunk by chunk, each with the GC paused (its thousands of short-lived
        containers would otherwise trigger collections over the whole heap, tens of ms
        each at 100,000 shards), yielding between chunks."""
        size = self.limits.chunk_records
        chunks = max(1, (len(records) + size - 1) // size)
        frames: list[bytes] = []
        for seq in range(chunks):
            with gc_paused():
                part = tuple(records[seq * size : (seq + 1) * size])
                last = seq == chunks - 1
                chunk = SnapshotChunk(request_id, version, digest, seq, part, last, history)
                frames.append(server_frame(SERVER_TO_CLIENT.encode(chunk, wire)))
                del part, chunk
            await trio.lowlevel.checkpoint()
        return tuple(frames)

    def _store(self, key: tuple[int, str, int, int | None], entry: EncodedSnapshot) -> None:
        """Keep ``entry`` unless a view taken later is cached already; drop what is of
        another version or lineage (never asked for again), then the oldest while over
        the byte bound."""
        if any(e.order > entry.order for e in self._entries.values()):
            return
        for old_key, old in list(self._entries.items()):
            if (old.version, old.history) != (entry.version, entry.history):
                self._drop(old_key)
        self._entries[key] = entry
        self.stats.cache_bytes += entry.size_bytes
        while self._entries and self.stats.cache_bytes > self.limits.bytes_max:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple[int, str, int, int | None]) -> None:
        self.stats.cache_bytes -= self._entries.pop(key).size_bytes
        self._served_at.pop(key, None)

    def expire(self) -> None:
        """Drop entries not served for ``ttl_s`` (called on every lookup and by the
        hub's maintenance, at `next_expiry`, so an idle node does not hold them).
        Nothing expires while snapshot sends are in flight or queued: in a storm every
        slot can be held by slow receivers for longer than the TTL, and the requests
        queued behind them want the same version (the byte bound still holds)."""
        due, now = self.next_expiry(), trio.current_time()
        if due is None or due > now:
            return
        for key in list(self._entries):
            if self._due(key) <= now:
                self._drop(key)

    def next_expiry(self) -> float | None:
        """When `expire` drops the next entry (Trio clock); None while nothing can
        expire (no entries, or snapshot sends in flight or queued)."""
        if not self._entries or self.stats.sends_in_flight or self.stats.sends_waiting:
            return None
        return min(map(self._due, self._entries))

    def _due(self, key: tuple[int, str, int, int | None]) -> float:
        return self._served_at.get(key, self._entries[key].built_at) + self.limits.ttl_s


async def send_snapshot(
    connection: WsConnection, snapshot: EncodedSnapshot, request_id: int | None
) -> bool:
    """Write ``snapshot``'s chunks, draining after each (about one chunk of backlog per
    receiver); False if the connection broke or overflowed."""
    sender = connection.sender
    for frame in snapshot.frames_for(request_id):
        if not sender.send(frame):
            return False
        await sender.drain()
    return True
