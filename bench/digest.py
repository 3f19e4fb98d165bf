"""Cost of one record's digest hash: the cbor2-based original against the encoder now.

    python -m bench.digest [--repeats 7] [--seconds 0.3]

A broker hashes every changed record it receives and, on first view, every record of
the snapshot (100,000 shards at scale), so this is per-record CPU on the hot receive
path.  "cbor2" is the original ``blake2b(cbor2.dumps([kind, key, sorted(items)]))``;
"now" is `felix.metadata.digest.record_hash`, which must return the same bits (checked
before timing).  Each case is timed ``--repeats`` times for about ``--seconds`` each; the
table shows the median microseconds per call.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from hashlib import blake2b

import cbor2

from bench._report import median, print_table, write_json
from bench.codec import time_per_call
from felix.metadata.digest import record_hash
from felix.metadata.model import ConfigEntry, Model, Node, NodeState, Shard, Stream, Tenant


def cbor2_record_hash(kind: str, key: str, value: Mapping[str, object]) -> int:
    """The original implementation, kept as the baseline."""
    payload = cbor2.dumps([kind, key, sorted(value.items())])
    return int.from_bytes(blake2b(payload, digest_size=8).digest(), "big")


CASES: list[tuple[str, Model]] = [
    ("shard", Shard("orders", 3, (1, 2, 3), 1, 7)),
    ("shard, node ids > 1023", Shard("orders", 3, (1041, 2077, 4096), 2077, 9)),
    ("node (broker: plain str)", Node(7, "10.0.0.7:9092", "rack-1", "up", 1234, False, None)),
    ("node (ctl plane: enum)", Node(7, "10.0.0.7:9092", "rack-1", NodeState.UP, 1234, False, None)),
    ("stream", Stream("orders", "acme", 64, 3, 604_800_000)),
    ("tenant", Tenant("acme", "Acme Corp", 100, None, 10**9)),
    ("config (int)", ConfigEntry("streams_max", 10_000)),
    ("config (bool)", ConfigEntry("rack_aware_placement", False)),
]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.3)
    args = parser.parse_args()
    results = []
    for name, model in CASES:
        kind, key, value = model.kind, model.key, model.to_record()
        assert record_hash(kind, key, value) == cbor2_record_hash(kind, key, value), name

        def old(kind: str = kind, key: str = key, value: Mapping[str, object] = value) -> int:
            return cbor2_record_hash(kind, key, value)

        def new(kind: str = kind, key: str = key, value: Mapping[str, object] = value) -> int:
            return record_hash(kind, key, value)

        old_us = median([time_per_call(old, args.seconds) for _ in range(args.repeats)]) * 1e6
        new_us = median([time_per_call(new, args.seconds) for _ in range(args.repeats)]) * 1e6
        results.append(
            {"case": name, "cbor2_us": old_us, "now_us": new_us, "speedup": old_us / new_us}
        )
    headers = ["case", "cbor2_us", "now_us", "speedup"]
    print_table(headers, [[row[h] for h in headers] for row in results])
    path = write_json("digest", {"repeats": args.repeats, "results": results})
    print(f"\nmedian of {args.repeats} runs, microseconds per record_hash; JSON: {path}")


if __name__ == "__main__":
    main()
