"""``felix_raft_elections_total{cause}`` tells an election that followed a timeout from a
leadership transfer's (thesis §3.10), and ``felix_raft_pre_vote_rounds_total`` counts
the pre-votes (thesis §9.6) that changed nothing: what a rolling restart asserts on."""

from __future__ import annotations

import trio

from felix.server.raft_node import RaftNode
from felix.testing.cluster import TICK_S, TrioCluster


def elections(node: RaftNode | None, cause: str) -> float:
    assert node is not None
    value = node.metrics.registry.get_sample_value("felix_raft_elections_total", {"cause": cause})
    assert value is not None
    return value


def pre_votes(node: RaftNode | None) -> float:
    assert node is not None
    value = node.metrics.registry.get_sample_value("felix_raft_pre_vote_rounds_total")
    assert value is not None
    return value


async def test_elections_by_cause(autojump_clock: trio.abc.Clock) -> None:
    async with trio.open_nursery() as nursery:
        cluster = TrioCluster(nursery, [1, 2, 3], seed=7)
        await cluster.start_all()
        first = await cluster.wait_for_leader()
        sims = list(cluster.running())
        # The first leader won an election it started after a timeout, behind a pre-vote.
        assert elections(first.node, "timeout") >= 1 and pre_votes(first.node) >= 1
        assert sum(elections(s.node, "transfer") for s in sims) == 0
        timeouts = sum(elections(s.node, "timeout") for s in sims)

        target = next(s for s in sims if s is not first)
        assert first.node is not None
        await first.node.transfer_leader(target.node_id)
        assert (await cluster.wait_for_leader()) is target
        assert elections(target.node, "transfer") == 1  # no pre-vote: the leader asked
        assert sum(elections(s.node, "timeout") for s in sims) == timeouts

        # A follower cut off times out again and again, but its pre-votes reach nobody:
        # no election, no term change.
        follower = next(s for s in sims if s is not target)
        cluster.network.isolate(follower.node_id, {1, 2, 3})
        before = pre_votes(follower.node)
        with trio.fail_after(30):
            while pre_votes(follower.node) < before + 3:
                await trio.sleep(TICK_S)
        assert sum(elections(s.node, "timeout") for s in sims) == timeouts
        nursery.cancel_scope.cancel()
