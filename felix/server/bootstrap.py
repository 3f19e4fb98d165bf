"""Bootstrap or join: does the cluster exist already? (docs/architecture.md §15)

An initial member booting with an empty data dir cannot tell on its own whether this is
the cluster's first start or whether its disk was lost (a new PVC, a wiped node).  In
the second case, booting as a voter of ``cluster.initial_members`` with an empty log
would make it an amnesiac voter: it could vote for a candidate missing entries it once
acknowledged, and two such nodes could elect each other (Raft paper §5.4 assumes that a
server's log and vote survive its restarts).  So before it adopts the initial
configuration it asks its initial peers (`JoinRequest` with an empty log; every node
answers a known peer with a `JoinReply`):

* a peer with a log or a term: the cluster exists, and this node boots as a
  **non-member** (empty configuration).  Its autopilot asks to join; a leader that
  still counts it as a voter removes it first (`felix.server.autopilot`), then adds it
  back as a learner, and promotes it once caught up;
* a majority of the initial members, itself included, with nothing: the cluster's
  first start, so it bootstraps with the initial configuration;
* otherwise it keeps asking (no majority is up: no cluster could form anyway).

Who may call: `run_node`, before it builds the node; the probe's transport binds the
peer port and is closed before the node binds it again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from felix.config import NodeConfig
from felix.proto.raft_messages import JoinReply, JoinRequest
from felix.transport.base import Deliver, PeerPayload, PeerTransport, UnknownPeer

log = logging.getLogger("felix.bootstrap")

PROBE_INTERVAL_S = 0.2
WAITING_LOG_EVERY = 50  # probe rounds between "still waiting" lines (10 s)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    cluster_exists: bool
    answers: dict[int, JoinReply]

    def describe(self) -> str:
        return ", ".join(
            f"node {n}: term {r.term}, last index {r.last_index}"
            for n, r in sorted(self.answers.items())
        )


def decide(initial: tuple[int, ...], answers: dict[int, JoinReply]) -> bool | None:
    """True: the cluster exists; False: nobody has anything and a majority of the
    initial members (this node is one) said so; None: not known yet."""
    if any(r.term > 0 or r.last_index > 0 for r in answers.values()):
        return True
    if 2 * (len(answers) + 1) > len(initial):
        return False
    return None


def must_probe(config: NodeConfig, fresh: bool) -> bool:
    """Only an initial member of a multi-member cluster with an empty data dir asks."""
    initial = config.cluster.initial_members
    return fresh and len(initial) > 1 and config.node_id in initial


async def probe_cluster(
    config: NodeConfig, transport_for: Callable[[Deliver], PeerTransport]
) -> ProbeResult:
    """``transport_for`` builds a peer transport to the initial members (closed when
    the probe returns)."""
    initial = config.cluster.initial_members
    peers = set(initial) - {config.node_id}
    answers: dict[int, JoinReply] = {}

    async def deliver(sender: int, message: PeerPayload) -> None:
        if sender not in peers:
            return
        if isinstance(message, JoinReply):
            answers[sender] = message
        elif isinstance(message, JoinRequest):  # another initial member probing: "nothing"
            with contextlib.suppress(trio.WouldBlock, UnknownPeer):
                transport.send_nowait(sender, JoinReply(0, 0))

    transport = transport_for(deliver)
    request = JoinRequest(config.node_id, config.cluster.advertise_peer, 0)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        rounds = 0
        while (verdict := decide(initial, answers)) is None:
            for peer in peers:
                with contextlib.suppress(trio.WouldBlock, UnknownPeer):
                    transport.send_nowait(peer, request)
            rounds += 1
            if rounds % WAITING_LOG_EVERY == 1:
                log.info(
                    "node %d: empty data dir; asking initial members %s whether the cluster"
                    " exists (answers so far: %s)",
                    config.node_id,
                    ",".join(map(str, sorted(peers))),
                    ",".join(map(str, sorted(answers))) or "none",
                )
            await trio.sleep(PROBE_INTERVAL_S)
        nursery.cancel_scope.cancel()
    result = ProbeResult(verdict, dict(answers))
    if verdict:
        log.warning(
            "node %d: empty data dir but the cluster exists (%s): joining as a new member"
            " instead of bootstrapping (a lost disk must not vote)",
            config.node_id,
            result.describe(),
        )
    else:
        log.info("node %d: first start of the cluster (%s)", config.node_id, result.describe())
    return result
