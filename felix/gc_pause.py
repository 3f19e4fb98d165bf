"""`gc_paused`: the one place the process's cyclic GC is paused, for the Trio shells."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


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
