"""Safe CBOR and schema-checked messages.

Theory of operation
-------------------
Every message is a frozen, slotted dataclass registered with a `Registry` (one registry
per direction of one channel, so a broker can never send a server-only message).  At
registration time the dataclass's type hints are compiled once into a list of per-field
decoder/encoder closures; decoding a payload is then

1. `safe_loads` (`felix.proto.safe_cbor`): a cbor2 decoder configured to refuse
   indefinite lengths, duplicate keys, non-string map keys and *every* semantic tag, with
   nesting capped at the depth the registry's schemas need; exactly one item (no trailing
   bytes).  Configured decoders are reused from a cache keyed by that depth (building one
   costs about as much as decoding a small message): a call takes one out and puts it
   back only after a clean decode, so threads and re-entrant calls never share one and
   one that raised is dropped;
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
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import cbor2

from felix.proto.errors import SchemaError, UnknownMessageType
from felix.proto.fields import (
    I64_MIN,
    ITEMS_MAX_DEFAULT,
    STR_CHARS_MAX_DEFAULT,
    U63_MAX,
    FieldCodec,
    IntRange,
    MaxItems,
    MaxLen,
    ScalarValue,
    _bool_decode,
    _dict_codec,
    _enum_codec,
    _int_codec,
    _optional_codec,
    _record_codec,
    _scalar_value_decode,
    _sized_codec,
    _tuple_codec,
    _type_name,
)
from felix.proto.safe_cbor import dumps, safe_loads

__all__ = [
    "I64_MIN",
    "ITEMS_MAX_DEFAULT",
    "STR_CHARS_MAX_DEFAULT",
    "U63_MAX",
    "FieldCodec",
    "IntRange",
    "MaxItems",
    "MaxLen",
    "Registry",
    "ScalarValue",
    "dataclass_slot_setters",
    "dumps",
    "field_names",
    "from_plain",
    "safe_loads",
    "schema_depth",
    "to_plain",
    "wire_array",
    "wire_type",
]

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
        """Decode one message; raises only `ProtocolError` subclasses.  Pure: a Trio
        shell decoding a big payload pauses the GC around it (`felix.gc_pause`)."""
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
