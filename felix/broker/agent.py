"""``felix broker-agent`` (also ``python -m felix.broker.agent``): one example dataplane
broker per process, as a broker pod runs it (docs/architecture.md §8, §13).

It is an `ExampleBroker` (register, heartbeat, log every ownership event, report
catching-up replicas ready) plus an HTTP ops endpoint (`felix.broker.agent_ops`) for the
kubelet and Prometheus.  Its id is ``--node-id`` or, with ``--pod-identity``, the
StatefulSet ordinal + 1 (`felix.broker.agent_identity`).  SIGTERM or SIGINT: ``/readyz``
fails at once, the broker reports itself down (bounded by ``STOP_TIMEOUT_S``) and the
process exits 0; a second signal exits at once.  Bad flags exit 2, refused credentials 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Final

import trio
from prometheus_client import CollectorRegistry

from felix.broker.agent_identity import IdentityError, credentials, node_id_from_pod
from felix.broker.agent_ops import AgentMetrics, AgentOps
from felix.broker.client import WriteError, parse_endpoint
from felix.broker.endpoints import endpoint_flag
from felix.broker.example_broker import BrokerSettings, ExampleBroker, unwrap
from felix.broker.session import CredentialsRefused

log = logging.getLogger("felix.broker.agent")

LISTEN_OPS_DEFAULT: Final = "127.0.0.1:9101"
DATA_PORT: Final = 9092  # the broker's QUIC ingress (declared by the manifests; unused here)
STOP_TIMEOUT_S: Final = 5.0  # report down and exit; well inside a pod's grace period
COPY_S_MAX: Final = 3600.0


DESCRIPTION: Final = (
    "One example dataplane broker (it holds no data): registers, heartbeats, logs every"
    " ownership event, reports new replicas caught up after --copy-s, and serves /livez,"
    " /readyz (200 once its view is complete and digest-checked) and /metrics on"
    " --listen-ops. SIGTERM: /readyz fails, it reports itself down and exits 0."
    " Exit 2: bad flags; 1: credentials or registration refused."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoints", required=True, help="control-plane client API host:port list"
    )
    parser.add_argument(
        "--prefer-endpoints",
        default="",
        help="host:port list tried first (observers); --endpoints only when none answers",
    )
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--node-id", type=int, help="this broker's node id (>= 1)")
    who.add_argument(
        "--pod-identity",
        action="store_true",
        help="node id = StatefulSet ordinal + 1, from POD_NAME, else the hostname",
    )
    parser.add_argument("--ca", help="cluster CA certificate: connect with wss:// (else ws://)")
    parser.add_argument("--cert", help="client certificate; may contain {node_id}")
    parser.add_argument("--key", help="its private key; may contain {node_id}")
    parser.add_argument("--token", help="broker token, or @FILE (may contain {node_id})")
    parser.add_argument(
        "--address", help=f"advertised data address host:port (default <hostname>:{DATA_PORT})"
    )
    parser.add_argument(
        "--rack", default=None, help="rack for placement (default: env FELIX_RACK, else none)"
    )
    parser.add_argument(
        "--listen-ops",
        default=LISTEN_OPS_DEFAULT,
        help=f"host:port of /livez /readyz /metrics (default {LISTEN_OPS_DEFAULT}; port 0: any)",
    )
    parser.add_argument(
        "--copy-s", type=float, default=1.0, help="seconds a new replica takes to catch up"
    )


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "broker-agent",
        help="run one example broker (a felix.broker client) with /livez /readyz /metrics",
        description=DESCRIPTION,
    )
    add_arguments(parser)
    parser.set_defaults(handler=run_agent)


def settings_from(
    args: argparse.Namespace, env: Mapping[str, str]
) -> tuple[BrokerSettings, tuple[str, int]]:
    """The flags, checked; raises `IdentityError` (a ValueError) naming the bad one."""
    node_id = node_id_from_pod(env) if args.pod_identity else args.node_id
    if node_id is None or node_id < 1:
        raise IdentityError(f"--node-id must be >= 1, not {node_id}")
    endpoints = endpoint_list("--endpoints", args.endpoints)
    if not endpoints:
        raise IdentityError("--endpoints is empty")
    preferred = endpoint_list("--prefer-endpoints", args.prefer_endpoints)
    address = args.address or f"{socket.gethostname()}:{DATA_PORT}"
    _endpoint("--address", address)
    ops = _endpoint("--listen-ops", args.listen_ops)
    if not 0 <= args.copy_s <= COPY_S_MAX:
        raise IdentityError(f"--copy-s must be within 0..{COPY_S_MAX:g}")
    rack = args.rack if args.rack is not None else env.get("FELIX_RACK", "")
    creds = credentials(node_id, ca=args.ca, cert=args.cert, key=args.key, token=args.token)
    settings = BrokerSettings(
        endpoints=endpoints,
        node_id=node_id,
        address=address,
        rack=rack,
        token=creds.token,
        ssl_context=creds.ssl_context,
        copy_s=args.copy_s,
        preferred_endpoints=preferred,
    )
    return settings, ops


def endpoint_list(flag: str, text: str) -> tuple[str, ...]:
    """`endpoint_flag`, raising `IdentityError` (what `run_agent` reports, exit 2)."""
    try:
        return endpoint_flag(flag, text)
    except ValueError as exc:
        raise IdentityError(str(exc)) from None


def _endpoint(flag: str, text: str) -> tuple[str, int]:
    try:
        host, port = parse_endpoint(text)
    except ValueError as exc:
        raise IdentityError(f"{flag}: {exc}") from None
    if not 0 <= port <= 65535:
        raise IdentityError(f"{flag}: port {port} is out of range")
    return host, port


def run_agent(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings, ops = settings_from(args, os.environ)
    except IdentityError as exc:
        print(f"felix broker-agent: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(serve, settings, ops)
    except BaseException as exc:  # sorted by what is inside Trio's exception groups
        cause = unwrap(exc)
        if isinstance(cause, SystemExit):  # a second signal
            return cause.code if isinstance(cause.code, int) else 1
        if isinstance(cause, CredentialsRefused):
            log.error("broker %d: credentials refused: %s", settings.node_id, cause)
        elif isinstance(cause, WriteError):
            log.error("broker %d: registration refused: %s", settings.node_id, cause)
        elif isinstance(cause, OSError):  # the ops port is taken, say
            log.error("broker %d: cannot start: %s", settings.node_id, cause)
        else:
            raise
        return 1
    return 0


async def serve(
    settings: BrokerSettings,
    ops_at: tuple[str, int],
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the broker and its ops endpoint (its port is reported to ``task_status``)
    until SIGTERM/SIGINT.  A broker the control plane removed stays up but unready: a
    restarted process would register again and undo the operator's decision."""
    registry = CollectorRegistry(auto_describe=True)
    broker = ExampleBroker(settings, log.info)
    broker.metrics = AgentMetrics(registry, broker.readiness)
    looping = True

    def live() -> tuple[bool, str]:
        return looping, "event loop answers" if looping else "stopped"

    ops = AgentOps(live, broker.readiness, registry)
    stop = trio.Event()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(ops.run, *ops_at)
            log.info(
                "broker %d: ops on http://%s:%d (/livez /readyz /metrics); control plane %s%s",
                settings.node_id,
                ops_at[0],
                port,
                ",".join(settings.endpoints),
                f", preferring {','.join(settings.preferred_endpoints)}"
                if settings.preferred_endpoints
                else "",
            )

            async def on_signals() -> None:
                seen = 0
                async for signum in signals:
                    seen += 1
                    if seen > 1:
                        log.warning("broker %d: second signal: exiting now", settings.node_id)
                        raise SystemExit(1)
                    log.info(
                        "broker %d: received %s: /readyz fails from now on",
                        settings.node_id,
                        signal.Signals(signum).name,
                    )
                    broker.stopping = True
                    stop.set()
                    nursery.cancel_scope.deadline = trio.current_time() + STOP_TIMEOUT_S

            nursery.start_soon(on_signals)
            task_status.started(port)
            await broker.run(stop)
            if broker.removed and not stop.is_set():
                log.info("broker %d: removed: staying up, unready, until stopped", settings.node_id)
                await stop.wait()
            looping = False
            nursery.cancel_scope.cancel()
    log.info("broker %d: stopped", settings.node_id)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m felix.broker.agent", description=DESCRIPTION)
    add_arguments(parser)
    return run_agent(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
