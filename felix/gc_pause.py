"""`gc_paused`: the one place the process's cyclic GC is paused, for the Trio shells."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from typing import Final, TypeVar

T = TypeVar("T")

GC_PAUSE_BYTES: Final = 32 * 1024
"""Decoding a message at least this big runs with the cyclic GC paused (`decode_paused`)."""


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause CPython's automatic cyclic GC for one synchronous bulk build (never across
    an ``await``: it is global to the process).

    The collector runs a young pass every 700 net container allocations and a full
    pass over the whole heap every 100 of those while the heap grows by a quarter, so
    decoding and indexing the 100,000 records of a big snapshot would trigger ten full
    passes (about 40% of the work) that find nothing to free.  Paused, the allocations
    are counted all the same and examined by the first pass after it; nothing is leaked.
    A no-op if the GC is off already (whoever turned it off turns it back on)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def decode_paused(
    decode: Callable[[bytes | bytearray | memoryview], T], payload: bytes | bytearray | memoryview
) -> T:
    """``decode(payload)``, with the GC paused if ``payload`` is at least `GC_PAUSE_BYTES`
    (a big snapshot chunk or delta builds thousands of long-lived objects)."""
    if len(payload) < GC_PAUSE_BYTES:
        return decode(payload)
    with gc_paused():
        return decode(payload)
