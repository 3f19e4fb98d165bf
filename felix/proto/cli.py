"""``felix proto decode``: print the messages in a file of length-prefixed frames.

Handy for a captured peer stream or a frame a bug report attached; bad input gets a
one-line error naming the frame and the problem.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from felix.proto.cbor import Registry, to_plain
from felix.proto.client_messages import CLIENT_TO_SERVER, SERVER_TO_CLIENT
from felix.proto.errors import ProtocolError
from felix.proto.frames import FrameDecoder
from felix.proto.raft_messages import PEER
from felix.proto.versions import BASELINE

CHANNELS: dict[str, Registry] = {
    "peer": PEER,
    "client": CLIENT_TO_SERVER,
    "server": SERVER_TO_CLIENT,
}


def register(subparsers: Any) -> None:
    proto = subparsers.add_parser("proto", help="inspect wire-protocol frames")
    proto_sub = proto.add_subparsers(dest="proto_command", metavar="COMMAND", required=True)
    decode = proto_sub.add_parser("decode", help="decode a file of u32-length-prefixed CBOR frames")
    decode.add_argument("file", help="path to the frames file ('-' for stdin)")
    decode.add_argument(
        "--channel", choices=sorted(CHANNELS), default="peer", help="which message set"
    )
    decode.add_argument(
        "--protocol-version",
        type=int,
        default=BASELINE,
        metavar="N",
        help="the version the connection negotiated (its HelloAck; default: %(default)s)",
    )
    decode.add_argument("-o", "--output", choices=("text", "json"), default="text")
    decode.set_defaults(handler=run_decode)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def run_decode(args: argparse.Namespace) -> int:
    registry = CHANNELS[args.channel]
    version = getattr(args, "protocol_version", BASELINE)
    if version < BASELINE:
        print(f"felix: protocol version {version} does not exist", file=sys.stderr)
        return 2
    try:
        if args.file == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(args.file, "rb") as fp:
                data = fp.read()
    except OSError as exc:
        print(f"felix: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    decoder = FrameDecoder(frame_bytes_max=2**32 - 1)
    decoder.feed(data)
    decoder.feed(b"")
    index = 0
    try:
        while True:
            payload = decoder.next_frame()
            if not isinstance(payload, bytes):  # CLOSED: every frame was read
                break
            msg = registry.decode(payload, version)
            plain = {"type": registry.type_name(type(msg)), **to_plain(msg)}
            if args.output == "json":
                print(json.dumps({"frame": index, **_jsonable(plain)}))
            else:
                print(f"#{index} {plain['type']} {_jsonable(plain)}")
            index += 1
    except ProtocolError as exc:
        print(f"felix: frame #{index}: {exc}", file=sys.stderr)
        return 1
    return 0
