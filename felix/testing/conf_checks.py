"""Membership safety, checked while the simulation changes the configuration.

Why a module: membership changes (thesis ch. 4, single-server changes §4.1) add their
own ways to break Raft, and they need a model of what each node's configuration *must*
be that does not trust the core's own bookkeeping (`felix.raft.membership`): the bug this
was written for is exactly the core holding the wrong configuration.

The model: every CONFIG entry is created by one leader accepting one `ConfChange`; the
configuration it gives is the change applied to that leader's configuration then
(`Members.after`), recorded per ``(index, term)`` (one entry, by log matching).  A node's
configuration must then be the one given by the last CONFIG entry in its log, else its
snapshot's ``ConfState``, else what it booted with (`MembershipChecker.check_conf`).  The
node's log is followed from the Ready batches it writes, so checks run where the view is
exact: when a batch is taken (every entry the core holds is in it or an earlier one).

Invariants (names in `felix.testing.checkers.INVARIANTS`):

* ``membership``: the core's configuration (and every snapshot's) is the model's.
* ``learner_stays_learner``: a node the log made a learner reports itself a learner
  until PROMOTE is in its log -- the issue-14 joining-node bug.
* ``learner_campaigns``: no node that was never a voter asks for (pre-)votes.
* ``removed_never_leads``: a leader that knows its removal committed steps down, and no
  node becomes leader of a configuration whose committed state excludes it.
* ``election_quorum`` / ``commit_quorum``: a leader won the votes of, and commits on, a
  majority of its current configuration's voters (never a learner's).
* ``single_change``: each configuration differs from the previous by at most one voter,
  so any two majorities of consecutive configurations overlap (thesis §4.1).
* ``voters_nonempty``: no change leaves a configuration without voters.

Observers (docs/architecture.md, "Observers"; ADD_LEARNER marked ``observer``):

* ``observer_never_voter``: no configuration (proposed, or held by a core) has a node
  that was ever added as an observer among its voters;
* ``observer_campaigns``: an observer never asks for (pre-)votes;
* ``observer_grants_vote``: an observer never grants a vote (no candidate should ask
  one, and none may count one toward an election);
* ``observer_promoted``: a leader never accepts a PROMOTE of an observer (the
  membership layer refuses it: `felix.raft.membership.check_change`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from felix.proto.raft_messages import (
    ConfChange,
    ConfChangeKind,
    ConfState,
    Entry,
    EntryKind,
    SnapshotMeta,
)
from felix.testing.checkers import ClusterChecker

__all__ = ["Members", "MembershipChecker"]


@dataclass(frozen=True, slots=True)
class Members:
    """A configuration as sets (order and addresses do not matter here)."""

    voters: frozenset[int]
    learners: frozenset[int]
    observers: frozenset[int] = frozenset()  # a subset of ``learners``

    @classmethod
    def of(cls, conf: ConfState) -> Members:
        return cls(frozenset(conf.voters), frozenset(conf.learners), frozenset(conf.observers))

    def after(self, change: ConfChange) -> Members | None:
        """The configuration ``change`` gives (None: it does not apply to this one)."""
        node, voters, learners, observers = change.node, self.voters, self.learners, self.observers
        if change.observer and change.kind is not ConfChangeKind.ADD_LEARNER:
            return None
        if change.kind is ConfChangeKind.ADD_LEARNER:
            if node in voters or node in learners:
                return None
            return Members(
                voters, learners | {node}, observers | {node} if change.observer else observers
            )
        if change.kind is ConfChangeKind.PROMOTE:
            if node not in learners or node in observers:
                return None
            return Members(voters | {node}, learners - {node}, observers)
        if node not in voters and node not in learners:
            return None
        return Members(voters - {node}, learners - {node}, observers - {node})

    def majority(self, holders: set[int]) -> bool:
        return len(holders & self.voters) * 2 > len(self.voters)

    def __str__(self) -> str:
        text = f"voters={sorted(self.voters)} learners={sorted(self.learners)}"
        return text + (f" observers={sorted(self.observers)}" if self.observers else "")


@dataclass(slots=True)
class _LogView:
    """The configuration-relevant part of one node's log: the base (snapshot or boot
    configuration) and the CONFIG entries after it, as ``(index, term)``."""

    base: Members
    from_snapshot: bool
    records: list[tuple[int, int]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Pending:
    """A leader check to run at the node's next batch (when its view is exact)."""

    kind: str  # "election" or "commit"
    term: int
    last_index: int  # the leader's log end then: the configuration is the one up to it
    commit: int
    holders: frozenset[int] = frozenset()  # commit: who held the committed index


class MembershipChecker:
    """Fed by the simulated world; reports through `ClusterChecker.fail`."""

    def __init__(self, checker: ClusterChecker, initial: ConfState) -> None:
        self.checker = checker
        self.conf_of: dict[tuple[int, int], Members] = {}
        self.views: dict[int, _LogView] = {}
        self.snapshot_conf: dict[tuple[int, int], Members] = {}
        self.ever_voters: set[int] = set(initial.voters)
        self.ever_observers: set[int] = set(initial.observers)
        self.removed_at: dict[int, int] = {}  # node -> index of its committed removal
        self.removal_of: dict[tuple[int, int], int] = {}  # REMOVE entry -> the node
        self.committed = Members.of(initial)  # the newest configuration anyone applied
        self.committed_index = 0
        self.pending: dict[int, list[_Pending]] = {}

    # ------------------------------------------------------------------ the model

    def _conf_of(self, node: int, record: tuple[int, int]) -> Members:
        conf = self.conf_of.get(record)
        if conf is None:
            detail = f"node {node} holds CONFIG entry {record} that no leader made"
            self.checker.fail("membership", detail)
            return Members(frozenset(), frozenset())  # (only with the check disabled)
        return conf

    def latest(self, node: int) -> Members:
        view = self.views[node]
        return self._conf_of(node, view.records[-1]) if view.records else view.base

    def upto(self, node: int, index: int) -> Members:
        """The configuration once ``node``'s log up to ``index`` is applied."""
        view = self.views[node]
        conf = view.base
        for record in view.records:
            if record[0] > index:
                break
            conf = self._conf_of(node, record)
        return conf

    # ------------------------------------------------------------------ the node's log

    def on_boot(
        self,
        node: int,
        conf: ConfState,
        snapshot: SnapshotMeta | None,
        entries: Sequence[Entry],
    ) -> None:
        """A (re)start from what the WAL recovered."""
        base = Members.of(snapshot.conf if snapshot is not None else conf)
        view = _LogView(base, snapshot is not None)
        view.records = [(e.index, e.term) for e in entries if e.kind is EntryKind.CONFIG]
        self.views[node] = view
        self.pending.pop(node, None)

    def on_batch(self, node: int, snapshot: SnapshotMeta | None, entries: Sequence[Entry]) -> None:
        """The node wrote this batch: an installed snapshot replaces its whole log
        (§7), entries replace the log from their first index on (§5.3)."""
        view = self.views[node]
        if snapshot is not None:
            known = self.snapshot_conf.get((snapshot.index, snapshot.term))
            got = Members.of(snapshot.conf)
            if known is not None and known != got:
                self.checker.fail(
                    "membership",
                    f"node {node} installed snapshot {snapshot.index}/{snapshot.term} "
                    f"with {got}, taken with {known}",
                )
            view.base, view.from_snapshot, view.records = got, True, []
        if entries:
            start = entries[0].index
            while view.records and view.records[-1][0] >= start:
                view.records.pop()
            view.records += [(e.index, e.term) for e in entries if e.kind is EntryKind.CONFIG]

    def on_snapshot_taken(self, node: int, meta: SnapshotMeta) -> None:
        """A snapshot's ``ConfState`` is the configuration at its index."""
        expected, got = self.upto(node, meta.index), Members.of(meta.conf)
        if got != expected:
            self.checker.fail(
                "membership",
                f"node {node} took snapshot {meta.index} with {got}, its log gives {expected}",
            )
        self.snapshot_conf[(meta.index, meta.term)] = got

    def check_conf(self, node: int, conf: ConfState, term: int, leader_commit: int | None) -> None:
        """Right after the node's batch is taken: its configuration is its log's; then
        the leader checks deferred to this moment (``leader_commit``: it leads, with
        this commit index)."""
        got, expected = Members.of(conf), self.latest(node)
        self._no_observer_votes(f"node {node} holds", got)
        view = self.views[node]
        if node in expected.learners and node in got.voters:
            how = "a snapshot" if view.from_snapshot else "the log"
            self.checker.fail(
                "learner_stays_learner",
                f"node {node} is a learner by {how} ({expected}) but reports itself a "
                f"voter ({got}) before any PROMOTE",
            )
        if got != expected:
            self.checker.fail(
                "membership", f"node {node} has {got}, the last CONFIG in its log gives {expected}"
            )
        for check in self.pending.pop(node, ()):
            if check.term == term:
                self._leader_check(node, check)
        if leader_commit is not None:
            self._check_leader(node, term, leader_commit)

    # ------------------------------------------------------------------ leaders

    def on_new_leader(self, node: int, term: int, last_index: int, commit: int) -> None:
        self.pending.setdefault(node, []).append(_Pending("election", term, last_index, commit))

    def on_leader_commit(
        self, node: int, term: int, commit: int, last_index: int, holders: set[int]
    ) -> None:
        check = _Pending("commit", term, last_index, commit, frozenset(holders))
        self.pending.setdefault(node, []).append(check)

    def _check_leader(self, node: int, term: int, commit: int) -> None:
        """A leader whose removal it knows committed has stepped down (§4.2.2)."""
        view = self.views[node]
        latest_index = view.records[-1][0] if view.records else 0
        if node not in self.latest(node).voters and latest_index <= commit:
            self.checker.fail(
                "removed_never_leads",
                f"node {node} still leads term {term} after its removal committed "
                f"(index {latest_index}, commit {commit})",
            )

    def _leader_check(self, node: int, check: _Pending) -> None:
        conf = self.upto(node, check.last_index)
        if check.kind == "commit":
            if not conf.majority(set(check.holders)):
                self.checker.fail(
                    "commit_quorum",
                    f"leader {node} of term {check.term} committed {check.commit} held by "
                    f"{sorted(check.holders)}, not a majority of {conf}",
                )
            return
        votes = {
            v for v in conf.voters if v == node or self.checker.vote_of.get((v, check.term)) == node
        }
        if not conf.majority(votes):
            self.checker.fail(
                "election_quorum",
                f"node {node} leads term {check.term} with votes of {sorted(votes)} only, "
                f"not a majority of {conf}",
            )
        removed = self.removed_at.get(node)
        if removed is not None and check.commit >= removed:
            self.checker.fail(
                "removed_never_leads",
                f"node {node} became leader of term {check.term} knowing its removal at "
                f"{removed} committed",
            )

    def on_vote_request(self, node: int, term: int) -> None:
        """A (pre-)vote request left ``node``: only a voter (or a removed voter not yet
        sure of its removal, §4.2.2) campaigns; a learner never does."""
        if node in self.ever_observers:
            self.checker.fail(
                "observer_campaigns",
                f"observer {node} asked for votes in term {term} (it holds {self.latest(node)})",
            )
        elif node not in self.ever_voters:
            self.checker.fail(
                "learner_campaigns",
                f"node {node}, never a voter, asked for votes in term {term} "
                f"(it holds {self.latest(node)})",
            )

    def on_vote_granted(self, node: int, to: int, term: int) -> None:
        """``node`` granted ``to`` its (real or pre-) vote in ``term``."""
        if node in self.ever_observers:
            self.checker.fail(
                "observer_grants_vote",
                f"observer {node} granted node {to} a vote in term {term}",
            )

    def _no_observer_votes(self, who: str, conf: Members) -> None:
        voting = conf.voters & self.ever_observers
        if voting:
            self.checker.fail(
                "observer_never_voter",
                f"{who} {conf}: observer(s) {sorted(voting)} among the voters",
            )

    # ------------------------------------------------------------------ changes

    def on_proposed(
        self,
        leader: int,
        entry: Entry,
        change: ConfChange,
        conf_after: ConfState,
    ) -> None:
        """``leader`` appended ``entry`` for ``change``; the core now holds ``conf_after``."""
        before = self.latest(leader)
        if change.kind is ConfChangeKind.PROMOTE and change.node in self.ever_observers:
            self.checker.fail(
                "observer_promoted",
                f"leader {leader} accepted PROMOTE of observer {change.node} on {before}",
            )
        expected = before.after(change)
        got = Members.of(conf_after)
        self._no_observer_votes(f"leader {leader} accepted {change}:", got)
        if not got.voters:
            self.checker.fail("voters_nonempty", f"leader {leader} accepted {change}: no voters")
        if len(got.voters ^ before.voters) > 1:
            self.checker.fail(
                "single_change",
                f"leader {leader} went from {before} to {got} in one change ({change})",
            )
        if expected is None or got != expected:
            self.checker.fail(
                "membership",
                f"leader {leader} accepted {change} on {before}: has {got}, expected {expected}",
            )
            expected = got
        self.conf_of[(entry.index, entry.term)] = expected
        self.ever_voters |= expected.voters
        self.ever_observers |= expected.observers
        if change.kind is ConfChangeKind.REMOVE:
            self.removal_of[(entry.index, entry.term)] = change.node

    def on_applied(self, node: int, entry: Entry) -> Members | None:
        """A CONFIG entry applied (so committed): returns the configuration it gives;
        removals are remembered (ids are never reused)."""
        if entry.kind is not EntryKind.CONFIG:
            return None
        record = (entry.index, entry.term)
        conf = self._conf_of(node, record)
        gone = self.removal_of.get(record)
        if gone is not None:
            self.removed_at.setdefault(gone, entry.index)
        if entry.index > self.committed_index:
            self.committed, self.committed_index = conf, entry.index
        return conf

    def removed(self) -> Mapping[int, int]:
        return self.removed_at
