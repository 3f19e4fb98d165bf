"""The Wing–Gong checker accepts linearizable register histories and rejects broken ones."""

from __future__ import annotations

import math
import random

from felix.testing.linearizability import Operation, OpKind, check_register_history

INF = math.inf


def w(client: int, call: float, ret: float, value: str, key: str = "k") -> Operation:
    return Operation(client, call, ret, OpKind.WRITE, key, value)


def r(client: int, call: float, ret: float, value: str | None, key: str = "k") -> Operation:
    return Operation(client, call, ret, OpKind.READ, key, value)


def test_sequential_history_is_linearizable() -> None:
    history = [r(0, 0, 1, None), w(0, 2, 3, "a"), r(1, 4, 5, "a"), w(1, 6, 7, "b")]
    assert check_register_history(history)


def test_stale_read_after_acknowledged_write_is_rejected() -> None:
    history = [w(0, 0, 1, "a"), w(0, 2, 3, "b"), r(1, 4, 5, "a")]
    result = check_register_history(history)
    assert not result.ok
    assert result.key == "k"
    assert not result.exhausted


def test_lost_write_is_rejected() -> None:
    history = [w(0, 0, 1, "a"), r(1, 2, 3, None)]
    assert not check_register_history(history)


def test_read_of_a_value_never_written_is_rejected() -> None:
    assert not check_register_history([w(0, 0, 1, "a"), r(1, 2, 3, "zzz")])


def test_concurrent_read_may_see_old_or_new_value() -> None:
    for seen in (None, "a"):
        assert check_register_history([w(0, 0, 10, "a"), r(1, 2, 3, seen)])


def test_reads_may_not_flip_back_to_an_older_value() -> None:
    """Two sequential reads during one slow write: new then old is impossible."""
    history = [w(0, 0, 100, "a"), r(1, 1, 2, "a"), r(1, 3, 4, None)]
    assert not check_register_history(history)


def test_unknown_write_may_take_effect_late() -> None:
    history = [w(0, 0, INF, "a"), r(1, 5, 6, None), r(1, 7, 8, "a")]
    assert check_register_history(history)


def test_unknown_write_may_never_take_effect() -> None:
    history = [w(0, 0, INF, "a"), r(1, 5, 6, None), w(1, 7, 8, "b"), r(1, 9, 10, "b")]
    assert check_register_history(history)


def test_unknown_write_cannot_take_effect_before_its_call() -> None:
    history = [r(1, 0, 1, "a"), w(0, 2, INF, "a")]
    assert not check_register_history(history)


def test_unknown_write_takes_effect_at_most_once() -> None:
    history = [
        w(0, 0, INF, "a"),
        r(1, 1, 2, "a"),
        w(1, 3, 4, "b"),
        r(1, 5, 6, "a"),
    ]
    assert not check_register_history(history)


def test_unknown_reads_are_ignored() -> None:
    history = [w(0, 0, 1, "a"), r(1, 2, INF, "garbage")]
    assert check_register_history(history)


def test_keys_are_independent() -> None:
    history = [w(0, 0, 1, "a", "x"), w(1, 0, 1, "b", "y"), r(2, 2, 3, "a", "x")]
    assert check_register_history(history)
    bad = [*history, r(2, 4, 5, "a", "y")]
    result = check_register_history(bad)
    assert not result.ok
    assert result.key == "y"


def test_operations_that_touch_in_time_are_concurrent() -> None:
    assert check_register_history([w(0, 0, 5, "a"), r(1, 5, 6, None)])


def test_exhausted_budget_counts_as_failure() -> None:
    history = [w(c, 0, 100, f"v{c}") for c in range(12)] + [r(99, 200, 201, "v0")]
    result = check_register_history(history, steps_max=5)
    assert not result.ok
    assert result.exhausted


def _random_linearizable_history(rng: random.Random, n_ops: int) -> list[Operation]:
    """Each op takes effect at a hidden instant inside [call, ret]: linearizable by
    construction; some writes are turned into unknown outcomes."""
    state: dict[str, str | None] = {}
    ops = []
    for i in range(n_ops):
        instant = float(i * 10)
        call = instant - rng.uniform(0, 25)
        ret = instant + rng.uniform(0, 25)
        key = rng.choice("abc")
        if rng.random() < 0.5:
            state[key] = f"v{i}"
            unknown = rng.random() < 0.1
            ops.append(w(i % 8, call, INF if unknown else ret, f"v{i}", key))
        else:
            ops.append(r(i % 8, call, ret, state.get(key), key))
    return ops


def test_random_linearizable_histories_are_accepted_and_corruptions_rejected() -> None:
    rng = random.Random(7)
    rejected = 0
    for _ in range(40):
        ops = _random_linearizable_history(rng, 200)
        assert check_register_history(ops)
        reads = [i for i, op in enumerate(ops) if op.kind is OpKind.READ]
        victim = rng.choice(reads)
        corrupted = list(ops)
        old = corrupted[victim]
        corrupted[victim] = Operation(old.client, old.call, old.ret, old.kind, old.key, "bogus")
        assert not check_register_history(corrupted)
        rejected += 1
    assert rejected == 40
