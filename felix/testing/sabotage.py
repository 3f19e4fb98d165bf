"""Cores broken on purpose, so the checkers can prove they catch each bug.

The production core (`felix.raft.core.RaftCore`) keeps no switch production never sets.
It names each rule a sabotage breaks as a small method with the correct behaviour
(`RaftCore.respond`, `RaftCore.own_match_index`, `RaftCore.may_commit_by_counting`,
`RaftCore.may_grant_vote`); the subclasses here override one rule each, and `core_for`
combines the ones a run asks for.  The simulation (``--sabotage``,
`felix.testing.sim.run_seed`) and the scenario tests (tests/raft/harness.py) build
their cores through `core_for`.

* ``ack_before_persist``: votes and acks leave before the write they promise is durable
  (§5.1 figure 2), and a leader counts its own unpersisted entries (thesis §10.2.1).
* ``commit_old_term``: a leader commits an entry of an earlier term by counting
  replicas (§5.4.2, figure 8).
* ``double_vote``: a node grants a second vote in one term (§5.2).
* ``learner_campaigns``: a learner starts elections (thesis §4.2.1: learners never do);
  it needs membership changes (`felix.testing.sim_membership`) to have learners at all.
* ``observer_campaigns``: an observer starts elections (docs/architecture.md,
  "Observers"); it needs membership changes with observers.
"""

from __future__ import annotations

from collections.abc import Iterable

from felix.proto.raft_messages import RaftMessage, RequestVote
from felix.raft import leader
from felix.raft.core import RaftCore
from felix.raft.ready import Outbound
from felix.raft.types import Input, Propose, Role

__all__ = [
    "CORE_SABOTAGE",
    "AckBeforePersistCore",
    "CommitOldTermCore",
    "DoubleVoteCore",
    "LearnerCampaignsCore",
    "ObserverCampaignsCore",
    "core_for",
]


class AckBeforePersistCore(RaftCore):
    def respond(self, to: int, message: RaftMessage) -> None:
        self.send_now.append(Outbound(to, message))  # SABOTAGE: before the fsync

    def own_match_index(self) -> int:
        return self.log.last_index  # SABOTAGE: appended counts as persisted

    def step(self, inp: Input) -> None:
        super().step(inp)
        if isinstance(inp, Propose) and self.role is Role.LEADER:
            leader.maybe_commit(self)  # commit the unpersisted proposal at once


class CommitOldTermCore(RaftCore):
    def may_commit_by_counting(self, index: int) -> bool:
        return True  # SABOTAGE: figure 8's rule ignored


class DoubleVoteCore(RaftCore):
    def may_grant_vote(self, m: RequestVote) -> bool:
        # SABOTAGE: a second vote in one term breaks election safety.
        return m.term == self.term or super().may_grant_vote(m)


class LearnerCampaignsCore(RaftCore):
    def is_promotable(self) -> bool:
        # SABOTAGE: a learner takes itself for a candidate.
        return self.node_id in self.conf.learners or super().is_promotable()


class ObserverCampaignsCore(RaftCore):
    def is_promotable(self) -> bool:
        # SABOTAGE: an observer takes itself for a candidate.
        return self.node_id in self.conf.observers or super().is_promotable()


_CLASSES: dict[str, type[RaftCore]] = {
    "ack_before_persist": AckBeforePersistCore,
    "commit_old_term": CommitOldTermCore,
    "double_vote": DoubleVoteCore,
    "learner_campaigns": LearnerCampaignsCore,
    "observer_campaigns": ObserverCampaignsCore,
}
CORE_SABOTAGE: frozenset[str] = frozenset(_CLASSES)
_combined: dict[frozenset[str], type[RaftCore]] = {frozenset(): RaftCore}


def core_for(sabotage: Iterable[str] = ()) -> type[RaftCore]:
    """The core class breaking every rule named in ``sabotage`` (`RaftCore` if none)."""
    names = frozenset(sabotage)
    cls = _combined.get(names)
    if cls is None:
        unknown = names - CORE_SABOTAGE
        if unknown:
            raise ValueError(
                f"unknown core sabotage {sorted(unknown)} (known: {sorted(CORE_SABOTAGE)})"
            )
        bases = tuple(_CLASSES[name] for name in sorted(names))
        cls = _combined[names] = type("SabotagedCore", bases, {})
    return cls
