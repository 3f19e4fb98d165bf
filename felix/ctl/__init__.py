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

The modules: `args` (the parser, `register`), `runner` (`run`), `errors` (`CtlError`,
exit codes), `session` (endpoints, connecting, the retry loop), `reads`, `writes`,
`config_keys` and `watch` (the commands), `render` (tables and JSON).
"""

from felix.ctl.args import register
from felix.ctl.config_keys import (
    cmd_config_get,
    cmd_config_set,
    cmd_config_unset,
    parse_config_value,
)
from felix.ctl.errors import CtlError, Outcome
from felix.ctl.reads import (
    Snapshot,
    cmd_node_list,
    cmd_shard_list,
    cmd_snapshot,
    cmd_stream_list,
    cmd_tenant_list,
    fetch_snapshot,
)
from felix.ctl.render import table
from felix.ctl.runner import run
from felix.ctl.session import parse_endpoints
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
    write,
)

__all__ = [
    "CtlError",
    "Outcome",
    "Snapshot",
    "cmd_config_get",
    "cmd_config_set",
    "cmd_config_unset",
    "cmd_node_drain",
    "cmd_node_health",
    "cmd_node_list",
    "cmd_node_register",
    "cmd_node_undrain",
    "cmd_shard_list",
    "cmd_shard_move_leader",
    "cmd_snapshot",
    "cmd_stream_create",
    "cmd_stream_delete",
    "cmd_stream_list",
    "cmd_stream_update",
    "cmd_tenant_list",
    "cmd_tenant_quota",
    "cmd_tenant_remove",
    "cmd_tenant_set",
    "cmd_watch",
    "fetch_snapshot",
    "parse_config_value",
    "parse_endpoints",
    "register",
    "run",
    "table",
    "write",
]
