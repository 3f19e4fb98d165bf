"""The replica planner at scale: one pass over a large cluster after brokers join and die.

    python -m bench.planner [--shards 100000] [--brokers 100] [--join 10] [--die 5]
                            [--passes 5] [--runs 3] [--json PATH]

Builds a `MetadataState` with ``--shards`` shards (RF 3, streams of at most 10,000
shards) on ``--brokers`` brokers in 5 racks, then registers ``--join`` new brokers and
marks ``--die`` brokers down past the timeout (``expire_node``).  Each pass is what the
leader's rebalancer does (docs/architecture.md §13): `input_of` the state, `plan`, and
`commands_for`; the commands are then applied, and every catching-up replica reports
ready, so the next pass sees the moves in flight finish.  Reported per pass: the time of
input + plan + commands (the target is at most 1 s per pass), the steps proposed, the
bytes of the commands proposed (each its own Raft entry) and of the Deltas they
produce, and the largest single entry (the bound is 1 MiB, ``max_message_bytes``).
Medians over ``--runs`` fresh states.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._report import print_table, write_json
from felix.metadata.commands import (
    CreateStream,
    ExpireNode,
    NodeHealth,
    RegisterNode,
    ReplicaReady,
    SetConfig,
    SetTenant,
    encode_command,
)
from felix.metadata.planner import commands_for, input_of, limits_of, plan
from felix.metadata.state import MetadataState
from felix.proto.client_messages import SERVER_TO_CLIENT, Deltas

ENTRY_BYTES_MAX = 1 << 20
STREAM_SHARDS_MAX = 10_000


class Builder:
    def __init__(self) -> None:
        self.state = MetadataState()

    def apply(self, command: Any) -> Any:
        result = self.state.apply_command(self.state.version + 1, command)
        assert result.ok, (command, result.error)
        return result


def build(shards: int, brokers: int, join: int, die: int) -> MetadataState:
    b = Builder()
    b.apply(SetTenant("bench"))
    b.apply(SetConfig("shards_per_node_max", 1_000_000))
    b.apply(SetConfig("streams_max", 1_000_000))
    for n in range(1, brokers + 1):
        b.apply(RegisterNode(n, f"10.1.{n // 250}.{n % 250}:9092", f"rack-{n % 5}"))
        b.apply(NodeHealth(n, "up"))
    for i, start in enumerate(range(0, shards, STREAM_SHARDS_MAX)):
        count = min(STREAM_SHARDS_MAX, shards - start)
        b.apply(CreateStream(f"stream-{i}", count, "bench", replication_factor=3))
    for n in range(brokers + 1, brokers + join + 1):
        b.apply(RegisterNode(n, f"10.2.{n // 250}.{n % 250}:9092", f"rack-{n % 5}"))
        b.apply(NodeHealth(n, "up"))
    for n in range(1, die + 1):
        b.apply(NodeHealth(n, "down"))
        b.apply(ExpireNode(n, b.state.nodes[n].epoch))
    return b.state


def one_run(args: argparse.Namespace, run: int) -> list[dict[str, Any]]:
    state = build(args.shards, args.brokers, args.join, args.die)
    b = Builder()
    b.state = state
    rows = []
    for number in range(1, args.passes + 1):
        started = time.perf_counter()
        steps = plan(input_of(state), limits_of(state))
        commands = commands_for(state, steps)
        pass_s = time.perf_counter() - started
        encoded = [len(encode_command(c)) for c in commands]
        delta_bytes = 0
        for command in commands:
            delta = b.apply(command).delta
            delta_bytes += len(SERVER_TO_CLIENT.encode(Deltas((delta,))))
        ready = [(k, r) for k in sorted(state.reassigning) for r in state.shards[k].catching_up]
        for key, replica in ready:
            b.apply(ReplicaReady(key, replica))
        rows.append(
            {
                "run": run,
                "pass": number,
                "pass_ms": pass_s * 1000,
                "moves": len(steps.moves),
                "leader_steps": len(steps.leader_moves),
                "finishes": len(steps.finishes),
                "commands": len(commands),
                "command_bytes": sum(encoded),
                "delta_bytes": delta_bytes,
                "entry_bytes_max": max(encoded, default=0),
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shards", type=int, default=100_000)
    parser.add_argument("--brokers", type=int, default=100)
    parser.add_argument("--join", type=int, default=10)
    parser.add_argument("--die", type=int, default=5)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = [row for run in range(1, args.runs + 1) for row in one_run(args, run)]
    by_pass: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        by_pass.setdefault(row["pass"], []).append(row)
    keys = ("pass_ms", "moves", "leader_steps", "finishes", "command_bytes", "delta_bytes")
    table = [
        [number, *(statistics.median(r[k] for r in group) for k in keys),
         max(r["entry_bytes_max"] for r in group)]
        for number, group in sorted(by_pass.items())
    ]  # fmt: skip
    print(
        f"planner: {args.shards:,} shards, {args.brokers} brokers, +{args.join} joined, "
        f"{args.die} down past the timeout; medians over {args.runs} runs"
    )
    print_table(["pass", *keys, "entry_bytes_max"], table)
    worst = max(r["pass_ms"] for r in rows)
    biggest = max(r["entry_bytes_max"] for r in rows)
    print(f"slowest pass {worst:.0f} ms (target <= 1000); largest entry {biggest} B (<= 1 MiB)")
    assert biggest <= ENTRY_BYTES_MAX
    write_json("planner", {"args": vars(args) | {"json": None}, "results": rows}, args.json)


if __name__ == "__main__":
    main()
