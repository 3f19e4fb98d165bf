"""Reassignment, make-before-break, and the safety checks on commands that reduce
availability (docs/architecture.md §13).

A reassignment of a shard from its replicas R to a target T is three kinds of entry:

1. ``reassign_shard``: replicas become T + (R - T); ``adding`` = T - R joins
   ``catching_up``; ``removing`` = R - T.  Nothing leaves, so no live replica is lost.
2. ``replica_ready`` from each joining broker: it leaves ``catching_up``.  Once no
   joining replica is catching up, a leader that is leaving hands leadership to a
   staying, caught-up, live replica (new ``leader_epoch``); if the leader stays, the
   leaving replicas are dropped in the same entry.
3. ``finish_reassignment`` (the leader's planner proposes it): the leaving replicas are
   dropped once none of them leads.

``cancel_reassignment`` returns to the set R at any point (in the order the union
holds it, which may differ from R's).  Every step is a Raft command, so
every broker sees the same sequence, and a new control-plane leader carries on from the
replicated state.  Handlers here follow `handlers.py`: validate, then mutate through the
state's helpers; a `CommandError` rolls everything back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from felix.metadata import commands as cmds
from felix.metadata.config import config_bool
from felix.metadata.errors import CommandError, rejected
from felix.metadata.model import (
    EVACUATE_DECOMMISSION,
    EVACUATE_DOWN_TIMEOUT,
    KIND_NODE,
    NodeState,
    Shard,
)
from felix.proto.client_messages import ErrorCode

if TYPE_CHECKING:
    from felix.metadata.state import MetadataState

NAMED_SHARDS_MAX: Final = 10  # shards an error names; the rest are counted


def named(keys: list[str]) -> str:
    """Up to `NAMED_SHARDS_MAX` shard keys, and how many more."""
    shown = ", ".join(keys[:NAMED_SHARDS_MAX])
    more = len(keys) - NAMED_SHARDS_MAX
    return f"{shown} and {more} more" if more > 0 else shown


def _shard(state: MetadataState, key: str) -> Shard:
    shard = state.shards.get(key)
    if shard is None:
        raise rejected(f"shard {key!r} does not exist")
    return shard


# --- safety checks -------------------------------------------------------------------


def live_replicas_needed(state: MetadataState, shard: Shard) -> int:
    """``min_live_replicas``, at most RF - 1 (so one broker may always be drained), and
    at least 1 (some replica must be able to lead)."""
    stream = state.streams.get(shard.stream)
    rf = stream.replication_factor if stream is not None else len(shard.target)
    return max(1, min(state._cfg_int("min_live_replicas"), rf - 1))


def check_availability(state: MetadataState, node_id: int, action: str, force: bool) -> None:
    """Refuse ``action`` (a drain or an admin "down" of ``node_id``) if it would leave a
    shard with fewer live caught-up replicas than `live_replicas_needed`."""
    if force:
        return
    short: list[str] = []
    for key in state.node_shards(node_id):
        shard = state.shards[key]
        live = [
            r
            for r in shard.replicas
            if r != node_id and r not in shard.catching_up and state._is_live(r)
        ]
        if len(live) < live_replicas_needed(state, shard):
            short.append(key)
    if short:
        raise rejected(
            f"{action} node {node_id} would leave {len(short)} shard(s) with fewer live "
            f"caught-up replicas than min_live_replicas (or none that can lead): "
            f"{named(short)}; move replicas first, or use --force"
        )


def check_strict_spread(state: MetadataState, keys: Iterable[str], force: bool) -> None:
    """With ``rack_aware_placement_strict``, refuse new shards with two replicas in one
    rack (``force`` places them anyway)."""
    if force or not config_bool(state.config_values(), "rack_aware_placement_strict"):
        return
    crowded = []
    for key in keys:
        racks = [state.nodes[r].rack for r in state.shards[key].replicas]
        if len(set(racks)) < len(racks):
            crowded.append(key)
    if crowded:
        live_racks = sorted({n.rack for n in state.nodes.values() if n.accepts_replicas})
        raise rejected(
            f"rack_aware_placement_strict: {len(crowded)} shard(s) would have two replicas "
            f"in one rack ({named(crowded)}); live racks: {', '.join(live_racks) or 'none'}"
        )


# --- node commands -------------------------------------------------------------------


def decommission_node(state: MetadataState, cmd: cmds.DecommissionNode) -> None:
    """Mark every replica of the node for evacuation; refuse when there is nowhere for
    some of them to go (fewer other brokers accepting replicas than the shard needs)."""
    node = state._node(cmd.node_id)
    if node.evacuate == EVACUATE_DECOMMISSION:
        return
    if not cmd.force:
        others = {n.id for n in state.nodes.values() if n.accepts_replicas and n.id != node.id}
        stuck = [
            key
            for key in state.node_shards(node.id)
            if len(others - set(state.shards[key].replicas)) < 1
        ]
        if stuck:
            raise rejected(
                f"decommission node {node.id}: no other live broker can take a replica of "
                f"{len(stuck)} shard(s): {named(stuck)}; add brokers first, or use --force"
            )
    state._node_changed(dataclasses.replace(node, evacuate=EVACUATE_DECOMMISSION))


def remove_node(state: MetadataState, cmd: cmds.RemoveNode) -> None:
    node = state._node(cmd.node_id)
    held = state.node_shards(node.id)
    if held:
        raise rejected(
            f"node {node.id} still holds {len(held)} replica(s): {named(held)}; "
            f"decommission it first"
        )
    if node.state == NodeState.UP and node.evacuate != EVACUATE_DECOMMISSION:
        raise rejected(f"node {node.id} is up; decommission it (or stop it) before removing it")
    state._delete(KIND_NODE, node.key)


def expire_node(state: MetadataState, cmd: cmds.ExpireNode) -> None:
    node = state._node(cmd.node_id)
    if cmd.epoch != node.epoch or node.state != NodeState.DOWN:
        raise CommandError(
            ErrorCode.CONFLICT,
            f"node {node.id} is {node.state} at epoch {node.epoch}: expiry of epoch "
            f"{cmd.epoch} is stale",
        )
    if not node.evacuate:
        state._node_changed(dataclasses.replace(node, evacuate=EVACUATE_DOWN_TIMEOUT))


def ack_drain(state: MetadataState, cmd: cmds.AckDrain) -> None:
    node = state._node(cmd.node_id)
    if not node.draining or node.drained_version != cmd.drained_version:
        raise CommandError(
            ErrorCode.CONFLICT,
            f"node {node.id}: drained_version is {node.drained_version}, not {cmd.drained_version}",
        )
    if not node.drain_acked:
        state._put(dataclasses.replace(node, drain_acked=True))


# --- reassignment --------------------------------------------------------------------


def reassign_shard(state: MetadataState, cmd: cmds.ReassignShard) -> None:
    shard = _shard(state, cmd.shard)
    if shard.reassigning:
        raise rejected(f"shard {shard.key} is already moving to {shard.target}; cancel that first")
    target = cmd.replicas
    if target == shard.replicas:
        raise rejected(f"shard {shard.key} already has replicas {shard.replicas}")
    if set(target) == set(shard.replicas):  # a new order only: a new preferred leader
        state._put(dataclasses.replace(shard, replicas=target))
        return
    adding = tuple(r for r in target if r not in shard.replicas)
    removing = tuple(r for r in shard.replicas if r not in target)
    limit = state._cfg_int("shards_per_node_max")
    for r in adding:
        node = state._node(r)
        if not node.accepts_replicas:
            raise rejected(f"node {r} does not accept replicas (not up, draining or evacuating)")
        if len(state.node_shards(r)) >= limit:
            raise rejected(f"node {r} already holds shards_per_node_max={limit} replicas")
    if not cmd.force:  # copies leaving a broker that is down cost it nothing
        _check_bounds(state, (*adding, *(r for r in removing if state._is_up(r))))
    replicas = target + removing  # the target in its order (its first is preferred leader)
    state._put(
        dataclasses.replace(
            shard,
            replicas=replicas,
            adding=adding,
            removing=removing,
            catching_up=shard.catching_up + adding,
        )
    )
    _advance(state, shard.key, force=cmd.force)


def _check_bounds(state: MetadataState, nodes: Iterable[int]) -> None:
    cluster_max = state._cfg_int("moves_cluster_max")
    if len(state.reassigning) >= cluster_max:
        raise rejected(f"moves_cluster_max={cluster_max} reassignments are already in flight")
    per_node = state._cfg_int("moves_per_node_max")
    for node in nodes:
        if state.moves_of(node) >= per_node:
            raise rejected(f"node {node} already has moves_per_node_max={per_node} moves")


def replica_ready(state: MetadataState, cmd: cmds.ReplicaReady) -> None:
    shard = _shard(state, cmd.shard)
    if cmd.node_id not in shard.replicas:
        raise rejected(f"node {cmd.node_id} is not a replica of {shard.key} {shard.replicas}")
    if cmd.node_id not in shard.catching_up:
        return  # already caught up: a repeated report changes nothing
    waiting = tuple(r for r in shard.catching_up if r != cmd.node_id)
    state._put(dataclasses.replace(shard, catching_up=waiting))
    state._reelect(shard.key)  # an offline shard may lead again
    _advance(state, shard.key, force=False)


def _advance(state: MetadataState, key: str, *, force: bool) -> None:
    """Once no joining replica is catching up: move leadership off a leaving leader, or,
    if the leader stays, drop the leaving replicas now."""
    shard = state.shards[key]
    if not shard.reassigning or (any(r in shard.catching_up for r in shard.adding) and not force):
        return
    if shard.leader is not None and shard.leader in shard.removing:
        _lead_from_target(state, key)
        return
    _drop_leaving(state, key, force=force)


def _lead_from_target(state: MetadataState, key: str) -> None:
    shard = state.shards[key]
    staying = [r for r in shard.target if r not in shard.catching_up]
    leader = next((r for r in staying if state._is_live(r)), None)
    if leader is None:
        leader = next((r for r in staying if state._is_up(r)), None)
    if leader is not None and leader != shard.leader:
        state._put(dataclasses.replace(shard, leader=leader, leader_epoch=shard.leader_epoch + 1))


def _drop_leaving(state: MetadataState, key: str, *, force: bool) -> None:
    shard = state.shards[key]
    target = shard.target
    if not force and not any(r not in shard.catching_up for r in target):
        raise rejected(f"shard {key}: removing {shard.removing} would leave no caught-up replica")
    state._put(
        dataclasses.replace(
            shard,
            replicas=target,
            adding=(),
            removing=(),
            catching_up=tuple(r for r in shard.catching_up if r in target),
        )
    )
    state._reelect(key)


def finish_reassignment(state: MetadataState, cmd: cmds.FinishReassignment) -> None:
    shard = _shard(state, cmd.shard)
    if not shard.reassigning:
        raise rejected(f"shard {shard.key} is not being reassigned")
    waiting = [r for r in shard.adding if r in shard.catching_up]
    if waiting and not cmd.force:
        raise rejected(
            f"shard {shard.key}: replicas {waiting} are still catching up; removing "
            f"{shard.removing} now would drop caught-up copies (use --force)"
        )
    if shard.leader in shard.removing:
        _lead_from_target(state, shard.key)
    _drop_leaving(state, shard.key, force=cmd.force)


def cancel_reassignment(state: MetadataState, cmd: cmds.CancelReassignment) -> None:
    shard = _shard(state, cmd.shard)
    if not shard.reassigning:
        raise rejected(f"shard {shard.key} is not being reassigned")
    original = shard.original
    state._put(
        dataclasses.replace(
            shard,
            replicas=original,
            adding=(),
            removing=(),
            catching_up=tuple(r for r in shard.catching_up if r in original),
        )
    )
    state._reelect(shard.key)


def check_rf_change(state: MetadataState, rf: int, force: bool) -> None:
    """A new replication factor needs that many brokers accepting replicas."""
    accepting = sum(1 for n in state.nodes.values() if n.accepts_replicas)
    if rf > accepting and not force:
        raise rejected(
            f"replication factor {rf} needs that many live brokers; {accepting} accept replicas"
        )
