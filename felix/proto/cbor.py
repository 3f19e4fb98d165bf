"""Safe CBOR and schema-checked messages.

Theory of operation
-------------------
Every message is a frozen, slotted dataclass registered with a `Registry` (one registry
per direction of one channel, so a broker can never send a server-only message).  At
registration time the dataclass's type hints are compiled once into a list of per-field
decoder/encoder closures; decoding a payload is then

1. `safe_loads`: a fresh cbor2 decoder per payload, with indefinite lengths, duplicate
   keys, non-string map keys and *every* semantic tag refused, nesting capped at the depth
   the registry's schemas need, and exactly one item (no trailing bytes);
2. the schema walk: the ``type`` field picks the class, then each field is checked for
   type, range and length.  Missing and extra fields are errors.

Only `ProtocolError` subclasses leave `safe_loads` and `Registry.decode`; anything cbor2
raises is wrapped.  Error messages name the field path (``entries[3].term``) and the
problem, built only on the error path.

Supported field annotations: ``int`` (unsigned 63-bit unless annotated with `IntRange`),
``bool``, ``str`` and ``bytes`` (bounded by `MaxLen`), ``IntEnum``/``StrEnum`` types,
``X | None``, ``tuple[X, ...]`` (bounded by `MaxItems`), ``dict[str, X]`` and nested
registered dataclasses (as maps, or as arrays when registered with ``as_array=True``).
"""

from __future__ import annotations

import dataclasses
import enum
import io
import types
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import cbor2

from felix.gc_pause import gc_paused as gc_paused  # re-exported until felix/server moves
from felix.proto.errors import DecodeError, SchemaError, UnknownMessageType

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


# ---------------------------------------------------------------------------------------
# Raw CBOR


def _refuse_tag(decoder: object, tag: object = None) -> object:
    raise ValueError("CBOR tags are not accepted")


# Every semantic tag cbor2 knows how to decode natively (dates, bignums, decimals,
# shared and string references, rationals, regexes, MIME, UUIDs, sets, IP addresses,
# self-describe).  Felix uses no tags at all, so all of them are refused; unknown tags
# reach `tag_hook`, which refuses them too.
_KNOWN_SEMANTIC_TAGS: Final = (
    *range(0, 6),
    25,
    28,
    29,
    30,
    35,
    36,
    37,
    52,
    54,
    100,
    256,
    258,
    260,
    261,
    1004,
    55799,
)
_REFUSE_ALL_TAGS: Final = {tag: _refuse_tag for tag in _KNOWN_SEMANTIC_TAGS}


# Configured decoders for reuse, by max depth (building one costs about as much as
# decoding a small message).  A caller takes one out (``pop``) and puts it back after a
# clean decode, so threads and re-entrant calls never share one: whoever finds none builds
# its own.  Every tag is refused, so a decoder carries no state from one item to the next
# (no shared values, no string references); one that raised is dropped all the same.
_DECODERS: dict[int, cbor2.CBORDecoder] = {}


def _new_decoder(fp: io.BytesIO, max_depth: int) -> cbor2.CBORDecoder:
    return cbor2.CBORDecoder(
        fp,
        tag_hook=_refuse_tag,
        semantic_decoders=_REFUSE_ALL_TAGS,
        max_depth=max_depth,
        allow_indefinite=False,
        allow_duplicate_keys=False,
        strict_hashable_types=True,
    )


def safe_loads(data: bytes | bytearray | memoryview, *, max_depth: int) -> object:
    """Decode exactly one CBOR item, refusing every feature Felix does not use."""
    fp = io.BytesIO(data)
    decoders = _DECODERS
    try:
        decoder = decoders.pop(max_depth, None)
        if decoder is None:
            decoder = _new_decoder(fp, max_depth)
        else:
            decoder.fp = fp
        item = decoder.decode()
    except Exception as exc:  # cbor2 raises a variety; none may escape
        raise DecodeError(f"invalid CBOR: {_describe(exc)}") from None
    decoders[max_depth] = decoder
    end = fp.tell()
    if end != len(data):
        raise DecodeError(f"{len(data) - end} trailing byte(s) after the CBOR item")
    return item


def dumps(item: object) -> bytes:
    """Encode plain data (dict, list, tuple, int, str, bytes, bool, None) as CBOR."""
    return cbor2.dumps(item)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


GC_PAUSE_BYTES: Final = 32 * 1024
"""`Registry.decode` pauses the cyclic GC while it decodes a message at least this big."""


# ---------------------------------------------------------------------------------------
# Field codecs: each compiled once per annotation.

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


# ---------------------------------------------------------------------------------------
# Message classes


@dataclasses.dataclass(frozen=True, slots=True)
class _Schema:
    cls: type
    names: tuple[str, ...]
    codecs: tuple[FieldCodec, ...]
    as_array: bool
    depth: int
    decode: Callable[[object], Any]
    encode: Callable[[Any], Any]


_SCHEMAS: dict[type, _Schema] = {}
T = TypeVar("T")


def _codec_for(hint: Any, owner: str) -> FieldCodec:
    meta: tuple[Any, ...] = ()
    if typing.get_origin(hint) is typing.Annotated:
        hint, *rest = typing.get_args(hint)
        meta = tuple(rest)
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def find(kind: type) -> Any:
        return next((m for m in meta if isinstance(m, kind)), None)

    if hint is ScalarValue:
        return FieldCodec(_scalar_value_decode, None, 1, "value")
    if hint is bool:
        return FieldCodec(_bool_decode, None, 0, "bool", "type({v}) is bool")
    if hint is int:
        bounds = find(IntRange) or IntRange(0, U63_MAX)
        return _int_codec(bounds.lo, bounds.hi)
    if hint is str or hint is bytes:
        limit = find(MaxLen)
        default = STR_CHARS_MAX_DEFAULT if hint is str else 2**32
        return _sized_codec(hint, limit.n if limit else default)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum_codec(hint)
    if origin in (typing.Union, types.UnionType):
        non_null = [a for a in args if a is not type(None)]
        if len(non_null) != 1 or len(args) != 2:
            raise TypeError(f"{owner}: only 'X | None' unions are supported")
        return _optional_codec(_codec_for(non_null[0], owner))
    if origin is tuple:
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"{owner}: only 'tuple[X, ...]' is supported")
        limit = find(MaxItems)
        return _tuple_codec(_codec_for(args[0], owner), limit.n if limit else ITEMS_MAX_DEFAULT)
    if origin is dict:
        limit = find(MaxItems)
        items_max = limit.n if limit else ITEMS_MAX_DEFAULT
        key, val = _codec_for(args[0], owner), _codec_for(args[1], owner)
        key_limit = _text_limit(args[0])
        if args[1] is ScalarValue and key_limit is not None:
            return _record_codec(key, key_limit, val, items_max)
        return _dict_codec(key, val, items_max)
    if isinstance(hint, type) and hint in _SCHEMAS:
        nested = _SCHEMAS[hint]
        return FieldCodec(nested.decode, nested.encode, nested.depth, hint.__name__)
    raise TypeError(f"{owner}: unsupported field type {hint!r}")


def _text_limit(hint: Any) -> int | None:
    """The length bound of a ``str`` annotation (None: not a ``str``)."""
    meta: tuple[Any, ...] = ()
    if typing.get_origin(hint) is typing.Annotated:
        hint, *rest = typing.get_args(hint)
        meta = tuple(rest)
    if hint is not str:
        return None
    limit = next((m for m in meta if isinstance(m, MaxLen)), None)
    return limit.n if limit else STR_CHARS_MAX_DEFAULT


def _compile(cls: type, as_array: bool) -> _Schema:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a dataclass")
    params = getattr(cls, "__dataclass_params__", None)
    if not getattr(params, "frozen", False) or not hasattr(cls, "__slots__"):
        raise TypeError(f"{cls.__name__} must be a frozen, slotted dataclass")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = dataclasses.fields(cls)
    names = tuple(f.name for f in fields)
    if "type" in names:
        raise TypeError(f"{cls.__name__}: 'type' is reserved for the message type")
    codecs = tuple(_codec_for(hints[f.name], f"{cls.__name__}.{f.name}") for f in fields)
    depth = 1 + max((c.depth for c in codecs), default=0)
    decode = _generate_decoder(cls, names, codecs, as_array)
    encode = _generate_encoder(cls, names, codecs, as_array)
    return _Schema(cls, names, codecs, as_array, depth, decode, encode)


# The per-class decoder and encoder are generated as straight-line code (the way
# `dataclasses` generates __init__): one call per field, no loops, no per-field try.
# Scalar fields whose codec has an inline ``check`` are tested in one expression instead
# of a call each, and the object is built by setting its slots directly when the class's
# __init__ is the plain dataclass one (frozen dataclasses pay for object.__setattr__ per
# field otherwise).  Any SchemaError sends the value through `_explain`, which finds the
# culprit field for the error message; the happy path pays nothing for it.


def dataclass_slot_setters(
    cls: type, names: tuple[str, ...]
) -> list[Callable[[Any, Any], None]] | None:
    """The slot descriptors' setters of the fields ``names`` (all of them, in order) of
    the slotted dataclass ``cls``, if ``object.__new__(cls)`` and a call of each setter
    build the same object as ``cls(*values)`` (its __init__ is the generated one that
    only assigns them); else None."""
    params = getattr(cls, "__dataclass_params__", None)
    code = getattr(getattr(cls, "__init__", None), "__code__", None)
    if (
        params is None
        or not params.init
        or hasattr(cls, "__post_init__")
        or code is None
        or code.co_filename != "<string>"  # generated by dataclasses, not written by hand
        or code.co_varnames[: code.co_argcount] != ("self", *names)
        or any(not f.init for f in dataclasses.fields(cls))
    ):
        return None
    setters = []
    for name in names:
        slot = next((k.__dict__[name] for k in cls.__mro__ if name in k.__dict__), None)
        if not isinstance(slot, types.MemberDescriptorType):
            return None
        setters.append(slot.__set__)
    return setters


def _generate_decoder(
    cls: type, names: tuple[str, ...], codecs: tuple[FieldCodec, ...], as_array: bool
) -> Callable[[object], Any]:
    env: dict[str, Any] = {
        "cls": cls,
        "new": object.__new__,
        "SchemaError": SchemaError,
        "explain": None,
    }
    args, checks = [], []
    for i, codec in enumerate(codecs):
        if codec.check is not None:
            checks.append(codec.check.format(v=f"v{i}"))
            args.append(f"v{i}")
        else:
            env[f"d{i}"] = codec.decode
            args.append(f"d{i}(v{i})")
    targets = "".join(f"v{i}, " for i in range(len(names)))
    if as_array:
        check = f"type(value) is not list or len(value) != {len(names)}"
        source_of_items = "value"
    else:
        check = f"type(value) is not dict or len(value) != {len(names)}"
        source_of_items = ", ".join(f"value[{name!r}]" for name in names) + ","
    lines = [
        "def decode(value):",
        f"    if {check}:",
        "        explain(value)",
        "    try:",
        f"        ({targets}) = {source_of_items}",
    ]
    if checks:
        lines += [
            f"        if not ({' and '.join(checks)}):",
            "            raise SchemaError('')",
        ]
    setters = dataclass_slot_setters(cls, names)
    if setters is None:
        lines.append(f"        return cls({', '.join(args)})")
    else:
        lines.append("        obj = new(cls)")
        for i, (setter, arg) in enumerate(zip(setters, args, strict=True)):
            env[f"s{i}"] = setter
            lines.append(f"        s{i}(obj, {arg})")
        lines.append("        return obj")
    lines += [
        "    except (SchemaError, KeyError):",
        "        explain(value)",
        "        raise",
    ]
    source = "\n".join(lines) + "\n"
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<decoder {cls.__name__}>", "exec"), env, namespace)

    def explain(value: object) -> None:
        _explain(cls, names, codecs, as_array, value)

    env["explain"] = explain
    decoder: Callable[[object], Any] = namespace["decode"]
    return decoder


def _explain(
    cls: type,
    names: tuple[str, ...],
    codecs: tuple[FieldCodec, ...],
    as_array: bool,
    value: object,
) -> None:
    """Slow path: raise the SchemaError that says exactly what is wrong with ``value``."""
    if as_array:
        if type(value) is not list:
            raise SchemaError(f"expected array ({cls.__name__}), got {_type_name(value)}")
        if len(value) != len(names):
            raise SchemaError(
                f"{cls.__name__} needs {len(names)} items ({', '.join(names)}), got {len(value)}"
            )
        items = list(value)
    else:
        if type(value) is not dict:
            raise SchemaError(f"expected map ({cls.__name__}), got {_type_name(value)}")
        missing = [n for n in names if n not in value]
        if missing:
            raise SchemaError(f"missing field(s): {', '.join(missing)}")
        extra = sorted(str(k) for k in value if k not in names)
        if extra:
            raise SchemaError(f"unexpected field(s): {', '.join(extra)}")
        items = [value[name] for name in names]
    for name, codec, item in zip(names, codecs, items, strict=True):
        try:
            codec.decode(item)
        except SchemaError as exc:
            raise exc.under(name) from None


def _generate_encoder(
    cls: type, names: tuple[str, ...], codecs: tuple[FieldCodec, ...], as_array: bool
) -> Callable[[Any], Any]:
    env: dict[str, Any] = {}
    parts = []
    for i, (name, codec) in enumerate(zip(names, codecs, strict=True)):
        if codec.encode is None:
            parts.append(f"obj.{name}")
        else:
            env[f"e{i}"] = codec.encode
            parts.append(f"e{i}(obj.{name})")
    if as_array:
        body = "[" + ", ".join(parts) + "]"
    else:
        body = "{" + ", ".join(f"{n!r}: {p}" for n, p in zip(names, parts, strict=True)) + "}"
    namespace: dict[str, Any] = {}
    source = f"def encode(obj):\n    return {body}\n"
    exec(compile(source, f"<encoder {cls.__name__}>", "exec"), env, namespace)
    encoder: Callable[[Any], Any] = namespace["encode"]
    return encoder


def wire_type(cls: type[T], *, as_array: bool = False) -> type[T]:
    """Register a dataclass as a wire type (nested or message); returns it unchanged."""
    _SCHEMAS[cls] = _compile(cls, as_array)
    return cls


def wire_array(cls: type[T]) -> type[T]:
    """Register a compact wire type encoded as a positional CBOR array."""
    return wire_type(cls, as_array=True)


def _decode_fields(schema: _Schema, value: object) -> Any:
    return schema.decode(value)


def _encode_fields(schema: _Schema, obj: Any) -> Any:
    return schema.encode(obj)


def to_plain(obj: object) -> Any:
    """A registered wire object as plain CBOR-ready data (maps, arrays, scalars)."""
    return _encode_fields(_SCHEMAS[type(obj)], obj)


def from_plain(cls: type[T], value: object) -> T:
    """Check plain decoded data against ``cls``'s schema and build the object."""
    result: T = _decode_fields(_SCHEMAS[cls], value)
    return result


def schema_depth(cls: type) -> int:
    """CBOR nesting depth ``cls`` needs: anything deeper is refused by the decoder."""
    return _SCHEMAS[cls].depth


def field_names(cls: type) -> tuple[str, ...]:
    return _SCHEMAS[cls].names


class Registry:
    """The message types one side of one channel accepts, keyed by their ``type`` name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._by_name: dict[str, _Schema] = {}
        self._by_class: dict[type, str] = {}
        self.max_depth = 1

    def message(self, type_name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: register ``cls`` as a message sent as ``{"type": type_name, ...}``."""

        def register(cls: type[T]) -> type[T]:
            if type_name in self._by_name:
                raise TypeError(f"{self.name}: message type {type_name!r} registered twice")
            schema = _SCHEMAS.get(cls) or _compile(cls, as_array=False)
            _SCHEMAS[cls] = schema
            self._by_name[type_name] = schema
            self._by_class[cls] = type_name
            self.max_depth = max(self.max_depth, schema.depth)
            return cls

        return register

    @property
    def classes(self) -> tuple[type, ...]:
        return tuple(self._by_class)

    def type_name(self, cls: type) -> str:
        return self._by_class[cls]

    def encode(self, msg: object) -> bytes:
        type_name = self._by_class.get(type(msg))
        if type_name is None:
            raise TypeError(f"{type(msg).__name__} is not a {self.name} message")
        plain = _encode_fields(self._by_name[type_name], msg)
        plain["type"] = type_name
        return cbor2.dumps(plain)

    def decode(self, payload: bytes | bytearray | memoryview) -> Any:
        """Decode one message; raises only `ProtocolError` subclasses."""
        if len(payload) >= GC_PAUSE_BYTES:
            with gc_paused():
                return self._decode(payload)
        return self._decode(payload)

    def _decode(self, payload: bytes | bytearray | memoryview) -> Any:
        item = safe_loads(payload, max_depth=self.max_depth)
        if type(item) is not dict:
            raise SchemaError(f"a {self.name} message must be a map, got {_type_name(item)}")
        type_name = item.pop("type", None)
        if type_name is None:
            raise SchemaError("missing field: type")
        schema = self._by_name.get(type_name) if type(type_name) is str else None
        if schema is None:
            shown = type_name if type(type_name) is str else _type_name(type_name)
            raise UnknownMessageType(f"unknown {self.name} message type {shown!r}"[:300])
        try:
            return _decode_fields(schema, item)
        except SchemaError as exc:
            raise exc.under(type_name) from None
