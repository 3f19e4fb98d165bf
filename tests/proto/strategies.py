"""Hypothesis strategies derived from the wire dataclasses' own type hints.

Deriving them (rather than writing one per message) means a field added to a message is
covered by the round-trip tests the moment it exists.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any

from hypothesis import strategies as st

from felix.proto.cbor import (
    STR_CHARS_MAX_DEFAULT,
    U63_MAX,
    IntRange,
    MaxItems,
    MaxLen,
    ScalarValue,
)

SCALAR_VALUES = st.one_of(
    st.integers(min_value=-(2**63), max_value=U63_MAX),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.booleans(),
    st.none(),
    st.lists(st.one_of(st.integers(-(2**63), U63_MAX), st.text(max_size=8)), max_size=5).map(tuple),
)


def strategy_for(hint: Any) -> st.SearchStrategy[Any]:
    meta: tuple[Any, ...] = ()
    if typing.get_origin(hint) is typing.Annotated:
        hint, *rest = typing.get_args(hint)
        meta = tuple(rest)
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def find(kind: type) -> Any:
        return next((m for m in meta if isinstance(m, kind)), None)

    if hint is ScalarValue:
        return SCALAR_VALUES
    if hint is bool:
        return st.booleans()
    if hint is int:
        bounds = find(IntRange) or IntRange(0, U63_MAX)
        return st.integers(min_value=bounds.lo, max_value=bounds.hi)
    if hint is str:
        limit = find(MaxLen)
        return st.text(max_size=min(limit.n if limit else STR_CHARS_MAX_DEFAULT, 40))
    if hint is bytes:
        limit = find(MaxLen)
        return st.binary(max_size=min(limit.n if limit else 1 << 20, 64))
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return st.sampled_from(list(hint))
    if origin in (typing.Union, types.UnionType):
        inner = next(a for a in args if a is not type(None))
        return st.none() | strategy_for(inner)
    if origin is tuple:
        limit = find(MaxItems)
        return st.lists(strategy_for(args[0]), max_size=min(limit.n if limit else 8, 8)).map(tuple)
    if origin is dict:
        return st.dictionaries(strategy_for(args[0]), strategy_for(args[1]), max_size=6)
    if dataclasses.is_dataclass(hint):
        return message_strategy(typing.cast(type, hint))
    raise TypeError(f"no strategy for {hint!r}")


def message_strategy(cls: type) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: strategy_for(hints[f.name]) for f in dataclasses.fields(cls)}
    return st.builds(cls, **fields)
