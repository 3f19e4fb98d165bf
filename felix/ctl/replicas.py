"""Replica management from ``felix ctl`` (docs/architecture.md §13): the planner's view
(``rebalance plan`` / ``run`` / ``status``), shard moves, shard filters, decommission.

``rebalance plan`` runs the same pure planner the control-plane leader runs, on a
linearizable snapshot, so it shows exactly the steps the leader would take (and why).
``rebalance run`` proposes those steps now, each an ordinary command validated at
apply: a step made stale by a concurrent change is refused, never half-applied.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from felix.broker.connection import ClientConnection, ConnectionClosed
from felix.ctl.errors import CtlError, core, server_error
from felix.ctl.reads import Snapshot, fetch_snapshot
from felix.ctl.render import records_table, table, to_json
from felix.ctl.session import REQUEST_ID, Retry, Tries, on_some_endpoint
from felix.ctl.writes import WRITE_RETRY_CODES, write_and_report
from felix.metadata.errors import SnapshotError
from felix.metadata.model import KIND_NODE, KIND_SHARD
from felix.metadata.planner import Plan, cluster_health, input_of, limits_of, plan
from felix.metadata.state import MetadataState
from felix.proto.client_messages import Change, Error, PlannerRan, RunPlanner
from felix.proto.errors import ProtocolError


def _state(snap: Snapshot) -> MetadataState:
    changes = (Change(kind, key, dict(value)) for (kind, key), value in snap.records.items())
    try:
        return MetadataState.of_records(snap.version, changes)
    except SnapshotError as exc:
        raise CtlError(f"the snapshot from {snap.endpoint} is not a valid state: {exc}") from None


def _steps(state: MetadataState, steps: Plan) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {"step": "finish", "shard": key, "reason": "every new replica is ready"}
        for key in steps.finishes
    ]
    for move in steps.moves:
        rows.append({"step": "move", "shard": move.shard, "add": move.add,
                     "remove": move.remove, "reason": move.reason})  # fmt: skip
    for lead in steps.leader_moves:
        rows.append({"step": "reorder" if lead.order else "leader", "shard": lead.shard,
                     "add": lead.node, "remove": state.shards[lead.shard].leader,
                     "reason": lead.reason})  # fmt: skip
    return rows


def _render(args: argparse.Namespace, version: int, rows: list[dict[str, Any]]) -> str:
    if args.output == "json":
        return to_json({"version": version, "steps": rows})
    if not rows:
        return f"version {version}: nothing to do (balanced within the configured skews)"
    body = table(
        ["STEP", "SHARD", "ADD", "REMOVE", "REASON"],
        [[r["step"], r["shard"], r.get("add"), r.get("remove"), r["reason"]] for r in rows],
    )
    return f"version {version}: {len(rows)} step(s)\n{body}"


@core
async def cmd_rebalance_plan(args: argparse.Namespace) -> str:
    state = _state(await fetch_snapshot(args))
    return _render(args, state.version, _steps(state, plan(input_of(state), limits_of(state))))


@core
async def cmd_rebalance_run(args: argparse.Namespace) -> str:
    """Ask the control-plane leader's rebalancer for a pass now (any node forwards it)."""
    ran = await run_planner(args)
    if args.output == "json":
        return to_json({"version": ran.version, "summary": ran.summary})
    return f"leader's planner at version {ran.version}: {ran.summary}"


async def run_planner(args: argparse.Namespace) -> PlannerRan:
    """`RunPlanner` on some endpoint.  Retried elsewhere only when nothing ran (no
    leader yet); a connection lost mid-pass is reported, not repeated."""

    async def attempt(conn: ClientConnection, name: str, tries: Tries) -> PlannerRan:
        tries.in_doubt = name
        try:
            await conn.send(RunPlanner(REQUEST_ID))
            while True:
                reply = await conn.receive()
                if isinstance(reply, PlannerRan) and reply.request_id == REQUEST_ID:
                    return reply
                if isinstance(reply, Error) and reply.request_id in (REQUEST_ID, None):
                    break
        except (ConnectionClosed, ProtocolError) as exc:
            raise CtlError(
                f"{name}: connection lost during the planner pass (its steps may have been"
                f" proposed; see felix ctl rebalance status): {exc}"
            ) from None
        tries.in_doubt = None
        if reply.code in WRITE_RETRY_CODES:
            raise Retry(f"{reply.code.value}: {reply.detail}")
        raise server_error(reply)

    return await on_some_endpoint(args, attempt)


@core
async def cmd_rebalance_status(args: argparse.Namespace) -> str:
    state = _state(await fetch_snapshot(args))
    moving = [state.shards[k] for k in sorted(state.reassigning)]
    per_node = {n: state.moves_of(n) for n in sorted(state.nodes) if state.moves_of(n)}
    under, offline, replica_skew, leader_skew = cluster_health(state)
    health = {
        "under_replicated": under,
        "offline": offline,
        "replica_skew": replica_skew,
        "leader_skew": leader_skew,
    }
    if args.output == "json":
        return to_json(
            {
                "version": state.version,
                **health,
                "reassigning": [s.to_record() for s in moving],
                "moves_per_node": per_node,
            }
        )
    summary = (
        f"version {state.version}: {under} shard(s) under-replicated, {offline} offline;"
        f" replica skew {replica_skew}, leader skew {leader_skew}"
    )
    if not moving:
        return f"{summary}\nno reassignment in progress"
    shards = table(
        ["SHARD", "REPLICAS", "ADDING", "REMOVING", "CATCHING_UP", "LEADER"],
        [[s.key, s.replicas, s.adding, s.removing, s.catching_up, s.leader] for s in moving],
    )
    nodes = table(["NODE", "MOVES"], [[n, c] for n, c in per_node.items()])
    return f"{summary}\n{len(moving)} shard(s) moving\n{shards}\n\n{nodes}"


def _node_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CtlError(f"--replicas {text!r}: give node ids like 4,5,6", exit_code=2) from None
    if not ids:
        raise CtlError("--replicas: give at least one node id", exit_code=2)
    return ids


@core
async def cmd_shard_move(args: argparse.Namespace) -> str:
    command_args = {
        "shard": f"{args.stream}/{args.index}",
        "replicas": _node_ids(args.replicas),
        "reason": "operator: felix ctl shard move",
        "force": args.force,
    }
    return await write_and_report(args, "reassign_shard", command_args)


@core
async def cmd_shard_cancel_move(args: argparse.Namespace) -> str:
    shard = f"{args.stream}/{args.index}"
    return await write_and_report(args, "cancel_reassignment", {"shard": shard})


@core
async def cmd_shard_list_filtered(args: argparse.Namespace) -> str:
    """``shard list`` with ``--under-replicated``, ``--offline`` or ``--reassigning``."""
    snap = await fetch_snapshot(args)
    nodes: Mapping[str, Mapping[str, Any]] = dict(snap.of_kind(KIND_NODE))
    rf = {key: value["replication_factor"] for key, value in snap.of_kind("stream")}
    picked = []
    for key, value in snap.of_kind(KIND_SHARD):
        if args.stream is not None and value["stream"] != args.stream:
            continue
        up = [
            r
            for r in value["replicas"]
            if r not in value["catching_up"] and nodes.get(str(r), {}).get("state") == "up"
        ]
        checks = (
            (args.under_replicated, len(up) < rf.get(value["stream"], 0)),
            (args.offline, value["leader"] is None),
            (args.reassigning, bool(value["adding"] or value["removing"])),
        )
        if all(ok for wanted, ok in checks if wanted):
            picked.append((key, value))
    if args.output == "json":
        return to_json([dict(value) for _, value in picked])
    return records_table(KIND_SHARD, picked, "no shards")


@core
async def cmd_node_decommission(args: argparse.Namespace) -> str:
    return await write_and_report(
        args, "decommission_node", {"node_id": args.id, "force": args.force}
    )


@core
async def cmd_node_remove(args: argparse.Namespace) -> str:
    return await write_and_report(args, "remove_node", {"node_id": args.id})
