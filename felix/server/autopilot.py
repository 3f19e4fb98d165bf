"""`Autopilot`: automatic membership (docs/architecture.md, "Membership").

Two jobs, each for one kind of node:

* **A non-member** (a node that booted outside ``cluster.initial_members``, or was
  removed) sends a `JoinRequest` to every peer it knows every ``join_interval_s`` until a
  configuration lists it.  Only the leader acts on one: it adds the node as a learner
  with its address.  A node that asks with a non-empty log is refused with a log line
  (it is probably a removed member restarted with its old data: readmitting it silently
  would hide a mistake); ``felix member add`` admits it explicitly.
* **The leader** promotes learners that have caught up — match within
  ``promote_lag_entries_max`` of the leader's last index, continuously for
  ``promote_stable_s`` (Consul autopilot's stabilisation time) — while keeping the voter
  count odd and at most ``voters_max``: from an odd count it promotes only when two
  learners are ready (the second follows on the next pass), so an even count lasts one
  change.  Its timers are leader-only state (`Promoter`) and start over on every new
  leadership.

* **Observers** (docs/architecture.md, "Observers"): a node with ``cluster.role =
  "observer"`` asks with ``JoinRequest.observer`` and is added as a learner marked
  observer; it is never promoted (not even with fewer than ``voters_max`` voters) and
  never counts toward a promotion pair.  One that asks again with an empty log after it
  acknowledged entries (a lost volume) is removed and added back on its next request, as
  a voter that lost its disk is, so the leader's view of its log starts over.

`removal_refusal` is the quorum check of ``felix member remove``: refuse a removal that
would leave fewer reachable voters than a majority of the remaining configuration.

Who may call: `Autopilot.run` is one task in the node's nursery; everything else is
called from it.  Data flows one way: `RaftNode.join_requests` → here → proposals.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import trio

from felix.proto.raft_messages import ConfChangeKind, ConfState, JoinRequest
from felix.raft.types import Role
from felix.server.raft_node import RaftNode
from felix.server.requests import NodeError
from felix.transport.base import UnknownPeer

log = logging.getLogger("felix.autopilot")

CHANGE_TIMEOUT_S = 5.0  # one membership proposal; the next pass retries
REFUSALS_LOGGED_MAX = 256  # joiners whose refusal was logged (bounded: one line per node)


@dataclass(frozen=True, slots=True)
class AutopilotSettings:
    enabled: bool = True
    join_interval_s: float = 1.0
    promote_stable_s: float = 5.0
    promote_lag_entries_max: int = 64
    voters_max: int = 5
    advertise_peer: str = ""  # this node's peer address, sent in its JoinRequest
    heard_within_s: float = 0.4  # a voter heard from this recently counts as reachable
    observer: bool = False  # this node asks to join as an observer (cluster.role)


def promotion(
    conf: ConfState,
    ready: Sequence[int],
    voters_max: int,
) -> int | None:
    """The learner to promote now, given the learners ``ready`` (caught up and stable,
    in promotion order), or None.  Keeps the voter count odd and ≤ ``voters_max``;
    observers are never candidates."""
    voters = len(conf.voters)
    candidates = [n for n in ready if n in conf.learners and n not in conf.observers]
    if not candidates or voters + 1 > voters_max:
        return None
    if voters % 2 == 0:
        return candidates[0]  # even (an interrupted pair, or a legacy even start): fix it
    if len(candidates) >= 2 and voters + 2 <= voters_max:
        return candidates[0]  # the first of a pair; the second follows next pass
    return None


def removal_refusal(
    conf: ConfState, node: int, leader: int, heard_recently: Collection[int]
) -> str | None:
    """Why removing ``node`` would break quorum (None: it is safe).  The remaining
    voters that are reachable (the leader, and voters heard from recently) must be a
    majority of the remaining configuration, or the cluster could not commit again."""
    if node not in conf.voters:
        return None
    remaining = [v for v in conf.voters if v != node]
    if not remaining:
        return f"node {node} is the last voter"
    reachable = [v for v in remaining if v == leader or v in heard_recently]
    if 2 * len(reachable) > len(remaining):
        return None
    unreachable = sorted(set(remaining) - set(reachable))
    return (
        f"removing node {node} would leave voters {remaining} of which only "
        f"{len(reachable)} are reachable (not {', '.join(map(str, unreachable))}): no "
        f"quorum; bring the unreachable voters back first"
    )


class Promoter:
    """Leader-only state: since when each learner has been caught up."""

    __slots__ = ("caught_up_since_s", "term")

    def __init__(self, term: int) -> None:
        self.term = term
        self.caught_up_since_s: dict[int, float] = {}

    def ready(
        self,
        conf: ConfState,
        match: Mapping[int, int],
        last_index: int,
        now_s: float,
        settings: AutopilotSettings,
    ) -> list[int]:
        """Learners caught up for at least the stabilisation time, longest first
        (observers are not tracked: they are never promoted)."""
        since = self.caught_up_since_s
        promotable = [n for n in conf.learners if n not in conf.observers]
        for learner in promotable:
            if match.get(learner, 0) + settings.promote_lag_entries_max >= last_index:
                since.setdefault(learner, now_s)
            else:
                since.pop(learner, None)
        for gone in set(since) - set(promotable):
            del since[gone]
        stable = [n for n, t in since.items() if now_s - t >= settings.promote_stable_s]
        return sorted(stable, key=lambda n: (since[n], n))


class Autopilot:
    def __init__(self, node: RaftNode, settings: AutopilotSettings) -> None:
        self.node = node
        self.settings = settings
        self._promoter: Promoter | None = None
        self._refusals_logged: set[int] = set()
        self.joins_sent = 0
        self.promotions = 0

    async def run(self) -> None:
        if not self.settings.enabled:
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._answer_joins)
            while True:
                await trio.sleep(self.settings.join_interval_s)
                await self.step()

    async def step(self) -> None:
        """One pass: ask to join if not a member; promote if leading."""
        node = self.node
        core = node.core
        if node.node_id not in core.conf.members():
            self._ask_to_join()
            return
        if core.role is not Role.LEADER:
            self._promoter = None
            return
        if self._promoter is None or self._promoter.term != core.term:
            self._promoter = Promoter(core.term)
        ready = self._promoter.ready(
            core.conf, core.match_indexes(), core.last_index, trio.current_time(), self.settings
        )
        target = promotion(core.conf, ready, self.settings.voters_max)
        if target is not None:
            log.info(
                "node %d: promoting learner %d (caught up for %.1f s; voters %s)",
                node.node_id,
                target,
                self.settings.promote_stable_s,
                list(core.conf.voters),
            )
            if await self._change(ConfChangeKind.PROMOTE, target):
                self.promotions += 1

    def _ask_to_join(self) -> None:
        node = self.node
        request = JoinRequest(
            node.node_id,
            self.settings.advertise_peer,
            node.core.last_index,
            observer=self.settings.observer,
        )
        for peer in sorted(node.known_peers()):
            try:
                node.transport.send_nowait(peer, request)
            except (trio.WouldBlock, UnknownPeer):
                continue
            self.joins_sent += 1
        if self.joins_sent and self.joins_sent % 60 == 1:
            removed = f" (removed at or before index {request.log_last_index})"
            log.info(
                "node %d is not a member%s: asked %s to add it as %s (address %s)",
                node.node_id,
                removed if request.log_last_index else "",
                ",".join(map(str, sorted(node.known_peers()))) or "nobody",
                "an observer" if request.observer else "a learner",
                self.settings.advertise_peer or "unknown",
            )

    async def _answer_joins(self) -> None:
        async for request in self.node.join_requests:
            await self._answer(request)

    async def _answer(self, request: JoinRequest) -> None:
        node = self.node
        core = node.core
        joiner = request.node_id
        if core.role is not Role.LEADER:
            return
        if joiner in core.conf.voters and request.log_last_index == 0:
            await self._remove_amnesiac(joiner)
            return
        if (
            joiner in core.conf.observers
            and request.log_last_index == 0
            and core.match_indexes().get(joiner, 0) > 0
        ):
            await self._remove_emptied_observer(joiner)
            return
        if joiner in core.conf.members():
            return
        if request.log_last_index > 0 or not request.address:
            if joiner not in self._refusals_logged and len(self._refusals_logged) < (
                REFUSALS_LOGGED_MAX
            ):
                self._refusals_logged.add(joiner)
                why = (
                    f"it holds a log up to index {request.log_last_index}: a removed member"
                    " (after `felix member remove`, stop its pod) or one restarted with old"
                    " data; to readmit it, start it with an empty data dir, or admit it"
                    f" explicitly: felix member add {joiner} --address ADDR"
                    if request.log_last_index > 0
                    else "it advertises no peer address (set cluster.advertise_peer)"
                )
                log.warning("node %d: not adding node %d: %s", node.node_id, joiner, why)
            return
        log.info(
            "node %d: adding node %d at %s as %s (it asked to join)",
            node.node_id,
            joiner,
            request.address,
            "an observer" if request.observer else "a learner",
        )
        await self._change(
            ConfChangeKind.ADD_LEARNER, joiner, request.address, observer=request.observer
        )

    async def _remove_emptied_observer(self, observer: int) -> None:
        """An observer that acknowledged entries to this leader and now asks to join
        with an empty log lost its volume (or runs without one; a new observer asking
        again before its first entry arrives has acknowledged nothing): removed (never a
        quorum risk), then added back by its next request, so its progress starts over
        from an empty log instead of a match it no longer has."""
        log.warning(
            "node %d: observer %d asks to join with an empty log (its volume was lost):"
            " removing it, then adding it back as an observer",
            self.node.node_id,
            observer,
        )
        await self._change(ConfChangeKind.REMOVE, observer)

    async def _remove_amnesiac(self, voter: int) -> None:
        """A voter asking to join with an empty log lost its disk (felix/server/
        bootstrap.py): it must not vote again before it has caught up, so it is removed,
        then added back as a learner by its next request."""
        node = self.node
        heard = node.heard_recently(self.settings.heard_within_s)
        refusal = removal_refusal(node.core.conf, voter, node.node_id, heard)
        if refusal is not None:
            log.warning(
                "node %d: voter %d lost its data but cannot be removed: %s",
                node.node_id,
                voter,
                refusal,
            )
            return
        log.warning(
            "node %d: voter %d asks to join with an empty log (its disk was lost):"
            " removing it, then adding it back as a learner",
            node.node_id,
            voter,
        )
        await self._change(ConfChangeKind.REMOVE, voter)

    async def _change(
        self, kind: ConfChangeKind, member: int, address: str = "", *, observer: bool = False
    ) -> bool:
        try:
            await self.node.change_membership(
                kind, member, address=address, observer=observer, timeout_s=CHANGE_TIMEOUT_S
            )
        except NodeError as exc:
            log.info(
                "node %d: %s of node %d not done: %s", self.node.node_id, kind.name, member, exc
            )
            return False
        return True
