"""Order-independent digest of the metadata view.

Each live record hashes to 64 bits: blake2b over the canonical CBOR of
``[kind, key, [[field, value], ...]]`` with the fields sorted by name.  The digest is the
sum of those hashes mod 2**64, so it is independent of order, can be updated per change
in O(1) (subtract the old record's hash, add the new one's), and a deleted record simply
contributes nothing.  The empty view's digest is zero.  On the wire it is 8 bytes,
big-endian.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from hashlib import blake2b
from typing import Final

from felix.proto.cbor import dumps
from felix.proto.client_messages import Change, Record

DIGEST_BYTES: Final = 8
_MASK: Final = (1 << 64) - 1


def record_hash(kind: str, key: str, value: Mapping[str, object]) -> int:
    """64-bit hash of one live record; field order in ``value`` does not matter."""
    payload = dumps([kind, key, sorted(value.items())])
    return int.from_bytes(blake2b(payload, digest_size=DIGEST_BYTES).digest(), "big")


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
