"""Writes: one `WriteRequest` committed through whichever endpoint accepts it (the
leader), and the subcommands that send one (stream, node, shard, tenant).  Only
refusals that mean "never applied" are retried on the next endpoint.
"""

from __future__ import annotations

import argparse
from typing import Any, Final

import trio

from felix.broker.connection import ClientConnection, ConnectionClosed
from felix.ctl.errors import CtlError, core, server_error
from felix.ctl.reads import fetch_snapshot
from felix.ctl.render import written
from felix.ctl.session import REQUEST_ID, Retry, Tries, on_some_endpoint
from felix.proto.client_messages import Error, ErrorCode, WriteRequest, WriteResult
from felix.proto.errors import ProtocolError

DRAIN_POLL_S: Final = 0.2
WRITE_RETRY_CODES: Final = frozenset(
    {ErrorCode.NOT_LEADER, ErrorCode.NOT_COMMITTED}
)  # never applied


async def write(args: argparse.Namespace, command: str, command_args: dict[str, Any]) -> int:
    """Commit one metadata command; returns the version it was applied at."""
    request = WriteRequest(REQUEST_ID, command, command_args, args.expected_version)

    async def attempt(conn: ClientConnection, name: str, tries: Tries) -> int:
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
            raise Retry(f"{reply.code.value}: {reply.detail}")
        raise server_error(reply)

    return await on_some_endpoint(args, attempt)


async def _reply(conn: ClientConnection) -> WriteResult | Error:
    while True:
        message = await conn.receive()
        if isinstance(message, WriteResult) and message.request_id == REQUEST_ID:
            return message
        if isinstance(message, Error) and message.request_id in (REQUEST_ID, None):
            return message


async def write_and_report(
    args: argparse.Namespace, command: str, command_args: dict[str, Any]
) -> str:
    return written(args, command, await write(args, command, command_args))


def _given(**values: Any) -> dict[str, Any]:
    """The optional command args the user gave (absent ones take the command default)."""
    return {k: v for k, v in values.items() if v is not None}


@core
async def cmd_stream_create(args: argparse.Namespace) -> str:
    command_args = {"name": args.name, "shards": args.shards, "tenant": args.tenant,
                    "force": args.force}  # fmt: skip
    command_args |= _given(
        replication_factor=args.replication_factor, retention_ms=args.retention_ms
    )
    return await write_and_report(args, "create_stream", command_args)


@core
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
    command_args = {"name": args.name, "force": args.force, **changes}
    return await write_and_report(args, "update_stream", command_args)


@core
async def cmd_stream_delete(args: argparse.Namespace) -> str:
    return await write_and_report(args, "delete_stream", {"name": args.name})


@core
async def cmd_node_register(args: argparse.Namespace) -> str:
    command_args = {"node_id": args.id, "address": args.address, "rack": args.rack}
    return await write_and_report(args, "register_node", command_args)


@core
async def cmd_node_health(args: argparse.Namespace) -> str:
    """An operator's verdict: a "down" is safety-checked (``--force`` overrides)."""
    command_args = {"node_id": args.id, "status": args.status, "operator": True,
                    "force": args.force} | _given(epoch=args.epoch)  # fmt: skip
    return await write_and_report(args, "node_health", command_args)


@core
async def cmd_node_drain(args: argparse.Namespace) -> str:
    """``--wait``: return only once the drain is complete (it leads nothing and every
    live broker has applied that; docs/architecture.md §13), within ``--timeout``."""
    version = await write(args, "drain_node", {"node_id": args.id, "force": args.force})
    if args.wait:
        await _wait_drained(args)
    return written(args, "drain_node", version)


async def _wait_drained(args: argparse.Namespace) -> None:
    with trio.move_on_after(args.timeout):
        while True:
            node = (await fetch_snapshot(args)).records.get(("node", str(args.id)), {})
            if node.get("drain_acked"):
                return
            await trio.sleep(DRAIN_POLL_S)
    raise CtlError(
        f"node {args.id}: the drain did not complete within {args.timeout:g} s (a shard with "
        "no other live replica, or a live broker that has not applied the change)"
    )


@core
async def cmd_node_undrain(args: argparse.Namespace) -> str:
    return await write_and_report(args, "undrain_node", {"node_id": args.id})


@core
async def cmd_shard_move_leader(args: argparse.Namespace) -> str:
    command_args = {"shard": args.shard, "node_id": args.node_id}
    return await write_and_report(args, "move_shard_leader", command_args)


@core
async def cmd_tenant_set(args: argparse.Namespace) -> str:
    command_args = {"name": args.name, "display_name": args.display_name}
    return await write_and_report(args, "set_tenant", command_args)


@core
async def cmd_tenant_remove(args: argparse.Namespace) -> str:
    return await write_and_report(args, "set_tenant", {"name": args.name, "remove": True})


@core
async def cmd_tenant_quota(args: argparse.Namespace) -> str:
    command_args = {
        "tenant": args.name,
        "streams_max": args.streams_max,
        "shards_max": args.shards_max,
        "bytes_per_s": args.bytes_per_s,
    }
    return await write_and_report(args, "set_quota", command_args)
