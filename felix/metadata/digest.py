"""Order-independent digest of the metadata view.

Each live record hashes to 64 bits: blake2b over the canonical CBOR of
``[kind, key, [[field, value], ...]]`` with the fields sorted by name.  The digest is the
sum of those hashes mod 2**64, so it is independent of order, can be updated per change
in O(1) (subtract the old record's hash, add the new one's), and a deleted record simply
contributes nothing.  The empty view's digest is zero.  On the wire it is 8 bytes,
big-endian.

The CBOR is defined as whatever ``cbor2.dumps([kind, key, sorted(value.items())])``
produces (that is what every deployed node hashes), but building it through cbor2 costs a
few microseconds a record, and a broker hashes every changed record and, on first view,
every record of a 100,000-shard snapshot.  So `record_payload` writes the same bytes by
hand for the types records hold, and hands anything else to cbor2:

* exact ``str``, ``bytes``, ``int`` in [-2**64, 2**64), ``bool``, ``None``, ``float``,
  and exact ``tuple``/``list``/``dict`` of those, nested (maps keep insertion order);
* `enum.StrEnum`/`enum.IntEnum` members, which cbor2 writes as their str/int data (a
  node's ``state`` is a `NodeState` on the control plane);
* everything else (bignums, other subclasses, bytearray, cycles, keys that are not
  exact ``str``, strings with lone surrogates, ...) takes the cbor2 path for the whole
  record, so the bytes are identical in every case, including the exceptions raised.

Per kind, the first record's field names compile into a straight-line encoder (the way
`felix.proto.cbor` compiles schemas): constant CBOR pieces are precomputed, the dict is
read with one subscript per field, and one ``b"".join`` builds the payload.  A record of
that kind with another field set takes the generic sorted-fields path; after 1,024 such
misses the kind's encoder is rebuilt for the newer field set (a rolling upgrade that adds
a field).  The compiled encoder finds fields by dict lookup, i.e. by equality, so a key
that is a str subclass lying about equality or order is the one case it does not vet.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable, Iterable, Mapping
from hashlib import blake2b
from typing import Any, Final

from felix.proto.cbor import dumps
from felix.proto.client_messages import Change, Record

DIGEST_BYTES: Final = 8
_MASK: Final = (1 << 64) - 1


def record_hash(kind: str, key: str, value: Mapping[str, object]) -> int:
    """64-bit hash of one live record; field order in ``value`` does not matter."""
    payload = None
    if type(kind) is str and type(key) is str and type(value) is dict:
        plan = _PLANS.get(kind)  # the hot path, inlined: most records hit their kind's plan
        if plan is not None:
            try:
                payload = plan(key, value)
            except _FALLBACK_ERRORS:
                payload = None
    if payload is None:
        payload = record_payload(kind, key, value)
    hasher = _BLAKE.copy()  # copying a prototype is cheaper than constructing a hasher
    hasher.update(payload)
    result: int = _U64(hasher.digest())[0]
    return result


def record_payload(kind: str, key: str, value: Mapping[str, object]) -> bytes:
    """The bytes `record_hash` hashes: ``cbor2.dumps([kind, key, sorted(value.items())])``."""
    payload = fast_payload(kind, key, value)
    if payload is None:
        payload = dumps([kind, key, sorted(value.items())])
    return payload


def update_digest(
    digest: int,
    kind: str,
    key: str,
    old: Mapping[str, object] | None,
    new: Mapping[str, object] | None,
) -> int:
    """The digest after one record changes from ``old`` to ``new`` (None = absent)."""
    if old is not None:
        digest -= record_hash(kind, key, old)
    if new is not None:
        digest += record_hash(kind, key, new)
    return digest & _MASK


def digest_bytes(digest: int) -> bytes:
    return digest.to_bytes(DIGEST_BYTES, "big")


def digest_int(data: bytes) -> int:
    """Inverse of `digest_bytes`; refuses anything but exactly 8 bytes."""
    if len(data) != DIGEST_BYTES:
        raise ValueError(f"a metadata digest is {DIGEST_BYTES} bytes, got {len(data)}")
    return int.from_bytes(data, "big")


def digest_of_records(records: Iterable[Change] | Mapping[tuple[str, str], Record]) -> bytes:
    """Recompute the digest from scratch (the broker's proof that its copy is equal).

    Accepts the `Change` records of a snapshot or a view dict keyed by (kind, key);
    changes whose value is None are ignored.
    """
    total = 0
    if isinstance(records, Mapping):
        for (kind, key), value in records.items():
            total += record_hash(kind, key, value)
    else:
        for change in records:
            if change.value is not None:
                total += record_hash(change.kind, change.key, change.value)
    return digest_bytes(total & _MASK)


# ---------------------------------------------------------------------------------------
# The hand-written encoder.  Every function below either returns exactly cbor2's bytes or
# raises `_Unsupported` (or an error cbor2 would also hit); `fast_payload` turns both into
# None, which sends the record down the cbor2 path.

_BLAKE: Final = blake2b(digest_size=DIGEST_BYTES)
_U64: Final = struct.Struct(">Q").unpack
_HEAD8: Final = struct.Struct(">BB").pack
_HEAD16: Final = struct.Struct(">BH").pack
_HEAD32: Final = struct.Struct(">BI").pack
_HEAD64: Final = struct.Struct(">BQ").pack
_FLOAT64: Final = struct.Struct(">Bd").pack
_U64_LIMIT: Final = 1 << 64
_PLAN_FIELDS_MAX: Final = 64  # wider records use the generic path
_PLANS_MAX: Final = 64  # kinds with a compiled encoder; more kinds use the generic path
_PLAN_MISSES_MAX: Final = 1024  # misses before a kind's encoder is rebuilt for new fields


class _Unsupported(Exception):
    """A value this encoder does not write; cbor2 encodes the record instead."""


# Lone surrogates (UnicodeError), cycles and absurd nesting (RecursionError), field names
# that do not sort (TypeError): cbor2's path then raises or succeeds exactly as before.
_FALLBACK_ERRORS: Final = (_Unsupported, UnicodeError, RecursionError, TypeError)


def _head(major: int, n: int) -> bytes:
    """The shortest CBOR head for ``n`` (a length or an unsigned value) under ``major``."""
    bits = major << 5
    if n < 24:
        return bytes((bits | n,))
    if n < 0x100:
        return _HEAD8(bits | 24, n)
    if n < 0x10000:
        return _HEAD16(bits | 25, n)
    if n < 0x100000000:
        return _HEAD32(bits | 26, n)
    return _HEAD64(bits | 27, n)


_SMALL_MAX: Final = 1024
_UINT: Final = tuple(_head(0, n) for n in range(_SMALL_MAX))
_TEXT: Final = tuple(_head(3, n) for n in range(256))
_ARRAY: Final = tuple(_head(4, n) for n in range(256))
_PAIR: Final = b"\x82"  # each sorted item is a [field, value] array
_NONE: Final = b"\xf6"
_TRUE: Final = b"\xf5"
_FALSE: Final = b"\xf4"
# cbor2 writes NaN and the infinities as half floats and every other float as a double.
_NAN: Final = b"\xf9\x7e\x00"
_INF: Final = b"\xf9\x7c\x00"
_NEG_INF: Final = b"\xf9\xfc\x00"
_INF_VALUE: Final = float("inf")


def _text(s: str) -> bytes:
    data = s.encode()
    n = len(data)
    return (_TEXT[n] if n < 256 else _head(3, n)) + data


def _int(n: int) -> bytes:
    if n >= 0:
        if n < _SMALL_MAX:
            return _UINT[n]
        if n < 0x10000:
            return _HEAD16(0x19, n)
        if n < 0x100000000:
            return _HEAD32(0x1A, n)
        if n < _U64_LIMIT:
            return _HEAD64(0x1B, n)
    elif n >= -_U64_LIMIT:
        return _head(1, -1 - n)
    raise _Unsupported  # cbor2 writes a tagged bignum


def _float(x: float) -> bytes:
    if x != x:
        return _NAN
    if x == _INF_VALUE:
        return _INF
    if x == -_INF_VALUE:
        return _NEG_INF
    return _FLOAT64(0xFB, x)


def _encode(x: object) -> bytes:
    """Any supported value, nested; the per-kind encoders call this for the rarer types."""
    t = type(x)
    if t is str:
        return _text(x)  # type: ignore[arg-type]
    if t is int:
        return _int(x)  # type: ignore[arg-type]
    encoder = _ENCODERS.get(t)
    if encoder is None:
        encoder = _subclass_encoder(t)
    return encoder(x)


def _array(items: tuple[object, ...] | list[object]) -> bytes:
    n = len(items)
    parts = [_ARRAY[n] if n < 256 else _head(4, n)]
    append = parts.append
    for item in items:
        if type(item) is int:
            append(_UINT[item] if 0 <= item < _SMALL_MAX else _int(item))
        else:
            append(_encode(item))
    return b"".join(parts)


def _map(mapping: dict[object, object]) -> bytes:
    parts = [_head(5, len(mapping))]
    for k, v in mapping.items():
        parts.append(_encode(k))
        parts.append(_encode(v))
    return b"".join(parts)


def _bytes(data: bytes) -> bytes:
    return _head(2, len(data)) + data


def _none(_: None) -> bytes:
    return _NONE


def _bool(flag: bool) -> bytes:
    return _TRUE if flag else _FALSE


def _str_data(s: str) -> bytes:
    data = str.encode(s)  # the str data, whatever the subclass overrides
    n = len(data)
    return (_TEXT[n] if n < 256 else _head(3, n)) + data


def _int_data(n: int) -> bytes:
    return _int(int.__index__(n))


_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    type(None): _none,
    bool: _bool,
    float: _float,
    tuple: _array,
    list: _array,
    dict: _map,
    bytes: _bytes,
}
_ENCODERS_MAX: Final = 256


def _subclass_encoder(t: type) -> Callable[[Any], bytes]:
    """Enum members of str/int are written as their str/int data, as cbor2 does."""
    encoder: Callable[[Any], bytes]
    if issubclass(t, enum.StrEnum):
        encoder = _str_data
    elif issubclass(t, enum.IntEnum):
        encoder = _int_data
    else:
        raise _Unsupported
    if len(_ENCODERS) < _ENCODERS_MAX:
        _ENCODERS[t] = encoder
    return encoder


def _generic_payload(kind: str, key: str, value: dict[str, object]) -> bytes:
    """Any record whose kind has no encoder for its field set."""
    names = sorted(value)
    n = len(names)
    parts = [b"\x83", _text(kind), _text(key), _ARRAY[n] if n < 256 else _head(4, n)]
    for name in names:
        if type(name) is not str:
            raise _Unsupported
        parts.append(_PAIR)
        parts.append(_text(name))
        parts.append(_encode(value[name]))
    return b"".join(parts)


_Plan = Callable[[str, dict[str, object]], "bytes | None"]
_PLANS: dict[str, _Plan] = {}
_PLAN_MISSES: dict[str, int] = {}


def _plan_env(kind_prefix: bytes) -> dict[str, Any]:
    """The globals of a generated record encoder (`_compile_plan`)."""
    return {
        "KH": tuple(kind_prefix + _TEXT[n] for n in range(256)),
        "KP": kind_prefix,
        "head": _head,
        "UINT": _UINT,
        "SMALL": _SMALL_MAX,
        "enc": _encode,
        "INT": _int,
        "type": type,
        "len": len,
        "str": str,
        "KeyError": KeyError,
        "NONE": _NONE,
        "TRUE": _TRUE,
        "FALSE": _FALSE,
        "bool": bool,
    }


def _field_lines(i: int) -> list[str]:
    """Generated source: field ``i`` (value ``x{i}``) as head ``a{i}`` and body ``b{i}``."""
    return [
        f"    t = type(x{i})",
        "    if t is str:",
        f"        b{i} = x{i}.encode()",
        f"        n = len(b{i})",
        f"        a{i} = T{i}[n] if n < 24 else P{i} + head(3, n)",
        "    elif t is int:",
        f"        a{i} = P{i}",
        f"        b{i} = UINT[x{i}] if 0 <= x{i} < SMALL else INT(x{i})",
        f"    elif x{i} is None:",
        f"        a{i} = P{i}",
        f"        b{i} = NONE",
        "    elif t is bool:",
        f"        a{i} = P{i}",
        f"        b{i} = TRUE if x{i} else FALSE",
        "    else:",
        f"        a{i} = P{i}",
        f"        b{i} = enc(x{i})",
    ]


def _compile_plan(kind: str, names: list[str]) -> _Plan:
    """A straight-line encoder for records of ``kind`` with exactly the fields ``names``.

    It returns None when a record has other fields.  Field names reach the generated
    source only as indexes into ``env``, never as text.  Each field contributes two
    pieces: the constant ``[name,`` prefix merged with the value's head where the head
    is known, then the value's bytes.
    """
    names = sorted(names)
    count = len(names)
    kind_prefix = b"\x83" + _text(kind)
    env = _plan_env(kind_prefix)
    lines = [
        "def plan(key, value):",
        f"    if len(value) != {count}:",
        "        return None",
        "    try:",
        "        " + "".join(f"x{i}, " for i in range(count)) + "= "
        + "".join(f"value[K{i}], " for i in range(count)),
        "    except KeyError:",
        "        return None",
        "    kb = key.encode()",
        "    n = len(kb)",
        "    kh = KH[n] if n < 256 else KP + head(3, n)",
    ]  # fmt: skip
    parts = ["kh", "kb"]
    for i, name in enumerate(names):
        prefix = (_ARRAY[count] if i == 0 else b"") + _PAIR + _text(name)
        env[f"K{i}"] = name
        env[f"P{i}"] = prefix
        env[f"T{i}"] = tuple(prefix + _TEXT[n] for n in range(24))
        lines += _field_lines(i)
        parts += [f"a{i}", f"b{i}"]
    lines.append(f"    return b''.join(({', '.join(parts)},))")
    namespace: dict[str, Any] = {}
    source = "\n".join(lines) + "\n"
    exec(compile(source, f"<record encoder {kind[:40]!r}>", "exec"), env, namespace)
    plan: _Plan = namespace["plan"]
    return plan


def _plan_for(kind: str, value: dict[str, object]) -> _Plan | None:
    """Compile (or recompile, after many misses) the encoder for ``kind``, if it may have one."""
    if kind not in _PLANS and len(_PLANS) >= _PLANS_MAX:
        return None
    if not 0 < len(value) <= _PLAN_FIELDS_MAX or not all(type(n) is str for n in value):
        return None
    plan = _compile_plan(kind, list(value))
    _PLANS[kind] = plan
    _PLAN_MISSES[kind] = 0
    return plan


def fast_payload(kind: str, key: str, value: Mapping[str, object]) -> bytes | None:
    """`record_payload` without cbor2: its exact bytes, or None when cbor2 must do it."""
    if type(kind) is not str or type(key) is not str or type(value) is not dict:
        return None
    try:
        plan = _PLANS.get(kind)
        if plan is None:
            plan = _plan_for(kind, value)
        if plan is not None:
            payload = plan(key, value)
            if payload is not None:
                return payload
            misses = _PLAN_MISSES.get(kind, 0) + 1
            _PLAN_MISSES[kind] = misses
            if misses >= _PLAN_MISSES_MAX:  # the kind's fields changed (e.g. an upgrade)
                _PLAN_MISSES[kind] = 0
                _plan_for(kind, value)
        return _generic_payload(kind, key, value)
    except _FALLBACK_ERRORS:
        return None
