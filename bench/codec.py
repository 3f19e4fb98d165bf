"""Codec throughput: encode+decode of the messages on the hot paths.

    python -m bench.codec [--repeats 7] [--seconds 0.3]

AppendEntries with 1, 64 and 1,024 small (32-byte) entries is the Raft loop's traffic; a
1,000-change Deltas message is a large watch update.  Each case is timed ``--repeats``
times for about ``--seconds`` each; the table shows the median.  "round trip" is
framing + schema encode + CBOR encode, then frame decode + safe CBOR decode + schema check.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from bench._report import median, print_table, write_json
from felix.proto.cbor import Registry
from felix.proto.client_messages import SERVER_TO_CLIENT, Change, Delta, Deltas
from felix.proto.frames import FrameDecoder, encode_frame
from felix.proto.raft_messages import PEER, AppendEntries, Entry, EntryKind


def append_entries(n: int) -> AppendEntries:
    entries = tuple(Entry(100 + i, 7, EntryKind.NORMAL, b"m" * 32) for i in range(n))
    return AppendEntries(7, 1, 99, 7, entries, 98, 12345)


def big_deltas(n: int) -> Deltas:
    deltas = tuple(
        Delta(
            1000 + i,
            1001 + i,
            bytes(16),
            (Change("shard", f"orders/{i}", {"leader": 3, "replicas": (1, 2, 3), "epoch": i}),),
        )
        for i in range(n)
    )
    return Deltas(deltas)


def time_per_call(fn: Callable[[], object], seconds: float) -> float:
    """Seconds per call: calibrate a batch size, then time one batch."""
    batch = 1
    while True:
        start = time.perf_counter()
        for _ in range(batch):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds / 4 or batch >= 1 << 20:
            break
        batch *= 2
    start = time.perf_counter()
    count = max(1, int(batch * seconds / max(elapsed, 1e-9)))
    for _ in range(count):
        fn()
    return (time.perf_counter() - start) / count


def measure(
    name: str, registry: Registry, msg: object, repeats: int, seconds: float
) -> dict[str, object]:
    frame = encode_frame(registry.encode(msg))

    def encode() -> bytes:
        return encode_frame(registry.encode(msg))

    def decode() -> object:
        decoder = FrameDecoder()
        decoder.feed(frame)
        payload = decoder.next_frame()
        assert isinstance(payload, bytes)
        return registry.decode(payload)

    assert decode() == msg
    enc = median([time_per_call(encode, seconds) for _ in range(repeats)])
    dec = median([time_per_call(decode, seconds) for _ in range(repeats)])
    both = enc + dec
    return {
        "case": name,
        "bytes": len(frame),
        "encode_us": enc * 1e6,
        "decode_us": dec * 1e6,
        "round_trips_per_s": 1 / both,
        "mb_per_s": len(frame) / both / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.3)
    args = parser.parse_args()
    cases = [
        ("AppendEntries x1", PEER, append_entries(1)),
        ("AppendEntries x64", PEER, append_entries(64)),
        ("AppendEntries x1024", PEER, append_entries(1024)),
        ("Deltas x1000 changes", SERVER_TO_CLIENT, big_deltas(1000)),
    ]
    results = [measure(n, r, m, args.repeats, args.seconds) for n, r, m in cases]
    for row in results:
        if row["case"].startswith("AppendEntries"):  # type: ignore[union-attr]
            count = int(str(row["case"]).rsplit("x", 1)[1])
            row["entries_per_s"] = count * float(row["round_trips_per_s"])  # type: ignore[arg-type]
    headers = ["case", "bytes", "encode_us", "decode_us", "round_trips_per_s", "mb_per_s"]
    print_table(headers, [[row[h] for h in headers] for row in results])
    path = write_json("codec", {"repeats": args.repeats, "results": results})
    print(f"\nmedian of {args.repeats} runs; JSON: {path}")


if __name__ == "__main__":
    main()
