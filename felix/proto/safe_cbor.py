"""Safe CBOR: exactly one item, every feature Felix does not use refused.

PURE (``tests/test_layering.py``).  `safe_loads` decodes with a configured cbor2
decoder, reused from a cache keyed by the depth cap (see `_DECODERS`: a decoder carries
no state from one item to the next, one that raised is dropped, and threads never share
one): indefinite lengths, duplicate keys, non-string map keys and *every* semantic tag
refused, nesting capped at a given depth, no trailing bytes; only `DecodeError` leaves
it (docs/architecture.md §11).
"""

from __future__ import annotations

import io
from typing import Final

import cbor2

from felix.proto.errors import DecodeError


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
