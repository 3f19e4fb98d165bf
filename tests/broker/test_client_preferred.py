"""Preferred endpoints (observers first, voters as the fallback): the order of attempts
(`EndpointPlan`, pure) and brokers against a real in-process 3-node control plane on
loopback sockets, with two of its voters standing in for the preferred tier.

* the spread over the preferred tier follows ``node_id``; the fallback tier is tried
  only after every preferred endpoint failed in a row; after a session on a fallback
  endpoint ends, the preferred tier comes first again, from the client's own pick;
* bad endpoints are refused with an error that names the list and the entry;
* a broker connects to a preferred node; when it is stopped, the broker resumes from
  its version on the other preferred node, or on a fallback node when no preferred one
  is left (no second snapshot); once a preferred node is back, a reconnect (or the
  probe) takes it back there, still without a snapshot.
"""

from __future__ import annotations

import random
import socket
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from felix.broker import MetadataView, open_metadata_client
from felix.broker.client import endpoint_order
from felix.broker.endpoints import EndpointPlan, parse_endpoint, parse_endpoints
from tests.broker.harness import ControlPlane, control_plane, wait_for
from tests.broker.test_client import FAST, caught_up

VOTERS = [("v", 1), ("v", 2), ("v", 3)]
OBSERVERS = [("o", 1), ("o", 2)]


def attempts(plan: EndpointPlan, outcomes: str) -> list[tuple[str, int]]:
    """The endpoints tried, one per outcome: ``f`` failed, ``e`` a session that ended."""
    tried = []
    for outcome in outcomes:
        tried.append(plan.next())
        plan.failed() if outcome == "f" else plan.ended()
    return tried


def test_brokers_spread_over_the_preferred_tier_by_node_id() -> None:
    firsts = Counter(
        EndpointPlan(VOTERS, OBSERVERS, n, random.Random(n)).next() for n in range(300)
    )
    assert set(firsts) == set(OBSERVERS) and min(firsts.values()) > 120
    for n in range(20):  # the same pick as the plain rule, whatever the rng
        plan = EndpointPlan(VOTERS, OBSERVERS, n, random.Random(n + 7))
        assert plan.next() == endpoint_order(OBSERVERS, n, random.Random(0))[0]


def test_fallback_only_after_every_preferred_failed_then_preferred_again() -> None:
    plan = EndpointPlan(VOTERS, OBSERVERS, 5, random.Random(1))
    home, other = plan.preferred
    tried = attempts(plan, "ffffffff")
    assert tried[:2] == [home, other]
    assert sorted(tried[2:5]) == sorted(VOTERS)  # each voter once, in the client's order
    assert tried[5:8] == [home, other, tried[2]]  # round again, preferred first
    # Connected to a voter; once that session ends, the preferred tier comes first, from
    # the client's own pick (brokers spread again over the observers that are back).
    plan = EndpointPlan(VOTERS, OBSERVERS, 5, random.Random(1))
    tried = attempts(plan, "fffe" + "f")
    assert tried[2] in VOTERS and tried[3] == plan.fallback[1] and tried[4] == home
    assert plan.next() == other


def test_a_session_on_a_preferred_node_moves_on_to_the_next_preferred() -> None:
    plan = EndpointPlan(VOTERS, OBSERVERS, 9, random.Random(2))
    home, other = plan.preferred
    assert attempts(plan, "eef") == [home, other, home]
    assert plan.next() == other and plan.on_preferred
    # A node that accepts and drops before saying anything is a failed attempt: it
    # cannot hold a broker in the preferred tier (the loop reports it as `failed`).
    assert attempts(plan, "f")[0] == other and not plan.on_preferred


def test_without_preferred_endpoints_it_is_the_plain_rotation() -> None:
    plan = EndpointPlan(VOTERS, [], 4, random.Random(3))
    order = endpoint_order(VOTERS, 4, random.Random(3))
    assert plan.preferred == [] and plan.fallback == order
    assert attempts(plan, "fefefe") == order + order


def test_an_endpoint_in_both_lists_is_used_once_in_the_preferred_tier() -> None:
    plan = EndpointPlan([*VOTERS, OBSERVERS[0]], [*OBSERVERS, OBSERVERS[1]], 3, random.Random(4))
    assert sorted(plan.preferred) == OBSERVERS and sorted(plan.fallback) == VOTERS
    tried = attempts(plan, "f" * 10)
    assert sorted(tried[:5]) == sorted(OBSERVERS + VOTERS)  # one round: each once
    only = EndpointPlan(OBSERVERS, OBSERVERS, 3, random.Random(4))  # nothing to fall back to
    assert only.fallback == [] and sorted(attempts(only, "ffff")) == sorted(OBSERVERS * 2)
    assert parse_endpoints(["a:1", " a:1", "[::1]:2"]) == [("a", 1), ("::1", 2)]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"preferred_endpoints": ["obs-0"]}, "preferred endpoint: endpoint 'obs-0' is not"),
        ({"preferred_endpoints": ["o:0"]}, "port 0 is not within 1..65535"),
        ({"preferred_endpoints": ["o:70000"]}, "port 70000 is not within"),
        ({"preferred_endpoints": ["o:x"]}, "'o:x' is not host:port"),
        ({"preferred_endpoints": [":9"]}, "':9' is not host:port"),
        ({"preferred_endpoints": ["[]:9"]}, "'\\[\\]:9' has no host"),
        ({"preferred_endpoints": "o:1,o:2"}, "must be a list of host:port, not the string"),
        ({"preferred_endpoints": [7]}, "preferred endpoint 7 is not a host:port string"),
        ({"endpoints": ["v:1", "bad"]}, "^endpoint: endpoint 'bad' is not host:port"),
        ({"endpoints": []}, "at least one control-plane endpoint"),
        ({"preferred_probe_s": 0}, "preferred_probe_s must be > 0"),
    ],
)
async def test_bad_endpoints_are_refused_before_connecting(
    kwargs: dict[str, Any], error: str
) -> None:
    args: dict[str, Any] = {"endpoints": ["127.0.0.1:1"], "preferred_endpoints": ["o:1"]}
    with pytest.raises(ValueError, match=error):
        async with open_metadata_client(**(args | kwargs), node_id=None):
            raise AssertionError("connected")


def test_parse_endpoint_keeps_ipv6_hosts() -> None:
    assert parse_endpoint("[fd00::1]:7000") == ("fd00::1", 7000)
    assert parse_endpoint("felix-observer-0.felix-observer-peers:7001")[1] == 7001


# --- against real nodes --------------------------------------------------------------


def closed_port() -> str:
    """A loopback endpoint nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@asynccontextmanager
async def broker(
    cp: ControlPlane, preferred: list[str], **kwargs: Any
) -> AsyncIterator[MetadataView]:
    async with open_metadata_client(
        cp.endpoints, preferred_endpoints=preferred, node_id=10, address="10.9.0.10:9092",
        rng=random.Random(10), **(FAST | kwargs),
    ) as view:  # fmt: skip
        yield view


async def writes(cp: ControlPlane, *values: int) -> None:
    for value in values:
        await cp.write("set_config", {"name": "streams_max", "value": value})


def resumed(view: MetadataView) -> bool:
    s = view.stats
    return s.snapshots == 1 and s.resyncs == 0 and s.digest_mismatches == 0


async def test_a_broker_stays_on_the_preferred_tier_while_one_answers() -> None:
    async with control_plane(seed=5) as cp:
        preferred = cp.endpoints[1:]  # nodes 2 and 3 stand in for two observers
        async with broker(cp, preferred) as view:
            assert view.plan is not None
            home = cp.node_at(view.endpoint)
            host, port = view.plan.preferred[0]
            assert view.endpoint == f"{host}:{port}" and home in (2, 3)
            await writes(cp, 100, 101)
            await caught_up(cp, view)
            await cp.stop(home)
            await writes(cp, 102, 103)
            await caught_up(cp, view)
            assert cp.node_at(view.endpoint) == 5 - home  # the other preferred node
            assert view.stats.reconnects == 1 and resumed(view)
            assert view.config["streams_max"] == 103


async def test_fallback_to_a_voter_then_back_to_the_preferred_tier() -> None:
    async with control_plane(seed=6) as cp:
        preferred = [closed_port(), cp.endpoints[2]]  # one observer down, node 3 up
        async with broker(cp, preferred, preferred_probe_s=None) as view:
            assert cp.node_at(view.endpoint) == 3
            await writes(cp, 100)
            await caught_up(cp, view)
            # No preferred node answers: the broker resumes on a voter (1 or 2).
            await cp.stop(3)
            await writes(cp, 101, 102)
            await caught_up(cp, view)
            fallback = cp.node_at(view.endpoint)
            assert fallback in (1, 2) and resumed(view)
            # Node 3 is back; the broker stays where it is until that session ends ...
            await cp.serve(3)
            await writes(cp, 103)
            await caught_up(cp, view)
            assert cp.node_at(view.endpoint) == fallback
            # ... and its next session is on the preferred tier again, from its version.
            await cp.stop(fallback)
            await writes(cp, 104)
            await caught_up(cp, view)
            assert cp.node_at(view.endpoint) == 3 and resumed(view)
            assert view.config["streams_max"] == 104


async def test_the_probe_takes_a_broker_back_once_a_preferred_node_answers() -> None:
    async with control_plane(seed=7) as cp:
        preferred = [cp.endpoints[2]]
        async with broker(cp, preferred, preferred_probe_s=0.05) as view:
            assert cp.node_at(view.endpoint) == 3
            await cp.stop(3)
            await writes(cp, 100)
            await caught_up(cp, view)
            assert cp.node_at(view.endpoint) in (1, 2)
            await cp.serve(3)  # the voter keeps serving; the probe finds node 3
            await wait_for(lambda: cp.node_at(view.endpoint) == 3)
            await writes(cp, 101)
            await caught_up(cp, view)
            assert resumed(view) and view.stats.reconnects == 2
            assert view.config["streams_max"] == 101
