"""Fuzz the decoders for a while: random bytes and mutated valid frames.

    python -m bench.fuzz_codec [--seconds 60] [--seed N]

Every input goes through the frame decoder and all three message registries; anything
other than a clean decode or a `ProtocolError` is a bug: the input is written to
``bench/results/fuzz-crash-<n>.bin`` and the run exits 1.  Also reports the slowest
decode per input byte seen, as a guard against super-linear decode paths.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import time
from pathlib import Path

from bench._report import RESULTS_DIR, write_json
from felix.proto.client_messages import (
    CLIENT_TO_SERVER,
    SERVER_TO_CLIENT,
    Change,
    ClientHello,
    Delta,
    Deltas,
    Error,
    ErrorCode,
    HealthStatus,
    ReportHealth,
    SnapshotChunk,
    WriteRequest,
)
from felix.proto.errors import ProtocolError
from felix.proto.frames import FrameDecoder, encode_frame
from felix.proto.raft_messages import (
    PEER,
    AppendEntries,
    AppendResponse,
    ConfState,
    Entry,
    EntryKind,
    InstallSnapshot,
    PeerHello,
    RequestVote,
    SnapshotMeta,
)

REGISTRIES = (PEER, CLIENT_TO_SERVER, SERVER_TO_CLIENT)


def seed_corpus() -> list[bytes]:
    """Valid frames of many types, plus known-hostile CBOR."""
    conf = ConfState((1, 2, 3), (4,))
    peer = [
        PeerHello("felix", 1, 1, 1),
        RequestVote(5, 2, 10, 4, True, False),
        AppendEntries(
            5, 1, 9, 4, tuple(Entry(10 + i, 5, EntryKind.NORMAL, b"x") for i in range(5)), 9, 3
        ),
        AppendResponse(5, False, 0, 7, 3, 2),
        InstallSnapshot(5, 1, SnapshotMeta(100, 4, conf, 4096, 123), 0, b"chunk", False),
    ]
    client = [
        ClientHello(7, 100, "token"),
        ReportHealth(7, HealthStatus.UP, 100),
        WriteRequest(1, "stream.create", {"name": "orders", "shards": 8}, None),
    ]
    server = [
        Deltas((Delta(1, 2, b"d", (Change("node", "7", {"state": "up", "rack": "a"}),)),)),
        SnapshotChunk(None, 2, b"d", 0, (Change("config", "retention_ms", {"v": 1}),), True),
        Error(ErrorCode.CONFLICT, "version mismatch", 1),
    ]
    corpus = [PEER.encode(m) for m in peer]
    corpus += [CLIENT_TO_SERVER.encode(m) for m in client]
    corpus += [SERVER_TO_CLIENT.encode(m) for m in server]
    corpus += [
        b"\xd8\x1c\x81\x01",  # shared reference
        b"\xd8\x23\x62a+",  # regex
        b"\x81" * 1000 + b"\x00",  # deep nesting
        b"\x5b\x00\x00\x00\x01\x00\x00\x00\x00",  # 4 GiB byte string
        b"\xbf\x61a\x01\xff",  # indefinite map
    ]
    return corpus


def mutate(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        pos = rng.randrange(len(buf) + 1)
        action = rng.randrange(5)
        if action == 0 and buf:
            buf[pos % len(buf)] ^= 1 << rng.randrange(8)
        elif action == 1:
            del buf[pos : pos + rng.randint(1, 8)]
        elif action == 2:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif action == 3 and buf:
            buf[pos % len(buf)] = rng.choice([0x1B, 0x3B, 0x5B, 0x7B, 0x9B, 0xBB, 0xD8, 0xFF, 0xF9])
        else:
            buf[pos:pos] = buf[rng.randrange(len(buf) + 1) :][: rng.randint(1, 32)]
    return bytes(buf)


def one_input(data: bytes, rng: random.Random) -> None:
    for registry in REGISTRIES:
        with contextlib.suppress(ProtocolError):
            registry.decode(data)
    decoder = FrameDecoder(frame_bytes_max=rng.choice([16, 1024, 1 << 20]))
    stream = encode_frame(data, 1 << 20) if rng.random() < 0.5 else data
    try:
        for i in range(0, len(stream), 7):
            decoder.feed(stream[i : i + 7])
        decoder.feed(b"")
        while isinstance(decoder.next_frame(), bytes):
            pass
    except ProtocolError:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    corpus = seed_corpus()
    executions = 0
    worst_us_per_byte = 0.0
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        if rng.random() < 0.3:
            data = rng.randbytes(rng.randint(0, 256))
        else:
            data = mutate(rng, rng.choice(corpus))
        start = time.perf_counter()
        try:
            one_input(data, rng)
        except Exception as exc:
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            path = Path(RESULTS_DIR / f"fuzz-crash-{executions}.bin")
            path.write_bytes(data)
            print(f"FAIL seed={seed} input #{executions}: {type(exc).__name__}: {exc} -> {path}")
            return 1
        elapsed = time.perf_counter() - start
        if len(data) >= 64:
            worst_us_per_byte = max(worst_us_per_byte, elapsed * 1e6 / len(data))
        executions += 1
    print(f"seed={seed}: {executions:,} inputs in {args.seconds:.0f} s, only ProtocolError")
    print(f"slowest decode: {worst_us_per_byte:.2f} us per input byte (inputs >= 64 bytes)")
    write_json(
        "fuzz_codec",
        {
            "seed": seed,
            "seconds": args.seconds,
            "executions": executions,
            "worst_us_per_byte": worst_us_per_byte,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
