"""``felix certs init|issue|show``: a cluster CA and its certificates, for development
and small installs (`felix.security.certs` says what the certificates contain).

Exit codes: 0 done, 1 failed (one ``felix: ...`` line on stderr), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from felix.security.identity import IdentityError, Kind, check_name


def register(subparsers: Any) -> None:
    """Add the ``certs`` command to the ``felix`` parser."""
    certs = subparsers.add_parser("certs", help="make a cluster CA and issue certificates")
    certs.set_defaults(handler=_usage(certs))
    commands = certs.add_subparsers(dest="certs_command", metavar="SUBCOMMAND")

    init = commands.add_parser("init", help="create ca.crt and ca.key in a directory")
    init.add_argument("--dir", required=True, help="where the CA files go (must exist)")
    init.add_argument("--cluster-id", required=True, help="the cluster the CA signs for")
    init.add_argument("--days", type=int, default=None, help="validity (default 3650)")
    init.set_defaults(handler=run_init)

    issue = commands.add_parser("issue", help="issue a node, broker or admin certificate")
    issue.add_argument("--dir", required=True, help="the CA's directory; the files go there")
    who = issue.add_mutually_exclusive_group(required=True)
    who.add_argument("--node", type=int, metavar="ID", help="a control-plane node")
    who.add_argument("--broker", type=int, metavar="ID", help="a broker client certificate")
    who.add_argument("--admin", metavar="NAME", help="an admin client certificate")
    issue.add_argument("--dns", action="append", default=[], metavar="NAME")
    issue.add_argument("--ip", action="append", default=[], metavar="IP")
    issue.add_argument("--days", type=int, default=None, help="validity (default 365)")
    issue.add_argument(
        "--no-loopback",
        action="store_true",
        help="node certificates: leave out localhost, 127.0.0.1 and ::1",
    )
    issue.add_argument("--force", action="store_true", help="replace existing files (renewal)")
    issue.set_defaults(handler=run_issue)

    show = commands.add_parser("show", help="print a certificate's identity, names, validity")
    show.add_argument("file")
    show.set_defaults(handler=run_show)


def _usage(parser: argparse.ArgumentParser) -> Any:
    def handler(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    return handler


def _fail(message: str, code: int = 1) -> int:
    print(f"felix: {message}", file=sys.stderr)
    return code


def run_init(args: argparse.Namespace) -> int:
    from felix.security import certs  # cryptography is imported only when a command runs

    try:
        check_name(args.cluster_id, "--cluster-id")
    except IdentityError as exc:
        return _fail(str(exc), 2)
    if args.days is not None and args.days < 1:
        return _fail("--days must be >= 1", 2)
    try:
        files = certs.init_ca(args.dir, args.cluster_id, args.days or certs.CA_DAYS)
    except (certs.CertError, OSError) as exc:
        return _fail(str(exc))
    print(f"wrote {files.cert} and {files.key} (cluster {args.cluster_id})")
    return 0


def run_issue(args: argparse.Namespace) -> int:
    from felix.security import certs

    try:
        kind, ident = _who(args)
    except IdentityError as exc:
        return _fail(str(exc), 2)
    if args.days is not None and args.days < 1:
        return _fail("--days must be >= 1", 2)
    try:
        files = certs.issue(
            args.dir,
            kind,
            ident,
            dns=args.dns,
            ips=args.ip,
            days=args.days or certs.LEAF_DAYS,
            loopback=not args.no_loopback,
            overwrite=args.force,
        )
    except (certs.CertError, OSError) as exc:
        return _fail(str(exc))
    print(f"wrote {files.cert} and {files.key}")
    return 0


def _who(args: argparse.Namespace) -> tuple[Kind, int | str]:
    """The kind and id/name asked for; IdentityError for an id < 1 or a bad name."""
    if args.admin is not None:
        return "admin", check_name(args.admin, "--admin")
    kind: Kind = "node" if args.node is not None else "broker"
    ident = int(args.node if args.node is not None else args.broker)
    if ident < 1:
        raise IdentityError(f"--{kind} must be >= 1, got {ident}")
    return kind, ident


def run_show(args: argparse.Namespace) -> int:
    from felix.security import certs

    try:
        info = certs.describe(certs.load_cert(args.file))
    except certs.CertError as exc:
        return _fail(str(exc))
    width = max(map(len, info)) + 1
    for key, value in info.items():
        print(f"{key + ':':<{width}} {value}")
    return 0
