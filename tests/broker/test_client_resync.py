"""The real client against a scripted server on a real socket that sends a malformed
delta, delta part or snapshot record: the client resyncs (asks for a snapshot on the
next connection) and keeps going instead of dying."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial

import pytest
import trio

from felix.broker import open_metadata_client
from felix.metadata.commands import CreateStream, SetTenant
from felix.metadata.view import apply_changes
from felix.proto.client_messages import (
    CLIENT_TO_SERVER,
    SERVER_TO_CLIENT,
    Change,
    ClientHello,
    Delta,
    DeltaPart,
    Deltas,
    Record,
    SnapshotChunk,
)
from felix.proto.ws_frames import server_frame
from tests.broker.test_connection import accept_upgrade, unmask
from tests.metadata.harness import cluster


def frame(message: object) -> bytes:
    return server_frame(SERVER_TO_CLIENT.encode(message))


async def read_hello(stream: trio.SocketStream, data: bytes) -> ClientHello:
    while len(data) < 2 or len(data) < 6 + (data[1] & 0x7F):
        data += await stream.receive_some(4096)
    _, payload = unmask(data)
    hello = CLIENT_TO_SERVER.decode(payload)
    assert isinstance(hello, ClientHello)
    return hello


def broken(delta: Delta, records: dict[tuple[str, str], Record], digest: bytes) -> Delta:
    """``delta`` with its first record's first field of the wrong type, signed with the
    digest of what it claims (so only the record check can refuse it)."""
    first = delta.changes[0]
    assert first.value is not None
    name, old = next(iter(first.value.items()))
    bad = Change(first.kind, first.key, {**first.value, name: 7 if type(old) is str else "7"})
    changes = (bad, *delta.changes[1:])
    signed = apply_changes(dict(records), changes, int.from_bytes(digest, "big"))
    return replace(delta, changes=changes, digest=signed.to_bytes(8, "big"))


@dataclass
class Script:
    """What the server sends on each connection, and the ``from_version`` each Hello
    asked for."""

    first: list[bytes]
    then: list[bytes]
    hellos: list[int | None] = field(default_factory=list)

    async def serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            rest = await accept_upgrade(stream)
            hello = await read_hello(stream, rest)
            self.hellos.append(hello.from_version)
            await stream.send_all(b"".join(self.first if len(self.hellos) == 1 else self.then))
            try:
                while await stream.receive_some(4096):
                    pass  # until the client hangs up (it does, after the bad message)
            except trio.BrokenResourceError:
                pass


@pytest.mark.parametrize("how", ["delta", "delta part", "snapshot"])
async def test_a_malformed_message_makes_the_client_resync_not_die(how: str) -> None:
    h = cluster({1: "a", 2: "b"})
    h.ok(CreateStream("orders", 2, "acme", 2))
    v0, d0, records0 = h.state.version, h.state.digest, tuple(h.records())
    view0 = dict(h.view)
    good = h.ok(SetTenant("acme", "Acme Inc"))
    v1, d1, records1 = h.state.version, h.state.digest, tuple(h.records())
    after = h.ok(CreateStream("more", 1, "acme", 1))
    snapshot0 = frame(SnapshotChunk(None, v0, d0, 0, records0, True))
    if how == "delta":
        first = [snapshot0, frame(Deltas((broken(good, view0, d0),)))]
    elif how == "delta part":
        bad = broken(good, view0, d0)
        parts = [
            DeltaPart(bad.prev_version, bad.version, bad.digest, 0, False, ()),
            DeltaPart(bad.prev_version, bad.version, bad.digest, 1, True, bad.changes),
        ]
        first = [snapshot0, *(frame(p) for p in parts)]
    else:
        shard = next(i for i, c in enumerate(records0) if c.kind == "shard")
        value = dict(records0[shard].value or {})
        bad_records = list(records0)
        bad_records[shard] = Change("shard", records0[shard].key, {**value, "leader": -1})
        signed = apply_changes({}, bad_records).to_bytes(8, "big")
        first = [frame(SnapshotChunk(None, v0, signed, 0, tuple(bad_records), True))]
    then = [frame(SnapshotChunk(None, v1, d1, 0, records1, True)), frame(Deltas((after,)))]
    script = Script(first, then)
    with trio.fail_after(20):  # a hang guard only: every wait below is on an event
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                partial(trio.serve_tcp, host="127.0.0.1"), script.serve, 0
            )
            port = listeners[0].socket.getsockname()[1]
            async with open_metadata_client(
                [f"127.0.0.1:{port}"],
                node_id=None,
                register=False,
                digest_check_s=None,
                backoff_s_min=0.001,
                backoff_s_max=0.01,
            ) as view:
                await view.wait_version(after.version)
                stats = view.stats
                assert script.hellos == [None, None]  # the second connection asked afresh
                assert stats.resync_reasons == {"invalid": 1}
                assert stats.snapshots == (2 if how != "snapshot" else 1)
                assert view.cache.digest_bytes == h.state.digest
                assert dict(view.records) == h.view
                assert set(view.streams) == {"orders", "more"}
            nursery.cancel_scope.cancel()
