"""Field codecs of the schema-checked messages: one per field annotation, compiled once.

PURE (``tests/test_layering.py``).  Each `FieldCodec` decodes (checks type, range and
length) and encodes one field; `felix.proto.cbor` picks them from a dataclass's type
hints and generates the per-class decoder and encoder from them (docs/architecture.md,
the wire protocol).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from felix.proto.errors import SchemaError

U63_MAX: Final = 2**63 - 1
I64_MIN: Final = -(2**63)
STR_CHARS_MAX_DEFAULT: Final = 4096
ITEMS_MAX_DEFAULT: Final = 1_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class IntRange:
    """Inclusive bounds for an ``int`` field (``Annotated[int, IntRange(1, 10)]``)."""

    lo: int
    hi: int


@dataclasses.dataclass(frozen=True, slots=True)
class MaxLen:
    """Upper bound on the length of a ``str`` (characters) or ``bytes`` (bytes) field."""

    n: int


@dataclasses.dataclass(frozen=True, slots=True)
class MaxItems:
    """Upper bound on the number of items in a ``tuple[...]`` or ``dict`` field."""

    n: int


@dataclasses.dataclass(frozen=True, slots=True)
class Since:
    """The protocol version that added a field (``Annotated[int, Since(2)] = 0``): on a
    connection that negotiated an older version it is neither sent nor accepted, and
    decodes as its default (docs/architecture.md, "Protocol versions")."""

    version: int


@dataclasses.dataclass(frozen=True, slots=True)
class OmitDefault:
    """A field sent only when it differs from its default and accepted absent (decoded
    as the default): for a handshake field an older sender does not know."""


Decode = Callable[[object], Any]
Encode = Callable[[Any], object]


@dataclasses.dataclass(frozen=True, slots=True)
class FieldCodec:
    decode: Decode
    encode: Encode | None  # None means "the value encodes as itself"
    depth: int  # CBOR container levels this field needs (scalars: 0)
    label: str  # what the field holds, for error messages and docs
    # For a scalar decoded as itself: a Python expression over ``{v}``, true exactly
    # when ``decode`` accepts the value (generated decoders inline it; see below).
    check: str | None = None


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    return {
        int: "integer",
        str: "text",
        bytes: "bytes",
        list: "array",
        dict: "map",
        float: "float",
    }.get(type(value), type(value).__name__)


def _int_codec(lo: int, hi: int) -> FieldCodec:
    def decode(value: object) -> int:
        if type(value) is not int:
            raise SchemaError(f"expected integer, got {_type_name(value)}")
        if value < lo or value > hi:
            raise SchemaError(f"integer {value} out of range [{lo}, {hi}]")
        return value

    return FieldCodec(decode, None, 0, "integer", f"(type({{v}}) is int and {lo} <= {{v}} <= {hi})")


def _bool_decode(value: object) -> bool:
    if type(value) is not bool:
        raise SchemaError(f"expected bool, got {_type_name(value)}")
    return value


def _sized_codec(kind: type, limit: int) -> FieldCodec:
    label = "text" if kind is str else "bytes"
    unit = "characters" if kind is str else "bytes"

    def decode(value: object) -> Any:
        if type(value) is not kind:
            raise SchemaError(f"expected {label}, got {_type_name(value)}")
        assert isinstance(value, (str, bytes))
        if len(value) > limit:
            raise SchemaError(f"{label} of {len(value)} {unit} exceeds the limit of {limit}")
        return value

    check = f"(type({{v}}) is {kind.__name__} and len({{v}}) <= {limit})"
    return FieldCodec(decode, None, 0, label, check)


def _enum_codec(enum_type: type[enum.Enum]) -> FieldCodec:
    by_value: dict[object, enum.Enum] = {member.value: member for member in enum_type}
    value_type = type(next(iter(by_value)))
    allowed = ", ".join(repr(v) for v in by_value)

    def decode(value: object) -> enum.Enum:
        if type(value) is not value_type:
            raise SchemaError(f"expected one of {allowed}, got {_type_name(value)}")
        member = by_value.get(value)
        if member is None:
            raise SchemaError(f"{value!r} is not one of {allowed}")
        return member

    # IntEnum/StrEnum members are ints/strs already: they encode as themselves.
    plain = issubclass(enum_type, (int, str))
    return FieldCodec(decode, None if plain else _enum_value, 0, enum_type.__name__)


def _enum_value(member: enum.Enum) -> object:
    return member.value


def _optional_codec(inner: FieldCodec) -> FieldCodec:
    inner_decode, inner_encode = inner.decode, inner.encode

    def decode(value: object) -> Any:
        return None if value is None else inner_decode(value)

    encode: Encode | None = None
    if inner_encode is not None:

        def encode(value: Any) -> object:
            return None if value is None else inner_encode(value)

    check = None if inner.check is None else f"({{v}} is None or {inner.check})"
    return FieldCodec(decode, encode, inner.depth, f"{inner.label} or null", check)


def _tuple_codec(inner: FieldCodec, limit: int) -> FieldCodec:
    inner_decode, inner_encode = inner.decode, inner.encode

    def decode(value: object) -> tuple[Any, ...]:
        if type(value) is not list:
            raise SchemaError(f"expected array, got {_type_name(value)}")
        if len(value) > limit:
            raise SchemaError(f"array of {len(value)} items exceeds the limit of {limit}")
        try:
            return tuple([inner_decode(item) for item in value])
        except SchemaError:
            for index, item in enumerate(value):  # error path only: find the culprit
                try:
                    inner_decode(item)
                except SchemaError as item_exc:
                    raise item_exc.under(f"[{index}]") from None
            raise  # pragma: no cover - the loop above always re-raises

    encode: Encode | None = None
    if inner_encode is not None:

        def encode(items: tuple[Any, ...]) -> object:
            return [inner_encode(item) for item in items]

    return FieldCodec(decode, encode, inner.depth + 1, f"array of {inner.label}")


def _dict_codec(key: FieldCodec, val: FieldCodec, limit: int) -> FieldCodec:
    key_decode, val_decode, val_encode = key.decode, val.decode, val.encode

    def decode(value: object) -> dict[Any, Any]:
        if type(value) is not dict:
            raise SchemaError(f"expected map, got {_type_name(value)}")
        if len(value) > limit:
            raise SchemaError(f"map of {len(value)} entries exceeds the limit of {limit}")
        out: dict[Any, Any] = {}
        for k, v in value.items():
            try:
                decoded_key = key_decode(k)
            except SchemaError as exc:
                raise exc.under("<key>") from None
            try:
                out[decoded_key] = val_decode(v)
            except SchemaError as exc:
                raise exc.under(str(decoded_key)) from None
        return out

    encode: Encode | None = None
    if val_encode is not None:

        def encode(mapping: dict[Any, Any]) -> object:
            return {k: val_encode(v) for k, v in mapping.items()}

    return FieldCodec(decode, encode, val.depth + 1, f"map of {val.label}")


def _record_codec(key: FieldCodec, key_limit: int, val: FieldCodec, limit: int) -> FieldCodec:
    """``dict[str, ScalarValue]`` (metadata records, the bulk of snapshots and deltas):
    the checks of `_dict_codec` over `_scalar_value_decode`, in one loop.  Anything it
    does not accept goes through the general decoder, which refuses it with the usual
    message (or, should the two ever disagree, accepts it: never more than it would)."""
    general = _dict_codec(key, val, limit)
    slow = general.decode

    def decode(value: object) -> dict[str, Any]:
        if type(value) is not dict or len(value) > limit:
            return slow(value)  # type: ignore[no-any-return]
        out: dict[str, Any] = {}
        for k, v in value.items():
            if type(k) is not str or len(k) > key_limit:
                return slow(value)  # type: ignore[no-any-return]
            kind = type(v)
            if kind is int:
                if v < I64_MIN or v > U63_MAX:
                    return slow(value)  # type: ignore[no-any-return]
            elif kind is str or kind is bytes:
                if len(v) > 65536:
                    return slow(value)  # type: ignore[no-any-return]
            elif kind is list:
                if len(v) > 65536:
                    return slow(value)  # type: ignore[no-any-return]
                for item in v:
                    item_kind = type(item)
                    if item_kind is int:
                        if item < I64_MIN or item > U63_MAX:
                            return slow(value)  # type: ignore[no-any-return]
                    elif item_kind is not str or len(item) > STR_CHARS_MAX_DEFAULT:
                        return slow(value)  # type: ignore[no-any-return]
                v = tuple(v)
            elif kind is not bool and v is not None:
                return slow(value)  # type: ignore[no-any-return]
            out[k] = v
        return out

    return FieldCodec(decode, general.encode, general.depth, general.label)


def _scalar_value_decode(value: object) -> object:
    """A metadata record value: a scalar, or a flat array of integers and text."""
    kind = type(value)
    if kind is int:
        assert isinstance(value, int)
        if not I64_MIN <= value <= U63_MAX:
            raise SchemaError(f"integer {value} out of the signed 64-bit range")
        return value
    if kind is str or kind is bytes:
        assert isinstance(value, (str, bytes))
        if len(value) > 65536:
            raise SchemaError(f"value of {len(value)} exceeds the limit of 65536")
        return value
    if kind is bool or value is None:
        return value
    if kind is list:
        assert isinstance(value, list)
        if len(value) > 65536:
            raise SchemaError(f"array of {len(value)} items exceeds the limit of 65536")
        for index, item in enumerate(value):
            item_kind = type(item)
            if item_kind is int:
                if not I64_MIN <= item <= U63_MAX:
                    raise SchemaError(f"[{index}]: integer out of the signed 64-bit range")
            elif item_kind is str:
                if len(item) > STR_CHARS_MAX_DEFAULT:
                    raise SchemaError(f"[{index}]: text exceeds {STR_CHARS_MAX_DEFAULT} characters")
            else:
                raise SchemaError(f"[{index}]: expected integer or text, got {_type_name(item)}")
        return tuple(value)
    raise SchemaError(f"expected a scalar or an array of scalars, got {_type_name(value)}")


if TYPE_CHECKING:
    ScalarValue = int | str | bytes | bool | None | tuple[int | str, ...]
else:

    class ScalarValue:
        """Annotation marker: an int, str, bytes, bool, null, or flat tuple of int/str
        (type checkers see the union; the schema compiler sees this class)."""
