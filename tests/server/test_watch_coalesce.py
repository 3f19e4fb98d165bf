"""A slow subscriber over a real loopback WebSocket: held past 64 queued messages, it gets
ONE coalesced delta when it reads again, applied by a real broker cache (digest checked)
to the server's view at the newest version; past the held-bytes bound it resyncs.

The socket is made full deterministically: the server's kernel send buffer is shrunk
(and so locked), the client stops reading (its receive buffer grows only as it reads),
and 64 messages of a few KiB are more than both take; the test waits on the hub's own
state (the sender's backlog, the held net delta) after each fan-out -- never on time."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from felix.broker.cache import DeltaAssembler, MetadataCache
from felix.broker.connection import ClientConnection, ConnectionClosed
from felix.config import ConfigError, load_config
from felix.metadata.digest import digest_bytes
from felix.metadata.model import ConfigEntry
from felix.metadata.view import RecordView, apply_changes
from felix.proto.client_messages import (
    CLIENT_TO_SERVER,
    Change,
    ClientHello,
    Delta,
    DeltaPart,
    Deltas,
    Resync,
    SnapshotChunk,
    WatchProgress,
)
from felix.server.metrics import NodeMetrics
from felix.server.watch_hub import HubLimits, Subscriber, WatchHub, delta_size
from felix.server.ws_server import WsConnection, serve_ws

SMALL_BUFFER_BYTES = 4096  # the kernel doubles it: far below 64 messages
VALUE_BYTES = 200  # each change's value: a version's message is a few KiB


class Control:
    """The control plane's side: a real view of config records, its real digest, and one
    delta per version published to the hub."""

    def __init__(self) -> None:
        self.view: RecordView = {}
        self.digest = 0
        self.version = 0
        self.hub: WatchHub | None = None

    def snapshot(self) -> tuple[int, bytes, Sequence[Change]]:
        records = [Change(kind, key, value) for (kind, key), value in sorted(self.view.items())]
        return self.version, digest_bytes(self.digest), records

    def publish(self, changes: Sequence[Change]) -> Delta:
        prev, self.version = self.version, self.version + 1
        self.digest = apply_changes(self.view, changes, self.digest)
        delta = Delta(prev, self.version, digest_bytes(self.digest), tuple(changes))
        assert self.hub is not None
        self.hub.publish([delta])
        return delta

    def rewrite(self, keys: range, *, delete: int | None = None) -> Delta:
        """Every key in ``keys`` set to a new value (``delete``: that one deleted)."""
        changes = [
            Change("config", f"c{k}", None)
            if k == delete
            else Change(
                "config",
                f"c{k}",
                ConfigEntry(f"c{k}", f"{self.version}:" + "x" * VALUE_BYTES).to_record(),
            )
            for k in keys
        ]
        return self.publish(changes)


@asynccontextmanager
async def serving(limits: HubLimits) -> AsyncIterator[tuple[Control, WatchHub, int]]:
    control = Control()
    hub = WatchHub(control.snapshot, limits)
    control.hub = hub

    async def handler(conn: WsConnection) -> None:
        # A small (locked) send buffer: the kernel holds a few KiB, the rest queues in
        # the connection's backlog, where the hub counts it.
        conn.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER_BYTES)
        hello = CLIENT_TO_SERVER.decode(await conn.receive())
        assert isinstance(hello, ClientHello)
        reason = await hub.watch(conn, hello.from_version)
        await conn.close(4001, reason[:100])

    async with trio.open_nursery() as nursery:
        port = await nursery.start(
            lambda task_status: serve_ws(
                handler, "127.0.0.1", 0, backlog_bytes_max=4 << 20, task_status=task_status
            )
        )
        nursery.start_soon(hub.run)
        yield control, hub, port
        nursery.cancel_scope.cancel()


class Broker:
    """A real broker cache fed from a raw client connection, as the broker library does:
    every delta checked (chain and digest, ``verify_deltas``), parts applied at the last."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.cache = MetadataCache(None, verify_deltas=True)
        self.deltas: list[tuple[int, int]] = []  # (prev_version, version) as applied
        self.parts = 0
        self.resyncs: list[str] = []
        self._assembler = DeltaAssembler()
        self._chunks: list[Change] = []

    def apply(self, message: object) -> None:
        if isinstance(message, SnapshotChunk):
            self._chunks.extend(message.records)
            if message.last:
                records, self._chunks = self._chunks, []
                self.cache.apply_snapshot(message.version, message.digest, records)
        elif isinstance(message, Deltas):
            for delta in message.deltas:
                self._apply(delta)
        elif isinstance(message, DeltaPart):
            self.parts += 1
            whole = self._assembler.add(message)
            if whole is not None:
                self._apply(whole)
        elif isinstance(message, Resync):
            self.resyncs.append(message.reason)
        else:
            assert isinstance(message, WatchProgress), message

    def _apply(self, delta: Delta) -> None:
        self.cache.apply_delta(delta)  # raises on a gap or a digest mismatch
        self.deltas.append((delta.prev_version, delta.version))

    async def read_until(self, version: int) -> None:
        with trio.fail_after(20):  # a guard against hanging, not a timing assertion
            while self.cache.version is None or self.cache.version < version:
                for message in await self.conn.receive_batch():
                    self.apply(message)

    async def read_until_closed(self) -> None:
        with trio.fail_after(20), pytest.raises(ConnectionClosed):
            while True:
                for message in await self.conn.receive_batch():
                    self.apply(message)


async def subscribe(port: int, hub: WatchHub, control: Control) -> tuple[Broker, Subscriber]:
    """A broker, its snapshot applied, live."""
    before = set(hub._subscribers)
    conn = await ClientConnection.open("127.0.0.1", port)
    await conn.send(ClientHello(7, None, "t"))
    broker = Broker(conn)
    await broker.read_until(control.version)
    await trio.testing.wait_all_tasks_blocked()
    (sub,) = set(hub._subscribers) - before  # white box: the hub's side of it
    assert sub.live and sub.held is None
    return broker, sub


async def fill_until_held(control: Control, hub: WatchHub, sub: Subscriber, keys: range) -> int:
    """Publish a version at a time, while the broker does not read, until the hub holds
    deltas for it; returns the last version it was sent (the held delta's base)."""
    for _ in range(10_000):
        control.rewrite(keys)
        await hub.wait_fanned_out()
        if sub.held is not None:
            break
    assert sub.held is not None, "the socket never filled"
    assert sub.connection.sender.backlog_frames >= hub.limits.coalesce_after_frames
    return sub.held.prev_version


def exported(hub: WatchHub) -> str:
    metrics = NodeMetrics(1)
    metrics.watch_stats(lambda: hub)
    return metrics.exposition().decode()


async def test_a_slow_subscriber_gets_one_coalesced_delta_and_the_newest_view() -> None:
    # Coalesce past 64 queued messages, as in production; WatchProgress and snapshot
    # expiry only hourly, so the flush of what is held cannot ride on their wake-ups.
    limits = HubLimits(progress_interval_s=3600.0, snapshot_cache_ttl_s=3600.0)
    assert limits.coalesce_after_frames == 64
    keys = range(20)
    async with serving(limits) as (control, hub, port):
        control.rewrite(keys)
        broker, sub = await subscribe(port, hub, control)
        snapshot_version = control.version

        base = await fill_until_held(control, hub, sub, keys)  # 64 messages queued
        assert sub.held is not None and control.version - sub.held.versions == base
        # Many more versions while it still does not read: records updated, deleted and
        # recreated.  What is held stays one change per record.
        sizes = []
        for n in range(500):
            delta = control.rewrite(keys, delete=n % 7 if n % 3 == 0 else None)
            sizes.append(delta_size(delta))
            await hub.wait_fanned_out()
            held = sub.held
            assert held is not None  # still full: nothing drained, nothing flushed
            assert held.records == len(keys) and held.versions == control.version - base
        assert held.size_bytes <= max(sizes) and sum(sizes) > 400 * held.size_bytes
        assert f"felix_watch_held_bytes {float(held.size_bytes)}" in exported(hub)

        newest = control.version
        await broker.read_until(newest)

        # Every message that was queued arrived one version each; then ONE delta from
        # the version it was last sent to the newest, digest-checked by the cache.
        assert broker.deltas[-1] == (base, newest)
        assert [v for _, v in broker.deltas[:-1]] == list(range(snapshot_version + 1, base + 1))
        assert broker.cache.records == control.view
        assert broker.cache.digest_bytes == digest_bytes(control.digest)
        assert broker.cache.recompute_digest() == broker.cache.digest
        assert broker.resyncs == [] and hub.stats.resyncs == 0 and hub.watchers == 1
        assert hub.stats.coalesced == 1 and hub.stats.coalesced_versions == newest - base
        assert sub.held is None and hub.held_bytes == 0
        text = exported(hub)
        assert "felix_watch_coalesced_total 1.0" in text
        assert f"felix_watch_coalesced_versions_total {float(newest - base)}" in text

        control.rewrite(keys)  # and it is live again: the next version as usual
        await broker.read_until(control.version)
        assert broker.deltas[-1] == (newest, control.version)
        assert broker.cache.records == control.view


async def test_a_coalesced_delta_bigger_than_a_message_goes_in_parts() -> None:
    """The net delta over more records than fit one message is sent as `DeltaPart`s,
    which the broker applies at the last one: still one atomic step to the newest."""
    limits = HubLimits(message_bytes_max=8192)
    async with serving(limits) as (control, hub, port):
        control.rewrite(range(10))
        broker, sub = await subscribe(port, hub, control)
        base = await fill_until_held(control, hub, sub, range(10))
        for n in range(50):  # a different slice of a wide key space each version
            control.rewrite(range(10 + 10 * n, 20 + 10 * n))
            await hub.wait_fanned_out()
        assert sub.held is not None and sub.held.size_bytes > 4 * limits.message_bytes_max
        newest = control.version
        await broker.read_until(newest)
        assert broker.deltas[-1] == (base, newest) and broker.parts > 4
        assert broker.cache.records == control.view
        assert broker.cache.digest_bytes == digest_bytes(control.digest)
        assert broker.resyncs == [] and hub.stats.coalesced == 1


async def test_past_the_held_bytes_bound_it_resyncs_and_the_others_do_not() -> None:
    held_max = 64 * 1024
    limits = HubLimits(subscriber_held_bytes_max=held_max)
    async with serving(limits) as (control, hub, port):
        control.rewrite(range(10))
        slow, slow_sub = await subscribe(port, hub, control)
        fast, fast_sub = await subscribe(port, hub, control)
        await fill_until_held_while_reading(control, hub, slow_sub, fast)
        # New records every version: the net delta grows until it passes the bound.
        n = 0
        while hub.stats.resyncs == 0:
            n += 1
            assert n < 10_000, "never passed the bound"
            held = slow_sub.held
            assert held is not None and held.size_bytes <= held_max
            assert held.versions <= limits.subscriber_lag_versions_max
            control.rewrite(range(10 * n, 10 * n + 10))
            await hub.wait_fanned_out()
            await fast.read_until(control.version)
        assert hub.stats.slow_disconnects == 1 and hub.watchers == 1
        assert fast_sub.held is None and fast_sub in hub._subscribers

        await slow.read_until_closed()
        assert slow.resyncs == [
            f"subscriber too slow: more than {held_max} bytes of changes held for it"
        ]
        assert slow.cache.version is not None and slow.cache.version < control.version

        control.rewrite(range(5))  # the others go on as before
        await fast.read_until(control.version)
        assert fast.cache.records == control.view and fast.resyncs == []
        assert fast.cache.digest_bytes == digest_bytes(control.digest)


async def fill_until_held_while_reading(
    control: Control, hub: WatchHub, sub: Subscriber, reader: Broker
) -> None:
    """`fill_until_held` for ``sub`` while ``reader`` keeps up."""
    for _ in range(10_000):
        control.rewrite(range(10))
        await hub.wait_fanned_out()
        await reader.read_until(control.version)
        if sub.held is not None:
            return
    raise AssertionError("the socket never filled")


def test_the_held_bytes_bound_is_a_config_key(tmp_path: Path) -> None:
    from felix.server.app import hub_limits_for

    default = load_config(env={})
    assert default.watch.subscriber_held_bytes_max == HubLimits().subscriber_held_bytes_max
    config = load_config(env={"FELIX_WATCH__SUBSCRIBER_HELD_BYTES_MAX": "65536"})
    assert hub_limits_for(config).subscriber_held_bytes_max == 65536
    path = tmp_path / "felix.toml"
    path.write_text("[watch]\nsubscriber_held_bytes_max = 100\n")
    with pytest.raises(ConfigError, match=r"watch.subscriber_held_bytes_max: must be >= 4096"):
        load_config(path, env={})
