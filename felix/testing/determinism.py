"""Reproducible Trio runs: a seeded scheduler (docs/architecture.md §10, tier B).

Trio shuffles the order of runnable tasks on purpose, so MockClock alone does not make a
run repeatable.  Trio's own scheduler-determinism test shows the switch below; it is
private API, kept in this one file so a Trio upgrade breaks exactly one place.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio._core._run as _trio_run


@contextmanager
def seeded_trio_scheduler(seed: int) -> Iterator[None]:
    saved_flag = _trio_run._ALLOW_DETERMINISTIC_SCHEDULING
    saved_state = _trio_run._r.getstate()
    _trio_run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]  # Final in stubs
    _trio_run._r.seed(seed)
    try:
        yield
    finally:
        _trio_run._ALLOW_DETERMINISTIC_SCHEDULING = saved_flag  # type: ignore[misc]
        _trio_run._r.setstate(saved_state)
