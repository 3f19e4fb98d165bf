"""The broker's specialised `Deltas` decoder accepts exactly what the generated one does.

Both are fed the same values: valid messages (derived from the type hints), the same
messages with one node anywhere in them replaced by other CBOR (wrong types, values
just past a bound, missing and extra items), and mutated bytes through the registry.
Each must give an equal object, or the same error.
"""

from __future__ import annotations

import random
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from felix.proto.cbor import U63_MAX, Registry, from_plain, to_plain
from felix.proto.client_messages import (
    SERVER_TO_CLIENT,
    Change,
    Delta,
    Deltas,
    deltas_decoder,
)
from felix.proto.errors import ProtocolError, SchemaError
from tests.proto.strategies import message_strategy

GENERATED = Registry("reference")  # the same schema, no specialised decoder
GENERATED.message("Deltas")(Deltas)


def outcome(decode: Any, value: object) -> tuple[str, Any]:
    try:
        return "ok", decode(value)
    except SchemaError as exc:
        return "error", str(exc)


def reference(value: object) -> Any:
    """The generated decoder (`from_plain` runs the schema's own)."""
    return from_plain(Deltas, value)


FALLBACKS: list[object] = []


def counted(value: object) -> Any:
    FALLBACKS.append(value)
    return reference(value)


FAST = deltas_decoder(counted)


def same(value: object) -> None:
    fast = outcome(FAST, value)
    assert fast == outcome(reference, value)
    if fast[0] == "ok":
        assert type(fast[1]) is Deltas
        assert all(type(d) is Delta for d in fast[1].deltas)
        assert all(type(c) is Change for d in fast[1].deltas for c in d.changes)


def paths(value: object, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [at]
    if isinstance(value, list):
        for i, item in enumerate(value):
            found += paths(item, (*at, i))
    elif isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*at, key))
    return found


def replaced(value: Any, at: tuple[Any, ...], new: object) -> Any:
    if not at:
        return new
    copy = list(value) if isinstance(value, list) else dict(value)
    copy[at[0]] = replaced(value[at[0]], at[1:], new)
    return copy


def dropped(value: Any, at: tuple[Any, ...]) -> Any:
    """``value`` without the item at ``at`` (at the root: unchanged)."""
    if not at:
        return value
    copy = list(value) if isinstance(value, list) else dict(value)
    if len(at) == 1:
        del copy[at[0]]
    else:
        copy[at[0]] = dropped(value[at[0]], at[1:])
    return copy


EDGE_VALUES: list[object] = [
    -1,
    0,
    U63_MAX,
    U63_MAX + 1,
    True,
    False,
    None,
    1.5,
    "",
    "x" * 256,
    "x" * 257,
    b"",
    b"\x00" * 64,
    b"\x00" * 65,
    [],
    {},
    [None],
    {"k": None},
    {1: 2},
    ["tenant", "t", None],
    ["tenant", "t", {"name": "t"}, "extra"],
    [1, 2, b"", []],
]
EDGES = st.sampled_from(EDGE_VALUES)
CBOR_ITEMS = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats()
    | st.text(max_size=8) | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=12,
)  # fmt: skip


def plain_of(message: Deltas) -> Any:
    """As the CBOR decoder hands it over: lists, never tuples."""
    return cbor2.loads(cbor2.dumps(to_plain(message)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=message_strategy(Deltas))
def test_valid_messages_decode_alike(message: Deltas) -> None:
    plain = plain_of(message)
    same(plain)
    assert FAST(plain) == message


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=message_strategy(Deltas), data=st.data())
def test_one_node_replaced_decodes_alike(message: Deltas, data: st.DataObject) -> None:
    plain = plain_of(message)
    at = data.draw(st.sampled_from(paths(plain)))
    new = data.draw(EDGES | CBOR_ITEMS)
    same(replaced(plain, at, new))
    same(dropped(plain, at))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=message_strategy(Deltas), seed=st.integers(0, 2**32))
def test_mutated_bytes_decode_alike(message: Deltas, seed: int) -> None:
    """Through the registries: the specialised one (SERVER_TO_CLIENT) and the
    reference registry give the same message or the same error."""
    encoded = bytearray(SERVER_TO_CLIENT.encode(message))
    rng = random.Random(seed)
    for _ in range(rng.randint(1, 3)):
        pos = rng.randrange(len(encoded))
        encoded[pos] ^= 1 << rng.randrange(8)

    def through(registry: Registry) -> tuple[str, Any]:
        try:
            return "ok", registry.decode(bytes(encoded))
        except ProtocolError as exc:
            return type(exc).__name__, str(exc).replace(registry.name, "<registry>")

    assert through(SERVER_TO_CLIENT) == through(GENERATED)


def test_the_registry_uses_the_specialised_decoder() -> None:
    """A valid delta takes the fast path (no fallback); a bad one falls back and gets
    the schema's own error, with its field path."""
    delta = Delta(4, 5, b"\x01" * 8, (Change("tenant", "t", {"name": "t"}), Change("x", "y", None)))
    plain = plain_of(Deltas((delta,)))
    FALLBACKS.clear()
    assert FAST(plain) == Deltas((delta,))
    assert not FALLBACKS
    bad = replaced(plain, ("deltas", 0, 1), -1)
    with pytest.raises(SchemaError, match=r"deltas\[0\]\.version"):
        FAST(bad)
    assert len(FALLBACKS) == 1
    assert FALLBACKS[0] == bad
    payload = SERVER_TO_CLIENT.encode(Deltas((delta,)))
    assert SERVER_TO_CLIENT.decode(payload) == Deltas((delta,))
    with pytest.raises(SchemaError, match=r"^Deltas\.deltas\[0\]\.version"):
        SERVER_TO_CLIENT.decode(cbor2.dumps({**bad, "type": "Deltas"}))
