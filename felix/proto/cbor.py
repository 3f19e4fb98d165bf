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

Versions (docs/architecture.md, "Protocol versions"): ``Registry.encode`` and
``Registry.decode`` take the version the connection negotiated (default: the baseline,
1).  A field annotated ``Since(v)`` exists only from version ``v`` on: encoding at an
older version leaves it out, decoding at an older version refuses it (and builds the
object with its default, which such a field must have); at ``v`` or later it is an
ordinary required field.  A message type registered with ``since=v`` is refused by an
older decoder and raises `MessageTooNew` in an older encoder.  Each (class, version)
pair gets its own generated decoder and encoder, compiled on first use, so the strict
checks stay one straight-line function per message.  ``to_plain``/``from_plain`` (local
files, log entries) use every field.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import cbor2

from felix.proto.errors import MessageTooNew, NotInVersion, SchemaError, UnknownMessageType
from felix.proto.fields import (
    I64_MIN,
    ITEMS_MAX_DEFAULT,
    STR_CHARS_MAX_DEFAULT,
    U63_MAX,
    FieldCodec,
    IntRange,
    MaxItems,
    MaxLen,
    OmitDefault,
    ScalarValue,
    Since,
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
from felix.proto.versions import BASELINE

__all__ = [
    "I64_MIN",
    "ITEMS_MAX_DEFAULT",
    "STR_CHARS_MAX_DEFAULT",
    "U63_MAX",
    "FieldCodec",
    "IntRange",
    "MaxItems",
    "MaxLen",
    "OmitDefault",
    "Registry",
    "ScalarValue",
    "Since",
    "Specialised",
    "dataclass_slot_setters",
    "dumps",
    "field_decoder",
    "field_names",
    "from_plain",
    "safe_loads",
    "schema_depth",
    "schema_top",
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
    since: tuple[int, ...]  # per field: the version that added it
    top: int  # the newest version any field needs (nested ones too): at or above, this


_SCHEMAS: dict[type, _Schema] = {}  # every field: the schema as declared
_VARIANTS: dict[tuple[type, int], _Schema] = {}  # (class, version) below its ``top``
T = TypeVar("T")


def _at(cls: type, version: int | None) -> _Schema:
    """``cls``'s schema as protocol ``version`` has it (None: every field)."""
    full = _SCHEMAS[cls]
    if version is None or version >= full.top:
        return full
    schema = _VARIANTS.get((cls, version))
    if schema is None:
        schema = _VARIANTS[(cls, version)] = _compile(cls, full.as_array, version)
    return schema


def _markers(hint: Any) -> tuple[int, bool]:
    """The ``Since`` version (1 if none) and ``OmitDefault`` of a field's annotation."""
    meta: tuple[Any, ...] = typing.get_args(hint)[1:] if _annotated(hint) else ()
    since = next((m.version for m in meta if isinstance(m, Since)), BASELINE)
    return since, any(isinstance(m, OmitDefault) for m in meta)


def _annotated(hint: Any) -> bool:
    return typing.get_origin(hint) is typing.Annotated


def _codec_for(
    hint: Any, owner: str, version: int | None = None, tops: list[int] | None = None
) -> FieldCodec:
    meta: tuple[Any, ...] = ()
    if typing.get_origin(hint) is typing.Annotated:
        hint, *rest = typing.get_args(hint)
        meta = tuple(rest)
    origin, args = typing.get_origin(hint), typing.get_args(hint)

    def find(kind: type) -> Any:
        return next((m for m in meta if isinstance(m, kind)), None)

    def inner(hint: Any) -> FieldCodec:
        return _codec_for(hint, owner, version, tops)

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
        return _optional_codec(inner(non_null[0]))
    if origin is tuple:
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"{owner}: only 'tuple[X, ...]' is supported")
        limit = find(MaxItems)
        return _tuple_codec(inner(args[0]), limit.n if limit else ITEMS_MAX_DEFAULT)
    if origin is dict:
        limit = find(MaxItems)
        items_max = limit.n if limit else ITEMS_MAX_DEFAULT
        key, val = inner(args[0]), inner(args[1])
        key_limit = _text_limit(args[0])
        if args[1] is ScalarValue and key_limit is not None:
            return _record_codec(key, key_limit, val, items_max)
        return _dict_codec(key, val, items_max)
    if isinstance(hint, type) and hint in _SCHEMAS:
        nested = _at(hint, version)
        if tops is not None:
            tops.append(_SCHEMAS[hint].top)
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


def _compile(cls: type, as_array: bool, version: int | None = None) -> _Schema:
    """The schema of ``cls`` at protocol ``version`` (None: every field)."""
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
    markers = [_markers(hints[f.name]) for f in fields]
    since = tuple(m[0] for m in markers)
    _check_markers(cls, fields, markers, as_array)
    tops: list[int] = []
    codecs = tuple(
        _codec_for(hints[f.name], f"{cls.__name__}.{f.name}", version, tops) for f in fields
    )
    top = max((*since, *tops), default=BASELINE)
    active = tuple(version is None or s <= version for s in since)
    shape = _Shape(cls, names, codecs, as_array, active, tuple(m[1] for m in markers), version)
    depth = 1 + max((c.depth for c in codecs), default=0)
    decode = _generate_decoder(shape)
    encode = _generate_encoder(shape)
    return _Schema(cls, names, codecs, as_array, depth, decode, encode, since, top)


def _check_markers(
    cls: type,
    fields: tuple[dataclasses.Field[Any], ...],
    markers: list[tuple[int, bool]],
    as_array: bool,
) -> None:
    for f, (since, omit) in zip(fields, markers, strict=True):
        where = f"{cls.__name__}.{f.name}"
        if since < BASELINE:
            raise TypeError(f"{where}: Since({since}) is before version {BASELINE}")
        if since > BASELINE and _default_of(f) is dataclasses.MISSING:
            raise TypeError(f"{where}: a field added in version {since} needs a default")
        if omit and (as_array or f.default is dataclasses.MISSING):
            raise TypeError(f"{where}: OmitDefault needs a map message and a plain default")
    if as_array and [m[0] for m in markers] != sorted(m[0] for m in markers):
        raise TypeError(f"{cls.__name__}: array fields must be in the order of their versions")


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory


@dataclasses.dataclass(frozen=True, slots=True)
class _Shape:
    """What the generated functions of one class at one version are made from."""

    cls: type
    names: tuple[str, ...]
    codecs: tuple[FieldCodec, ...]
    as_array: bool
    active: tuple[bool, ...]  # per field: part of this version
    omit: tuple[bool, ...]  # per field: `OmitDefault`
    version: int | None

    def default(self, i: int) -> Any:
        f = dataclasses.fields(self.cls)[i]
        return f.default

    def factory(self, i: int) -> Any:
        f = dataclasses.fields(self.cls)[i]
        return None if f.default is not dataclasses.MISSING else f.default_factory


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


def _generate_decoder(shape: _Shape) -> Callable[[object], Any]:
    cls, names, codecs = shape.cls, shape.names, shape.codecs
    env: dict[str, Any] = {
        "cls": cls,
        "new": object.__new__,
        "SchemaError": SchemaError,
        "explain": None,
    }
    args: dict[int, str] = {}
    checks = []
    for i, codec in enumerate(codecs):
        if not shape.active[i]:
            continue
        if codec.check is not None:
            checks.append(codec.check.format(v=f"v{i}"))
            args[i] = f"v{i}"
        else:
            env[f"d{i}"] = codec.decode
            args[i] = f"d{i}(v{i})"
    required = [i for i in args if not shape.omit[i]]
    optional = [i for i in args if shape.omit[i]]
    lines = ["def decode(value):"]
    if shape.as_array:
        lines.append(f"    if type(value) is not list or len(value) != {len(args)}:")
    else:
        count = "len(value)" + "".join(f" - ({names[i]!r} in value)" for i in optional)
        lines.append(f"    if type(value) is not dict or {count} != {len(required)}:")
    lines += ["        explain(value)", "    try:"]
    if required:
        targets = "".join(f"v{i}, " for i in required)
        if shape.as_array:
            lines.append(f"        ({targets}) = value")
        else:
            items = "".join(f"value[{names[i]!r}], " for i in required)
            lines.append(f"        ({targets}) = {items}")
    for i in optional:
        to_wire = codecs[i].encode
        wire = shape.default(i) if to_wire is None else to_wire(shape.default(i))
        env[f"p{i}"] = list(wire) if type(wire) is tuple else wire  # as CBOR decodes it
        lines.append(f"        v{i} = value.get({names[i]!r}, p{i})")
    if checks:
        lines += [
            f"        if not ({' and '.join(checks)}):",
            "            raise SchemaError('')",
        ]
    values: list[str] = []
    for i in range(len(names)):  # fields this version lacks: their defaults
        if i in args:
            values.append(args[i])
        elif shape.factory(i) is not None:
            env[f"f{i}"] = shape.factory(i)
            values.append(f"f{i}()")
        else:
            env[f"k{i}"] = shape.default(i)
            values.append(f"k{i}")
    setters = dataclass_slot_setters(cls, names)
    if setters is None:
        keywords = ", ".join(f"{names[i]}={a}" for i, a in args.items())
        lines.append(f"        return cls({keywords})")
    else:
        lines.append("        obj = new(cls)")
        for i, (setter, arg) in enumerate(zip(setters, values, strict=True)):
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
        _explain(shape, value)

    env["explain"] = explain
    decoder: Callable[[object], Any] = namespace["decode"]
    return decoder


def _explain(shape: _Shape, value: object) -> None:
    """Slow path: raise the SchemaError that says exactly what is wrong with ``value``."""
    cls = shape.cls
    fields = [
        (name, codec, omit)
        for name, codec, active, omit in zip(
            shape.names, shape.codecs, shape.active, shape.omit, strict=True
        )
        if active
    ]
    names = [f[0] for f in fields]
    at = "" if shape.version is None else f" at protocol version {shape.version}"
    if shape.as_array:
        if type(value) is not list:
            raise SchemaError(f"expected array ({cls.__name__}), got {_type_name(value)}")
        if len(value) != len(names):
            raise SchemaError(
                f"{cls.__name__} needs {len(names)} items ({', '.join(names)}){at},"
                f" got {len(value)}"
            )
        items = list(value)
    else:
        if type(value) is not dict:
            raise SchemaError(f"expected map ({cls.__name__}), got {_type_name(value)}")
        missing = [n for n, _, omit in fields if n not in value and not omit]
        if missing:
            raise SchemaError(f"missing field(s): {', '.join(missing)}")
        newer = sorted(str(k) for k in value if k in shape.names and k not in names)
        if newer:
            raise SchemaError(
                f"field(s) {', '.join(newer)} added after protocol version"
                f" {shape.version}, which this connection speaks"
            )
        extra = sorted(str(k) for k in value if k not in names)
        if extra:
            raise SchemaError(f"unexpected field(s): {', '.join(extra)}")
        fields = [f for f in fields if f[0] in value]
        items = [value[name] for name, _, _ in fields]
    for (name, codec, _), item in zip(fields, items, strict=True):
        try:
            codec.decode(item)
        except SchemaError as exc:
            raise exc.under(name) from None


def _generate_encoder(shape: _Shape) -> Callable[[Any], Any]:
    env: dict[str, Any] = {}
    parts: dict[str, str] = {}
    optional: list[tuple[int, str, str]] = []
    for i, (name, codec) in enumerate(zip(shape.names, shape.codecs, strict=True)):
        if not shape.active[i]:
            continue
        if codec.encode is None:
            part = f"obj.{name}"
        else:
            env[f"e{i}"] = codec.encode
            part = f"e{i}(obj.{name})"
        if shape.omit[i]:
            env[f"k{i}"] = shape.default(i)
            optional.append((i, name, part))
        else:
            parts[name] = part
    if shape.as_array:
        body = "[" + ", ".join(parts.values()) + "]"
    else:
        body = "{" + ", ".join(f"{n!r}: {p}" for n, p in parts.items()) + "}"
    lines = ["def encode(obj):"]
    if optional:
        lines.append(f"    out = {body}")
        for i, name, part in optional:
            lines += [f"    if obj.{name} != k{i}:", f"        out[{name!r}] = {part}"]
        lines.append("    return out")
    else:
        lines.append(f"    return {body}")
    namespace: dict[str, Any] = {}
    source = "\n".join(lines) + "\n"
    exec(compile(source, f"<encoder {shape.cls.__name__}>", "exec"), env, namespace)
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


def schema_top(cls: type) -> int:
    """The newest protocol version any field of ``cls`` (nested ones too) needs: every
    version at or above it encodes ``cls`` alike (a cache of encodings keys on it)."""
    return _SCHEMAS[cls].top


def field_names(cls: type) -> tuple[str, ...]:
    return _SCHEMAS[cls].names


def field_decoder(cls: type, name: str) -> Callable[[object], Any]:
    """The compiled decoder of one field of ``cls`` (all versions alike): what a
    hand-written decoder calls so that it checks that field exactly as the schema does."""
    schema = _SCHEMAS[cls]
    return schema.codecs[schema.names.index(name)].decode


Specialised = Callable[[Callable[[object], Any]], Callable[[object], Any]]
"""Given a message type's generated decoder, a faster one for the same plain value: it
must return an equal object for every value the generated one accepts, and hand every
other value to the generated one (so the errors stay the schema's own)."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Table:
    """One registry's decoders and encoders at one protocol version."""

    decoders: dict[str, Callable[[object], Any]]
    encoders: dict[type, tuple[str, Callable[[Any], Any]]]


class Registry:
    """The message types one side of one channel accepts, keyed by their ``type`` name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._by_class: dict[type, str] = {}
        self._since: dict[str, int] = {}
        self._tables: dict[int, _Table] = {}
        self._specialised: dict[str, Specialised] = {}
        self.max_depth = 1

    def message(self, type_name: str, *, since: int = BASELINE) -> Callable[[type[T]], type[T]]:
        """Class decorator: register ``cls`` as a message sent as ``{"type": type_name, ...}``
        from protocol version ``since`` on."""

        def register(cls: type[T]) -> type[T]:
            if type(type_name) is str and type_name in self._since:
                raise TypeError(f"{self.name}: message type {type_name!r} registered twice")
            if since < BASELINE:
                raise TypeError(f"{self.name}: {type_name} since {since}, before {BASELINE}")
            schema = _SCHEMAS.get(cls) or _compile(cls, as_array=False)
            _SCHEMAS[cls] = schema
            self._since[type_name] = since
            self._by_class[cls] = type_name
            self._tables.clear()
            self.max_depth = max(self.max_depth, schema.depth)
            return cls

        return register

    def specialise(self, type_name: str, make: Specialised) -> None:
        """Decode ``type_name`` with ``make(generated decoder)`` at every version whose
        schema of it is the full one (a hot message: `Deltas` on the broker)."""
        self._specialised[type_name] = make
        self._tables.clear()

    @property
    def classes(self) -> tuple[type, ...]:
        return tuple(self._by_class)

    def type_name(self, cls: type) -> str:
        return self._by_class[cls]

    def since(self, cls: type) -> int:
        """The protocol version that added message class ``cls``."""
        return self._since[self._by_class[cls]]

    def _table(self, version: int) -> _Table:
        table = self._tables.get(version)
        if table is None:
            if type(version) is not int or version < BASELINE:
                raise ValueError(f"protocol version {version!r} does not exist")
            decoders: dict[str, Callable[[object], Any]] = {}
            encoders: dict[type, tuple[str, Callable[[Any], Any]]] = {}
            for cls, name in self._by_class.items():
                if self._since[name] <= version:
                    schema = _at(cls, version)
                    decoders[name] = schema.decode
                    make = self._specialised.get(name)
                    if make is not None and version >= _SCHEMAS[cls].top:
                        decoders[name] = make(schema.decode)
                    encoders[cls] = (name, schema.encode)
            table = self._tables[version] = _Table(decoders, encoders)
        return table

    def encode(self, msg: object, version: int = BASELINE) -> bytes:
        """``msg`` as protocol ``version`` has it; `MessageTooNew` if it has no such type."""
        try:
            entry = self._tables[version].encoders.get(type(msg))
        except KeyError:
            entry = self._table(version).encoders.get(type(msg))
        if entry is None:
            type_name = self._by_class.get(type(msg))
            if type_name is None:
                raise TypeError(f"{type(msg).__name__} is not a {self.name} message")
            raise MessageTooNew(type_name, self._since[type_name], version)
        type_name, encode = entry
        plain = encode(msg)
        plain["type"] = type_name
        return cbor2.dumps(plain)

    def decode(self, payload: bytes | bytearray | memoryview, version: int = BASELINE) -> Any:
        """Decode one message as protocol ``version`` has it; raises only `ProtocolError`
        subclasses.  Pure: a Trio shell decoding a big payload pauses the GC around it
        (`felix.gc_pause`)."""
        try:
            decoders = self._tables[version].decoders
        except KeyError:
            decoders = self._table(version).decoders
        item = safe_loads(payload, max_depth=self.max_depth)
        if type(item) is not dict:
            raise SchemaError(f"a {self.name} message must be a map, got {_type_name(item)}")
        type_name = item.pop("type", None)
        if type_name is None:
            raise SchemaError("missing field: type")
        decode = decoders.get(type_name) if type(type_name) is str else None
        if decode is None:
            if type(type_name) is str and type_name in self._since:
                raise NotInVersion(
                    f"{self.name} message type {type_name!r} needs protocol version"
                    f" {self._since[type_name]}, this connection speaks {version}"
                )
            shown = type_name if type(type_name) is str else _type_name(type_name)
            raise UnknownMessageType(f"unknown {self.name} message type {shown!r}"[:300])
        try:
            return decode(item)
        except SchemaError as exc:
            raise exc.under(type_name) from None
