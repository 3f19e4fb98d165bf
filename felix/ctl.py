"""``felix ctl``: read and change the cluster metadata through the client API.

Every subcommand talks WebSocket to the nodes' client API (``--endpoints``, default the
``felix dev`` cluster's).  Reads ask for a linearizable snapshot (``--consistency s``
takes any node's applied view instead); writes are `WriteRequest`s.  A node that is not
the leader answers ``not_leader``, and the ctl tries the next endpoint, round after
round, until one accepts or ``--timeout`` runs out; it never maps node ids to addresses.

The command logic lives in ``async def`` functions that take the parsed arguments and
return ``(exit code, text)``: the text is the output on success (stdout) and the
``felix: ...`` message on failure (stderr).  `run` wraps one of them in one `trio.run`.

Exit codes: 0 ok, 1 the cluster said no (``felix: <code>: <detail>``), nothing reachable,
or no answer in time; 2 bad command-line input; 130 interrupted (``watch`` exits 0 on
Ctrl-C: that is how it is meant to end).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import trio

from felix.broker.connection import ClientConnection, ConnectionClosed
from felix.config import parse_endpoint
from felix.metadata.config import CONFIG_SPECS
from felix.metadata.digest import digest_bytes
from felix.metadata.model import (
    KIND_CONFIG,
    KIND_NODE,
    KIND_SHARD,
    KIND_STREAM,
    KIND_TENANT,
    KINDS,
)
from felix.metadata.view import RecordView, apply_changes
from felix.proto.client_messages import (
    Change,
    ClientHello,
    Delta,
    DeltaPart,
    Deltas,
    Error,
    ErrorCode,
    GetSnapshot,
    Resync,
    SnapshotChunk,
    WriteRequest,
    WriteResult,
)
from felix.proto.errors import ProtocolError

DEV_CLIENT_ENDPOINTS: Final = "127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003"
TIMEOUT_S_DEFAULT: Final = 10.0
CONNECT_TIMEOUT_S: Final = 2.0
RETRY_DELAY_S: Final = (0.05, 1.0)  # first and largest pause between rounds of endpoints
REQUEST_ID: Final = 1  # one request per connection
READ_RETRY_CODES: Final = frozenset(
    {ErrorCode.NOT_LEADER, ErrorCode.UNAVAILABLE, ErrorCode.TIMEOUT}
)
WRITE_RETRY_CODES: Final = frozenset(
    {ErrorCode.NOT_LEADER, ErrorCode.NOT_COMMITTED}
)  # never applied
TRUE_WORDS: Final = frozenset({"true", "yes", "on", "1"})
FALSE_WORDS: Final = frozenset({"false", "no", "off", "0"})

T = TypeVar("T")
Outcome = tuple[int, str]
Emit = Callable[[str], None]


class CtlError(Exception):
    """Ends a command: ``felix: <message>`` on stderr and ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _server_error(error: Error) -> CtlError:
    return CtlError(f"{error.code.value}: {error.detail}")


class _Retry(Exception):
    """This endpoint cannot serve the request now; try the next one."""


# --- argument parsing ---------------------------------------------------------------


def register(subparsers: Any) -> None:
    ctl = subparsers.add_parser(
        "ctl",
        help="read and change cluster metadata (streams, nodes, config, tenants)",
        description="Admin commands over the client API (WebSocket). Writes go to whichever "
        "endpoint accepts them (the leader); every write takes --expected-version "
        "(compare-and-set on the metadata version) and prints the version it committed at.",
    )
    sub = ctl.add_subparsers(dest="ctl_command", metavar="COMMAND", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--endpoints",
        default=DEV_CLIENT_ENDPOINTS,
        help=f"client API host:port list, tried in order (default {DEV_CLIENT_ENDPOINTS})",
    )
    common.add_argument("-o", "--output", choices=("table", "json"), default="table")
    common.add_argument(
        "--timeout",
        type=float,
        default=TIMEOUT_S_DEFAULT,
        help=f"give up after this many seconds (default {TIMEOUT_S_DEFAULT:g})",
    )
    read = argparse.ArgumentParser(add_help=False, parents=[common])
    read.add_argument(
        "--consistency",
        choices=("l", "s"),
        default="l",
        help="l: linearizable (through the leader, default); s: serializable (any node's "
        "applied state, possibly stale)",
    )
    write = argparse.ArgumentParser(add_help=False, parents=[common])
    write.add_argument(
        "--expected-version",
        type=int,
        metavar="V",
        help="apply only if the metadata version is still V (compare-and-set)",
    )

    def leaf(
        parent: Any,
        name: str,
        core: Callable[..., Awaitable[Outcome]],
        options: argparse.ArgumentParser,
        text: str,
    ) -> argparse.ArgumentParser:
        """A runnable subcommand: ``options`` (common/read/write) plus its own arguments."""
        parser: argparse.ArgumentParser = parent.add_parser(name, parents=[options], help=text)
        parser.set_defaults(handler=run, ctl_core=core)
        return parser

    leaf(sub, "snapshot", cmd_snapshot, read, "the full metadata view, a table per kind")
    watch = leaf(sub, "watch", cmd_watch, common, "print changes live, one line per change")
    watch.add_argument(
        "--from-version",
        type=int,
        metavar="N",
        help="replay the changes after version N first (default: from now)",
    )
    watch.add_argument("--count", type=int, metavar="N", help="exit after N deltas")

    stream = sub.add_parser("stream", help="streams").add_subparsers(
        dest="ctl_stream", metavar="COMMAND", required=True
    )
    create = leaf(stream, "create", cmd_stream_create, write, "create a stream")
    create.add_argument("name")
    create.add_argument("--shards", type=int, required=True)
    create.add_argument("--tenant", required=True)
    _stream_options(create)
    update = leaf(stream, "update", cmd_stream_update, write, "grow shards or change retention")
    update.add_argument("name")
    update.add_argument("--shards", type=int, help="new shard count (may only grow)")
    _stream_options(update)
    delete = leaf(stream, "delete", cmd_stream_delete, write, "delete a stream and its shards")
    delete.add_argument("name")
    leaf(stream, "list", cmd_stream_list, read, "list streams")

    node = sub.add_parser("node", help="broker nodes").add_subparsers(
        dest="ctl_node", metavar="COMMAND", required=True
    )
    leaf(node, "list", cmd_node_list, read, "list broker nodes")
    reg = leaf(node, "register", cmd_node_register, write, "register a broker (starts fenced)")
    reg.add_argument("id", type=int)
    reg.add_argument("--address", required=True, help="the broker's host:port")
    reg.add_argument("--rack", default="", help="rack (for rack-aware placement)")
    health = leaf(node, "health", cmd_node_health, write, "mark a broker up or down")
    health.add_argument("id", type=int)
    health.add_argument("status", choices=("up", "down"))
    health.add_argument("--epoch", type=int, help="refuse if the node re-registered since")
    for name, core, text in (
        ("drain", cmd_node_drain, "move shard leadership off a broker; no new replicas"),
        ("undrain", cmd_node_undrain, "end a drain"),
    ):
        leaf(node, name, core, write, text).add_argument("id", type=int)

    shard = sub.add_parser("shard", help="shards").add_subparsers(
        dest="ctl_shard", metavar="COMMAND", required=True
    )
    shard_list = leaf(shard, "list", cmd_shard_list, read, "list shards, replicas and leaders")
    shard_list.add_argument("--stream", help="only this stream's shards")
    move = leaf(shard, "move-leader", cmd_shard_move_leader, write, "make a replica the leader")
    move.add_argument("shard", help="'stream/index'")
    move.add_argument("node_id", type=int)

    config = sub.add_parser("config", help="cluster configuration keys").add_subparsers(
        dest="ctl_config", metavar="COMMAND", required=True
    )
    get = leaf(config, "get", cmd_config_get, read, "show keys (defaults for unset ones)")
    get.add_argument("key", nargs="?", help="one key (default: all)")
    set_ = leaf(config, "set", cmd_config_set, write, "set a key (VALUE parsed by its type)")
    set_.add_argument("key", help=f"one of: {', '.join(CONFIG_SPECS)}")
    set_.add_argument("value")
    unset = leaf(config, "unset", cmd_config_unset, write, "revert a key to its default")
    unset.add_argument("key")

    tenant = sub.add_parser("tenant", help="tenants and quotas").add_subparsers(
        dest="ctl_tenant", metavar="COMMAND", required=True
    )
    tenant_set = leaf(tenant, "set", cmd_tenant_set, write, "create or update a tenant")
    tenant_set.add_argument("name")
    tenant_set.add_argument("--display-name", default="")
    remove = leaf(tenant, "remove", cmd_tenant_remove, write, "delete a tenant (owning no streams)")
    remove.add_argument("name")
    leaf(tenant, "list", cmd_tenant_list, read, "list tenants and quotas")
    quota = leaf(
        tenant,
        "quota",
        cmd_tenant_quota,
        write,
        "replace a tenant's quotas (an omitted one becomes unlimited)",
    )
    quota.add_argument("name")
    quota.add_argument("--streams-max", type=int, metavar="N")
    quota.add_argument("--shards-max", type=int, metavar="N")
    quota.add_argument("--bytes-per-s", type=int, metavar="N")


def _stream_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--replication-factor", type=int, metavar="R", help="default: the cluster's default"
    )
    parser.add_argument("--retention-ms", type=int, metavar="MS")


def run(args: argparse.Namespace) -> int:
    """The ``handler`` of every ctl subcommand: one `trio.run`, output, exit code."""
    core = args.ctl_core
    watching = core is cmd_watch
    try:
        if watching:
            code, text = trio.run(cmd_watch, args, _print_line)
        else:
            code, text = trio.run(core, args)
    except BaseException as exc:
        if not _interrupted(exc):
            if isinstance(exc, Exception):  # never a traceback
                print(f"felix: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 1
            raise
        return 0 if watching else 130
    if text:
        print(text, file=sys.stdout if code == 0 else sys.stderr)
    return code


def _interrupted(exc: BaseException) -> bool:
    if isinstance(exc, KeyboardInterrupt):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_interrupted(e) for e in exc.exceptions)
    return False


def _print_line(line: str) -> None:
    print(line, flush=True)


def _core(
    fn: Callable[[argparse.Namespace], Awaitable[str]],
) -> Callable[[argparse.Namespace], Awaitable[Outcome]]:
    @functools.wraps(fn)
    async def wrapper(args: argparse.Namespace) -> Outcome:
        try:
            return 0, await fn(args)
        except CtlError as exc:
            return exc.exit_code, f"felix: {exc}"

    return wrapper


# --- talking to the cluster ---------------------------------------------------------


def parse_endpoints(text: str) -> list[tuple[str, int]]:
    endpoints = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            endpoint = parse_endpoint(item)
        except ValueError as exc:
            raise CtlError(f"--endpoints: {item!r}: {exc}", exit_code=2) from None
        endpoints.append((endpoint.host, endpoint.port))
    if not endpoints:
        raise CtlError("--endpoints: no endpoint given", exit_code=2)
    return endpoints


async def _connect(host: str, port: int) -> ClientConnection:
    try:
        return await ClientConnection.open(host, port, timeout_s=CONNECT_TIMEOUT_S)
    except trio.TooSlowError:
        raise _Retry(f"no WebSocket handshake within {CONNECT_TIMEOUT_S:g} s") from None
    except OSError as exc:
        raise _Retry(_os_reason(exc)) from None
    except (ConnectionClosed, ProtocolError) as exc:
        raise _Retry(f"handshake failed: {exc}") from None


def _os_reason(exc: OSError) -> str:
    """Say "connection refused" rather than trio's "all attempts to connect ... failed"."""
    causes: list[BaseException] = [exc]
    if isinstance(exc.__cause__, BaseExceptionGroup):
        causes = list(exc.__cause__.exceptions)
    reasons = {
        c.strerror.rsplit(": ", 1)[-1].lower()
        for c in causes
        if isinstance(c, OSError) and c.strerror
    }
    return ", ".join(sorted(reasons)) or str(exc)


@dataclass
class _Tries:
    """What the endpoints said so far, for the error message when none would do."""

    problems: dict[str, str] = field(default_factory=dict)
    in_doubt: str | None = None  # the endpoint holding a write with no outcome yet

    def summary(self) -> str:
        return "; ".join(f"{name}: {problem}" for name, problem in self.problems.items())


async def _on_some_endpoint(
    args: argparse.Namespace, attempt: Callable[[ClientConnection, str, _Tries], Awaitable[T]]
) -> T:
    """Run ``attempt`` on the endpoints in order, round after round (with back-off),
    until one does not raise `_Retry`.  A round in which nothing was even reachable ends
    the command, as does ``--timeout``."""
    endpoints = parse_endpoints(args.endpoints)
    tries = _Tries()
    delay = RETRY_DELAY_S[0]
    with trio.move_on_after(args.timeout):
        while True:
            reachable = False
            for host, port in endpoints:
                name = f"{host}:{port}"
                try:
                    conn = await _connect(host, port)
                except _Retry as exc:
                    tries.problems[name] = f"unreachable ({exc})"
                    continue
                reachable = True
                try:
                    return await attempt(conn, name, tries)
                except _Retry as exc:
                    tries.problems[name] = str(exc)
                finally:
                    with trio.CancelScope(shield=True):
                        await conn.aclose()
            if not reachable:
                raise CtlError(
                    f"no endpoint reachable ({tries.summary()}); "
                    "is the cluster running? (see --endpoints)"
                )
            await trio.sleep(delay)
            delay = min(delay * 2, RETRY_DELAY_S[1])
    if tries.in_doubt is not None:
        raise CtlError(
            f"timeout: no outcome from {tries.in_doubt} within {args.timeout:g} s; "
            "the write may still be applied"
        )
    raise CtlError(
        f"timeout: no endpoint served the request within {args.timeout:g} s"
        + (f" ({tries.summary()})" if tries.problems else "")
    )


async def write(args: argparse.Namespace, command: str, command_args: dict[str, Any]) -> int:
    """Commit one metadata command; returns the version it was applied at."""
    request = WriteRequest(REQUEST_ID, command, command_args, args.expected_version)

    async def attempt(conn: ClientConnection, name: str, tries: _Tries) -> int:
        tries.in_doubt = name
        try:
            await conn.send(request)
            reply = await _reply(conn)
        except (ConnectionClosed, ProtocolError) as exc:
            raise CtlError(
                f"{name}: connection lost before the write's outcome was known "
                f"(it may still be applied): {exc}"
            ) from None
        tries.in_doubt = None
        if isinstance(reply, WriteResult):
            return reply.version
        if reply.code in WRITE_RETRY_CODES:
            raise _Retry(f"{reply.code.value}: {reply.detail}")
        raise _server_error(reply)

    return await _on_some_endpoint(args, attempt)


async def _reply(conn: ClientConnection) -> WriteResult | Error:
    while True:
        message = await conn.receive()
        if isinstance(message, WriteResult) and message.request_id == REQUEST_ID:
            return message
        if isinstance(message, Error) and message.request_id in (REQUEST_ID, None):
            return message


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

    async def attempt(conn: ClientConnection, name: str, tries: _Tries) -> Snapshot:
        records: list[Change] = []
        seq = 0
        try:
            await conn.send(request)
            while True:
                message = await conn.receive()
                if isinstance(message, SnapshotChunk) and message.request_id == REQUEST_ID:
                    if message.seq != seq:
                        raise _Retry(f"snapshot chunk {message.seq} arrived, expected {seq}")
                    seq += 1
                    records.extend(message.records)
                    if message.last:
                        break
                elif isinstance(message, Error) and message.request_id in (REQUEST_ID, None):
                    if message.code in READ_RETRY_CODES:
                        raise _Retry(f"{message.code.value}: {message.detail}")
                    raise _server_error(message)
        except (ConnectionClosed, ProtocolError) as exc:
            raise _Retry(f"connection lost: {exc}") from None
        view: RecordView = {}
        digest = digest_bytes(apply_changes(view, records))
        if digest != message.digest:
            raise _Retry(f"snapshot at version {message.version} failed its digest check")
        return Snapshot(message.version, message.digest, view, name)

    return await _on_some_endpoint(args, attempt)


# --- output -------------------------------------------------------------------------


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


def _records_table(kind: str, records: Sequence[tuple[str, Mapping[str, Any]]], empty: str) -> str:
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


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _list_output(args: argparse.Namespace, snap: Snapshot, kind: str, empty: str) -> str:
    records = snap.of_kind(kind)
    if args.output == "json":
        return _json([dict(value) for _, value in records])
    return _records_table(kind, records, empty)


def _written(args: argparse.Namespace, command: str, version: int) -> str:
    if args.output == "json":
        return json.dumps({"command": command, "version": version})
    return f"ok: {command} applied at version {version}"


async def _write_and_report(
    args: argparse.Namespace, command: str, command_args: dict[str, Any]
) -> str:
    return _written(args, command, await write(args, command, command_args))


def _given(**values: Any) -> dict[str, Any]:
    """The optional command args the user gave (absent ones take the command default)."""
    return {k: v for k, v in values.items() if v is not None}


# --- commands -----------------------------------------------------------------------


@_core
async def cmd_snapshot(args: argparse.Namespace) -> str:
    snap = await fetch_snapshot(args)
    kinds = list(KINDS) + sorted({kind for kind, _ in snap.records} - set(KINDS))
    if args.output == "json":
        return _json(
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
        sections.append(f"{kind} ({len(records)})\n" + _records_table(kind, records, "(none)"))
    return "\n\n".join(sections)


@_core
async def cmd_stream_list(args: argparse.Namespace) -> str:
    return _list_output(args, await fetch_snapshot(args), KIND_STREAM, "no streams")


@_core
async def cmd_node_list(args: argparse.Namespace) -> str:
    return _list_output(args, await fetch_snapshot(args), KIND_NODE, "no nodes")


@_core
async def cmd_tenant_list(args: argparse.Namespace) -> str:
    return _list_output(args, await fetch_snapshot(args), KIND_TENANT, "no tenants")


@_core
async def cmd_shard_list(args: argparse.Namespace) -> str:
    snap = await fetch_snapshot(args)
    records = [
        (key, value)
        for key, value in snap.of_kind(KIND_SHARD)
        if args.stream is None or value.get("stream") == args.stream
    ]
    if args.output == "json":
        return _json([dict(value) for _, value in records])
    return _records_table(KIND_SHARD, records, "no shards")


@_core
async def cmd_config_get(args: argparse.Namespace) -> str:
    snap = await fetch_snapshot(args)
    set_values = {key: value.get("value") for key, value in snap.of_kind(KIND_CONFIG)}
    names = list(CONFIG_SPECS) + sorted(set(set_values) - set(CONFIG_SPECS))
    if args.key is not None:
        if args.key not in CONFIG_SPECS and args.key not in set_values:
            raise CtlError(f"bad_request: {_unknown_key(args.key)}")
        names = [args.key]
    rows = []
    for name in names:
        spec = CONFIG_SPECS.get(name)
        default = None if spec is None else spec.default
        is_set = name in set_values
        rows.append(
            {
                "name": name,
                "value": set_values[name] if is_set else default,
                "default": default,
                "set": is_set,
            }
        )
    if args.output == "json":
        return _json(rows[0] if args.key is not None else rows)
    return table(
        ["NAME", "VALUE", "DEFAULT", "SOURCE"],
        [[r["name"], r["value"], r["default"], "set" if r["set"] else "default"] for r in rows],
    )


def _unknown_key(name: str) -> str:
    return f"unknown config key {name!r} (known: {', '.join(sorted(CONFIG_SPECS))})"


def parse_config_value(name: str, text: str) -> int | bool | str:
    """``text`` as the type of config key ``name`` (ranges are checked by the server)."""
    spec = CONFIG_SPECS.get(name)
    if spec is None:
        raise CtlError(f"bad_request: {_unknown_key(name)}")
    if spec.kind is bool:
        word = text.strip().lower()
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
        raise CtlError(f"bad_request: config {name} takes a bool (true/false), got {text!r}")
    if spec.kind is int:
        try:
            return int(text.strip(), 10)
        except ValueError:
            raise CtlError(f"bad_request: config {name} takes an int, got {text!r}") from None
    return text


@_core
async def cmd_config_set(args: argparse.Namespace) -> str:
    value = parse_config_value(args.key, args.value)
    return await _write_and_report(args, "set_config", {"name": args.key, "value": value})


@_core
async def cmd_config_unset(args: argparse.Namespace) -> str:
    if args.key not in CONFIG_SPECS:
        raise CtlError(f"bad_request: {_unknown_key(args.key)}")
    return await _write_and_report(args, "set_config", {"name": args.key, "value": None})


@_core
async def cmd_stream_create(args: argparse.Namespace) -> str:
    command_args = {"name": args.name, "shards": args.shards, "tenant": args.tenant}
    command_args |= _given(
        replication_factor=args.replication_factor, retention_ms=args.retention_ms
    )
    return await _write_and_report(args, "create_stream", command_args)


@_core
async def cmd_stream_update(args: argparse.Namespace) -> str:
    changes = _given(
        shards=args.shards,
        replication_factor=args.replication_factor,
        retention_ms=args.retention_ms,
    )
    if not changes:
        raise CtlError(
            "ctl stream update: nothing to change "
            "(give --shards, --replication-factor or --retention-ms)",
            exit_code=2,
        )
    return await _write_and_report(args, "update_stream", {"name": args.name, **changes})


@_core
async def cmd_stream_delete(args: argparse.Namespace) -> str:
    return await _write_and_report(args, "delete_stream", {"name": args.name})


@_core
async def cmd_node_register(args: argparse.Namespace) -> str:
    command_args = {"node_id": args.id, "address": args.address, "rack": args.rack}
    return await _write_and_report(args, "register_node", command_args)


@_core
async def cmd_node_health(args: argparse.Namespace) -> str:
    command_args = {"node_id": args.id, "status": args.status} | _given(epoch=args.epoch)
    return await _write_and_report(args, "node_health", command_args)


@_core
async def cmd_node_drain(args: argparse.Namespace) -> str:
    return await _write_and_report(args, "drain_node", {"node_id": args.id})


@_core
async def cmd_node_undrain(args: argparse.Namespace) -> str:
    return await _write_and_report(args, "undrain_node", {"node_id": args.id})


@_core
async def cmd_shard_move_leader(args: argparse.Namespace) -> str:
    command_args = {"shard": args.shard, "node_id": args.node_id}
    return await _write_and_report(args, "move_shard_leader", command_args)


@_core
async def cmd_tenant_set(args: argparse.Namespace) -> str:
    command_args = {"name": args.name, "display_name": args.display_name}
    return await _write_and_report(args, "set_tenant", command_args)


@_core
async def cmd_tenant_remove(args: argparse.Namespace) -> str:
    return await _write_and_report(args, "set_tenant", {"name": args.name, "remove": True})


@_core
async def cmd_tenant_quota(args: argparse.Namespace) -> str:
    command_args = {
        "tenant": args.name,
        "streams_max": args.streams_max,
        "shards_max": args.shards_max,
        "bytes_per_s": args.bytes_per_s,
    }
    return await _write_and_report(args, "set_quota", command_args)


# --- watch --------------------------------------------------------------------------


def _change_line(output: str, version: int, change: Change) -> str:
    if output == "json":
        return json.dumps(
            {"version": version, "kind": change.kind, "key": change.key, "value": change.value},
            default=_json_default,
        )
    if change.value is None:
        return f"{version}  DELETE  {change.kind} {change.key}"
    fields = json.dumps(change.value, default=_json_default, separators=(",", ":"))
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
            conn = await _connect(host, port)
        except _Retry as exc:
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
            raise _server_error(message)
        # Progress needs nothing: every delta up to it has been printed already.

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
