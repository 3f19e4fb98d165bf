"""A flat view of the metadata as records, for `felix ctl` and the tests.

(The broker cache keeps typed tables of its own, `felix.broker.cache`; this is the
plain reference model the tests compare it with.)

The view is a dict keyed by ``(kind, key)``; `apply_changes` is the one way to advance
it, and it keeps the digest up to date incrementally, so a broker checks each delta's
``digest`` without rehashing its whole copy.
"""

from __future__ import annotations

from collections.abc import Iterable

from felix.metadata.digest import update_digest
from felix.proto.client_messages import Change, Record

RecordView = dict[tuple[str, str], Record]


def apply_changes(records: RecordView, changes: Iterable[Change], digest: int = 0) -> int:
    """Apply ``changes`` in order to ``records`` in place; return the updated digest.

    ``digest`` is the view's digest before the changes (an int, see `digest.digest_int`).
    A value of None deletes the record (deleting an absent record is a no-op).
    """
    for change in changes:
        ident = (change.kind, change.key)
        old = records.get(ident)
        digest = update_digest(digest, change.kind, change.key, old, change.value)
        if change.value is None:
            records.pop(ident, None)
        else:
            records[ident] = change.value
    return digest


def view_of(records: Iterable[Change]) -> RecordView:
    """A view built from snapshot records (e.g. `MetadataState.records()`)."""
    view: RecordView = {}
    apply_changes(view, records)
    return view
