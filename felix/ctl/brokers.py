"""``felix brokers``: many example dataplane brokers in one process, for a dev cluster
(docs/architecture.md §8, §13).

Each one is an `ExampleBroker` (`felix.broker.example_broker`, what ``felix
broker-agent`` runs one per process): it registers (address ``127.0.0.1:<port>``, rack
``r<id mod --racks>``), heartbeats, follows its ownership events and prints them, and,
standing in for copying a shard's data, reports each catching-up replica ready
``--copy-s`` after it starts.  They hold no data.  With a client certificate
``broker-<id>.crt`` in ``--cert-dir`` (``felix dev --brokers`` issues them) a broker
authenticates as itself; otherwise with the token the ctl would use.  SIGTERM or SIGINT
stops them: each reports itself down, bounded by ``STOP_TIMEOUT_S``.
"""

from __future__ import annotations

import argparse
import signal
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import trio

from felix.broker import CredentialsRefused, WriteError, broker_ssl_context
from felix.broker.endpoints import endpoint_flag
from felix.broker.example_broker import BrokerSettings, ExampleBroker, unwrap
from felix.config import ConfigError, client_credentials
from felix.ctl.args import DEV_CLIENT_ENDPOINTS
from felix.security.contexts import TlsConfigError

IDS_MAX: Final = 1000  # brokers one process runs
ADDRESS_PORT_BASE: Final = 19_000  # broker N advertises 127.0.0.1:19000+N (nothing listens)
STOP_TIMEOUT_S: Final = 3.0


def parse_ids(text: str) -> list[int]:
    """``"1-4,7"`` -> [1, 2, 3, 4, 7]; ValueError naming the bad part."""
    ids: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        low, dash, high = part.partition("-")
        try:
            first, last = int(low), int(high) if dash else int(low)
        except ValueError:
            raise ValueError(f"{part!r} is not an id or a range like 1-4") from None
        if first < 1 or last < first:
            raise ValueError(f"{part!r}: ids are >= 1 and ranges go low-high")
        if last - first >= IDS_MAX:
            raise ValueError(f"{part!r}: at most {IDS_MAX} brokers per process")
        ids.update(range(first, last + 1))
    if len(ids) > IDS_MAX:
        raise ValueError(f"at most {IDS_MAX} brokers per process, not {len(ids)}")
    return sorted(ids)


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "brokers",
        help="run stand-in brokers (felix.broker clients) against a cluster, for dev",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("ids", help="broker node ids, e.g. 1-4 or 1,2,5")
    parser.add_argument(
        "--endpoints",
        default=DEV_CLIENT_ENDPOINTS,
        help=f"client API host:port list (default {DEV_CLIENT_ENDPOINTS})",
    )
    parser.add_argument(
        "--prefer-endpoints",
        default="",
        help="host:port list tried first (observers); --endpoints only when none answers",
    )
    parser.add_argument("--racks", type=int, default=3, help="racks r0..r{N-1} (default 3)")
    parser.add_argument(
        "--copy-s", type=float, default=1.0, help="seconds a new replica takes to catch up"
    )
    parser.add_argument("--cert-dir", type=Path, help="where broker-<id>.crt/.key are")
    parser.add_argument("--token", help="token or @file (default: as felix ctl finds it)")
    parser.add_argument("--ca", help="CA certificate (default: as felix ctl finds it)")
    parser.add_argument("-q", "--quiet", action="store_true", help="print no events")
    parser.set_defaults(handler=run_brokers)


def run_brokers(args: argparse.Namespace) -> int:
    try:
        ids = parse_ids(args.ids)
        if args.racks < 1 or not 0 <= args.copy_s <= 3600:
            raise ValueError("--racks must be >= 1 and --copy-s within 0..3600")
        endpoints = list(endpoint_flag("--endpoints", args.endpoints))
        if not endpoints:
            raise ValueError("--endpoints is empty")
        preferred = endpoint_flag("--prefer-endpoints", args.prefer_endpoints)
        creds = client_credentials(args.token, args.ca)
        contexts = {n: _context(n, args.cert_dir, creds.ca) for n in ids}
    except (ValueError, ConfigError, TlsConfigError, OSError) as exc:
        print(f"felix brokers: {exc}", file=sys.stderr)
        return 2
    tokens = {n: "" if args.cert_dir and _cert(args.cert_dir, n) else creds.token for n in ids}
    try:
        trio.run(_run, endpoints, ids, args, contexts, tokens, preferred)
    except BaseException as exc:  # sorted by what is inside Trio's exception groups
        cause = unwrap(exc)
        if not isinstance(cause, CredentialsRefused | WriteError):
            raise
        print(f"felix brokers: refused: {cause}", file=sys.stderr)
        return 1
    return 0


def _cert(cert_dir: Path, node_id: int) -> tuple[Path, Path] | None:
    cert, key = cert_dir / f"broker-{node_id}.crt", cert_dir / f"broker-{node_id}.key"
    return (cert, key) if cert.exists() and key.exists() else None


def _context(node_id: int, cert_dir: Path | None, ca: Path | None) -> ssl.SSLContext | None:
    pair = _cert(cert_dir, node_id) if cert_dir is not None else None
    if ca is None:
        if pair is not None:
            raise ValueError(f"broker {node_id}: a client certificate needs --ca")
        return None
    return broker_ssl_context(ca, *pair) if pair else broker_ssl_context(ca)


async def _run(
    endpoints: list[str],
    ids: Sequence[int],
    args: argparse.Namespace,
    contexts: dict[int, ssl.SSLContext | None],
    tokens: dict[int, str],
    preferred: tuple[str, ...],
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            stop = trio.Event()
            for n in ids:
                nursery.start_soon(
                    _broker, endpoints, preferred, n, args, contexts[n], tokens[n], stop
                )
            async for _ in signals:
                print("felix brokers: stopping (each reports itself down)", flush=True)
                stop.set()
                nursery.cancel_scope.deadline = trio.current_time() + STOP_TIMEOUT_S
                break


async def _broker(
    endpoints: list[str],
    preferred: tuple[str, ...],
    node_id: int,
    args: argparse.Namespace,
    context: ssl.SSLContext | None,
    token: str,
    stop: trio.Event,
) -> None:
    def say(text: str) -> None:
        if not args.quiet:
            print(text, flush=True)

    settings = BrokerSettings(
        endpoints=tuple(endpoints),
        node_id=node_id,
        address=f"127.0.0.1:{ADDRESS_PORT_BASE + node_id}",
        rack=f"r{node_id % args.racks}",
        token=token,
        ssl_context=context,
        copy_s=args.copy_s,
        preferred_endpoints=preferred,
    )
    await ExampleBroker(settings, say).run(stop)
