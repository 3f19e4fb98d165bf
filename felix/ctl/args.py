"""The ``felix ctl`` argument parser: every subcommand, its options, and the command
function (``ctl_core``) `felix.ctl.runner.run` calls for it.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any, Final

from felix.ctl.config_keys import cmd_config_get, cmd_config_set, cmd_config_unset
from felix.ctl.errors import Outcome
from felix.ctl.reads import (
    cmd_node_list,
    cmd_snapshot,
    cmd_stream_list,
    cmd_tenant_list,
)
from felix.ctl.replicas import (
    cmd_node_decommission,
    cmd_node_remove,
    cmd_rebalance_plan,
    cmd_rebalance_run,
    cmd_rebalance_status,
    cmd_shard_cancel_move,
    cmd_shard_list_filtered,
    cmd_shard_move,
)
from felix.ctl.runner import run
from felix.ctl.tokens import cmd_token_create, cmd_token_list, cmd_token_revoke
from felix.ctl.watch import cmd_watch
from felix.ctl.writes import (
    cmd_node_drain,
    cmd_node_health,
    cmd_node_register,
    cmd_node_undrain,
    cmd_shard_move_leader,
    cmd_stream_create,
    cmd_stream_delete,
    cmd_stream_update,
    cmd_tenant_quota,
    cmd_tenant_remove,
    cmd_tenant_set,
)
from felix.metadata.config import CONFIG_SPECS

DEV_CLIENT_ENDPOINTS: Final = "127.0.0.1:8001,127.0.0.1:8002,127.0.0.1:8003"
TIMEOUT_S_DEFAULT: Final = 10.0


def common_options() -> argparse.ArgumentParser:
    """The options of every command that talks to the client API: endpoints,
    credentials, output, timeout."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--endpoints",
        default=DEV_CLIENT_ENDPOINTS,
        help=f"client API host:port list, tried in order (default {DEV_CLIENT_ENDPOINTS})",
    )
    common.add_argument(
        "--token",
        help="bearer token, or @FILE (default: FELIX_TOKEN, else ./felix-data/admin-token"
        " from felix dev)",
    )
    common.add_argument(
        "--ca",
        help="CA certificate: connect with wss:// (default: FELIX_CA, else"
        " ./felix-data/tls/ca.crt from felix dev; none: plaintext)",
    )
    common.add_argument("-o", "--output", choices=("table", "json"), default="table")
    common.add_argument(
        "--timeout",
        type=float,
        default=TIMEOUT_S_DEFAULT,
        help=f"give up after this many seconds (default {TIMEOUT_S_DEFAULT:g})",
    )
    return common


def register(subparsers: Any) -> None:
    ctl = subparsers.add_parser(
        "ctl",
        help="read and change cluster metadata (streams, nodes, config, tenants)",
        description="Admin commands over the client API (WebSocket). Writes go to whichever "
        "endpoint accepts them (the leader); every write takes --expected-version "
        "(compare-and-set on the metadata version) and prints the version it committed at.",
    )
    sub = ctl.add_subparsers(dest="ctl_command", metavar="COMMAND", required=True)

    common = common_options()
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
    _force(create, "place without rack spread when rack_aware_placement_strict is on")
    update = leaf(stream, "update", cmd_stream_update, write, "grow shards or change retention")
    update.add_argument("name")
    update.add_argument("--shards", type=int, help="new shard count (may only grow)")
    _stream_options(update)
    _force(update, "a replication factor above the live brokers; no strict rack spread")
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
    _force(health, "mark down even if shards are left below min_live_replicas")
    drain = leaf(node, "drain", cmd_node_drain, write,
                 "move shard leadership off a broker; no new replicas")  # fmt: skip
    drain.add_argument("id", type=int)
    drain.add_argument(
        "--wait", action="store_true",
        help="return once the drain is complete: it leads nothing and every live broker "
        "applied that (bounded by --timeout)",
    )  # fmt: skip
    _force(drain, "drain even if shards are left below min_live_replicas")
    leaf(node, "undrain", cmd_node_undrain, write, "end a drain or a decommission").add_argument(
        "id", type=int
    )
    decommission = leaf(node, "decommission", cmd_node_decommission, write,
                        "move every replica off a broker (bounded), then remove it")  # fmt: skip
    decommission.add_argument("id", type=int)
    _force(decommission, "even if some shard has nowhere to go")
    leaf(node, "remove", cmd_node_remove, write, "forget a broker that holds nothing").add_argument(
        "id", type=int
    )

    shard = sub.add_parser("shard", help="shards").add_subparsers(
        dest="ctl_shard", metavar="COMMAND", required=True
    )
    shard_list = leaf(
        shard, "list", cmd_shard_list_filtered, read, "list shards, replicas and leaders"
    )
    shard_list.add_argument("--stream", help="only this stream's shards")
    for flag, text in (
        ("--under-replicated", "fewer caught-up replicas on up brokers than the factor"),
        ("--offline", "no leader"),
        ("--reassigning", "a move in progress"),
    ):
        shard_list.add_argument(flag, action="store_true", help=f"only shards with {text}")
    for name, core, text in (
        ("move", cmd_shard_move, "move a shard to new replicas (make-before-break)"),
        ("cancel-move", cmd_shard_cancel_move, "return a moving shard to its old replicas"),
    ):
        parser = leaf(shard, name, core, write, text)
        parser.add_argument("stream")
        parser.add_argument("index", type=int)
        if name == "move":
            parser.add_argument("--replicas", required=True, help="node ids, e.g. 4,5,6")
            _force(parser, "past the move bounds")
    move = leaf(shard, "move-leader", cmd_shard_move_leader, write, "make a replica the leader")
    move.add_argument("shard", help="'stream/index'")
    move.add_argument("node_id", type=int)

    rebalance = sub.add_parser("rebalance", help="the replica planner").add_subparsers(
        dest="ctl_rebalance", metavar="COMMAND", required=True
    )
    leaf(rebalance, "plan", cmd_rebalance_plan, read, "the steps the planner would take, and why")
    leaf(rebalance, "run", cmd_rebalance_run, write, "the leader runs its planner now")
    leaf(rebalance, "status", cmd_rebalance_status, read, "moves in progress, per broker")

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

    tokens = sub.add_parser("token", help="API tokens (admin)").add_subparsers(
        dest="ctl_token", metavar="COMMAND", required=True
    )
    create = leaf(tokens, "create", cmd_token_create, write, "make a token; prints it once")
    create.add_argument("--role", required=True, help="admin, reader or broker")
    create.add_argument("--node", type=int, metavar="N", help="the broker's node id (broker role)")
    create.add_argument(
        "--ttl", metavar="DURATION", help="expire after e.g. 30d, 12h (default never)"
    )
    create.add_argument("--description", default="", help="what the token is for")
    leaf(tokens, "list", cmd_token_list, common, "list tokens (never their secrets)")
    revoke = leaf(tokens, "revoke", cmd_token_revoke, write, "revoke a token: its sessions close")
    revoke.add_argument("id", help="the token id (the 16 hex digits after fx1.)")


def _force(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--force", action="store_true", help=f"override the safety check: {what} (recorded)"
    )


def _stream_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--replication-factor", type=int, metavar="R", help="default: the cluster's default"
    )
    parser.add_argument("--retention-ms", type=int, metavar="MS")
