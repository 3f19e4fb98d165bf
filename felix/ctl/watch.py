"""``ctl watch``: the broker stream (a snapshot or a replay, then every delta live), one
line per change, resumed on the next endpoint from the last version seen when a
connection drops.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from felix.broker.connection import ConnectionClosed
from felix.ctl.errors import CtlError, Outcome, server_error
from felix.ctl.render import json_default
from felix.ctl.session import RETRY_DELAY_S, Link, Retry, connect, parse_endpoints
from felix.proto.client_messages import (
    Change,
    ClientHello,
    Delta,
    DeltaPart,
    Deltas,
    Error,
    Resync,
    SnapshotChunk,
)
from felix.proto.errors import ProtocolError

Emit = Callable[[str], None]


def _change_line(output: str, version: int, change: Change) -> str:
    if output == "json":
        return json.dumps(
            {"version": version, "kind": change.kind, "key": change.key, "value": change.value},
            default=json_default,
        )
    if change.value is None:
        return f"{version}  DELETE  {change.kind} {change.key}"
    fields = json.dumps(change.value, default=json_default, separators=(",", ":"))
    return f"{version}  PUT     {change.kind} {change.key}  {fields}"


def _notice(output: str, text: str, **fields: Any) -> str:
    """A line about the stream itself (not a change): ``#``-prefixed, or JSON with an
    ``event`` field in JSON mode."""
    if output == "json":
        return json.dumps({"event": text, **fields})
    detail = " ".join(f"{k}={v}" for k, v in fields.items())
    return f"# {text}" + (f" {detail}" if detail else "")


class _WatchDone(Exception):
    pass


async def cmd_watch(args: argparse.Namespace, emit: Emit | None = None) -> Outcome:
    """Print every change from ``--from-version`` (default: now), one line each, until
    ``--count`` deltas that changed something (empty deltas, e.g. no-op entries and
    rejected commands, are neither printed nor counted) or Ctrl-C.  A dropped
    connection resumes on the next endpoint from the last version seen."""
    lines: list[str] = []
    out: Emit = emit if emit is not None else lines.append
    try:
        await _watch(args, out)
    except CtlError as exc:
        return exc.exit_code, f"felix: {exc}"
    return 0, "\n".join(lines)


async def _watch(args: argparse.Namespace, out: Emit) -> None:
    endpoints = parse_endpoints(args.endpoints)
    link = Link.from_args(args)
    if args.count is not None and args.count <= 0:
        return
    state = _WatchState(args.output, out, args.count, version=args.from_version)
    failures = 0  # consecutive endpoints that could not be reached
    attempt = 0
    while True:
        host, port = endpoints[attempt % len(endpoints)]
        attempt += 1
        name = f"{host}:{port}"
        try:
            conn = await connect(host, port, link)
        except Retry as exc:
            state.problems[name] = f"unreachable ({exc})"
            failures += 1
            if failures >= len(endpoints):
                summary = "; ".join(f"{n}: {p}" for n, p in state.problems.items())
                raise CtlError(
                    f"no endpoint reachable ({summary}); is the cluster running? (see --endpoints)"
                ) from None
            continue
        failures = 0
        try:
            await conn.send(ClientHello(None, state.version, ""))
            while True:
                for message in await conn.receive_batch():
                    state.on_message(message)
        except _WatchDone:
            return
        except (ConnectionClosed, ProtocolError) as exc:
            state.problems[name] = f"connection lost ({exc})"
            state.reset_partial()
            out(_notice(args.output, f"connection to {name} lost ({exc}); resuming"))
        finally:
            with trio.CancelScope(shield=True):
                await conn.aclose()
        await trio.sleep(RETRY_DELAY_S[0])


@dataclass
class _WatchState:
    output: str
    out: Emit
    count: int | None
    version: int | None
    seen: int = 0
    problems: dict[str, str] = field(default_factory=dict)
    _chunks: list[Change] = field(default_factory=list)
    _parts: list[Change] = field(default_factory=list)

    def reset_partial(self) -> None:
        self._chunks, self._parts = [], []

    def on_message(self, message: Any) -> None:
        if isinstance(message, SnapshotChunk) and message.request_id is None:
            self._chunks.extend(message.records)
            if message.last:
                records, self._chunks = len(self._chunks), []
                self.version = message.version
                self.out(_notice(self.output, "snapshot", version=message.version, records=records))
        elif isinstance(message, Deltas):
            for delta in message.deltas:
                self._apply(delta)
        elif isinstance(message, DeltaPart):
            self._parts.extend(message.changes)
            if message.last:
                changes, self._parts = tuple(self._parts), []
                self._apply(Delta(message.prev_version, message.version, message.digest, changes))
        elif isinstance(message, Resync):
            # The server closes the stream next; the reconnect asks for a new snapshot.
            self.version = None
            self.out(_notice(self.output, f"resync: {message.reason}"))
        elif isinstance(message, Error):
            raise server_error(message)
        # WatchProgress needs nothing: every delta up to it has been printed already.

    def _apply(self, delta: Delta) -> None:
        if self.version is not None and delta.version <= self.version:
            return  # already printed (a resumed stream never repeats, but be sure)
        self.version = delta.version
        if not delta.changes:
            return
        for change in delta.changes:
            self.out(_change_line(self.output, delta.version, change))
        self.seen += 1
        if self.count is not None and self.seen >= self.count:
            raise _WatchDone
