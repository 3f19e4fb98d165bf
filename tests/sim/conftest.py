"""Replay support: ``FELIX_SIM_SEED=<n> pytest tests/sim`` runs only that seed."""

from __future__ import annotations

import os

import pytest

REPLAY_SEED_ENV = "FELIX_SIM_SEED"


def replay_seed() -> int | None:
    raw = os.environ.get(REPLAY_SEED_ENV)
    return int(raw) if raw else None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """In replay mode everything but the replay test is skipped."""
    if replay_seed() is None:
        return
    skip = pytest.mark.skip(reason=f"{REPLAY_SEED_ENV} is set: replaying one seed only")
    for item in items:
        if "tests/sim" in str(item.path) and item.name != "test_replay_seed":
            item.add_marker(skip)
