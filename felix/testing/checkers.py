"""Raft safety invariants, checked continuously while a simulation runs.

Theory of operation
-------------------
`ClusterChecker` is fed plain observations by the simulation driver (who is leader in
which term, which votes went out, which entries a node wrote, what it applied, what it
acknowledged to clients) and raises `InvariantViolation` at the first observation that
breaks one of the Raft paper's guarantees (§5.2 figure 3):

* ``election_safety``: at most one leader per term, ever.
* ``vote_once``: a node grants at most one (real, not pre-) vote per term, across
  restarts — what makes election safety hold.
* ``log_matching``: an (index, term) pair identifies one entry and the term of the
  entry before it, hence (inductively) the whole prefix (§5.3).
* ``leader_completeness``: a newly observed leader holds every committed entry (one a
  leader moved its commit index onto, or anyone applied), or a snapshot covering it
  (§5.4.1).
* ``state_machine_safety``: every node applies, at each index, the same entry; applied
  sequences are gap-free prefixes of one sequence.  Nodes keep a chained digest of what
  they applied so snapshot installs are checked too.
* ``commit_monotonic``: a running node's commit index never decreases.
* ``match_monotonic``: a leader's matchIndex for a follower never decreases within its
  term (§5.3; the simulation never wipes a disk, the one case that may lower it).
* ``leader_commit_rule``: a leader only ever moves its commit index onto an entry of its
  own term (§5.4.2, figure 8); older entries are committed indirectly.
* ``persist_before_send``: a vote or an append acknowledgement leaves a node only once
  what it promises is durable on that node's disk (§5.1, figure 2).
* ``durability``: every write acknowledged to a client is, at the end, the entry applied
  at its index (checked after the liveness phase, when every node has caught up).
* ``recovery``: a node's WAL recovers, after every crash, exactly what the simulation's
  model of its durable image holds -- the image ``persist_before_send`` judged by -- and
  never refuses to open after a crash (a torn tail is repaired, not reported as
  corruption).  The simulation checks this (`felix.testing.sim`); it reports through
  `ClusterChecker.fail`.

The last three "direct" checks pinpoint a bug at its cause; the others see its effect.
Any check can be disabled by name, which the self-tests use to show the effect checks
catch sabotaged cores on their own.

Runs that change the membership add the checks of `felix.testing.conf_checks`
(``membership``, ``learner_stays_learner``, ``election_quorum`` ...), which report
through `ClusterChecker.fail` under the names listed in `INVARIANTS`.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from felix.proto.raft_messages import Entry

__all__ = [
    "INVARIANTS",
    "AppliedRecord",
    "ClusterChecker",
    "InvariantViolation",
    "chain_digest",
]

INVARIANTS: tuple[str, ...] = (
    "election_safety",
    "vote_once",
    "log_matching",
    "leader_completeness",
    "state_machine_safety",
    "commit_monotonic",
    "match_monotonic",
    "leader_commit_rule",
    "persist_before_send",
    "durability",
    "recovery",
    "liveness",
    "linearizability",
    # membership changes (felix/testing/conf_checks.py)
    "membership",
    "learner_stays_learner",
    "learner_campaigns",
    "removed_never_leads",
    "election_quorum",
    "commit_quorum",
    "single_change",
    "voters_nonempty",
    # observers (felix/testing/conf_checks.py)
    "observer_never_voter",
    "observer_campaigns",
    "observer_grants_vote",
    "observer_promoted",
)
DIRECT_CHECKS: frozenset[str] = frozenset(
    {"vote_once", "leader_commit_rule", "persist_before_send"}
)


class InvariantViolation(AssertionError):
    """A safety (or liveness) property broke; ``invariant`` is one of `INVARIANTS`."""

    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"{invariant}: {detail}")
        self.invariant = invariant
        self.detail = detail


def chain_digest(previous: int, entry: Entry) -> int:
    """The digest of an applied sequence after appending ``entry``: equal digests at one
    index mean (up to CRC collisions) equal applied sequences up to it."""
    header = f"{entry.index}:{entry.term}:{int(entry.kind)}:".encode()
    return zlib.crc32(entry.data, zlib.crc32(header, previous))


@dataclass(frozen=True, slots=True)
class AppliedRecord:
    term: int
    digest: int


@dataclass(frozen=True, slots=True)
class _EntryRecord:
    kind: int
    data_crc: int


class ClusterChecker:
    """Accumulates what every node did and checks each new observation against it."""

    def __init__(self, disabled: frozenset[str] = frozenset()) -> None:
        unknown = disabled - set(INVARIANTS)
        if unknown:
            raise ValueError(f"unknown invariants: {sorted(unknown)}")
        self.disabled = disabled
        self.leader_of_term: dict[int, int] = {}
        self.vote_of: dict[tuple[int, int], int] = {}
        self.entry_at: dict[tuple[int, int], _EntryRecord] = {}
        self.prev_term_of: dict[tuple[int, int], int] = {}
        self.applied: dict[int, AppliedRecord] = {}
        self.applied_max = 0
        self.committed: dict[int, int] = {}  # index -> term, as leaders committed them
        self.committed_max = 0
        self.commit_of: dict[tuple[int, int], int] = {}
        self.acked: dict[int, int] = {}
        self.match_of: dict[int, tuple[int, dict[int, int]]] = {}  # leader -> term, matches

    def _fail(self, invariant: str, detail: str) -> None:
        if invariant not in self.disabled:
            raise InvariantViolation(invariant, detail)

    def observe_leader(self, node: int, term: int) -> None:
        """``node`` is leader in ``term`` (election safety, §5.2)."""
        holder = self.leader_of_term.setdefault(term, node)
        if holder != node:
            self._fail("election_safety", f"term {term} has leaders {holder} and {node}")

    def observe_matches(self, node: int, term: int, matches: dict[int, int]) -> None:
        """``node``, leader in ``term``, holds these matchIndexes (§5.3: they only grow)."""
        seen = self.match_of.get(node)
        if seen is not None and seen[0] == term:
            before = seen[1]
            for peer, match in matches.items():
                if match < before.get(peer, 0):
                    self._fail(
                        "match_monotonic",
                        f"leader {node} of term {term}: match of {peer} went from "
                        f"{before[peer]} to {match}",
                    )
        self.match_of[node] = (term, matches)

    def observe_vote_sent(self, voter: int, term: int, candidate: int) -> None:
        """``voter`` sent a granted (non-pre-)vote for ``candidate`` in ``term``."""
        holder = self.vote_of.setdefault((voter, term), candidate)
        if holder != candidate:
            self._fail(
                "vote_once", f"node {voter} voted for {holder} and {candidate} in term {term}"
            )

    def observe_entries(self, node: int, entries: Sequence[Entry], prev_term: int | None) -> None:
        """``node`` wrote ``entries`` (consecutive) after an entry of term ``prev_term``
        (None: the node cannot tell, e.g. the previous entry is compacted away)."""
        for entry in entries:
            record = _EntryRecord(int(entry.kind), zlib.crc32(entry.data))
            known = self.entry_at.setdefault((entry.index, entry.term), record)
            if known != record:
                self._fail(
                    "log_matching",
                    f"node {node} holds ({entry.index}, {entry.term}) as {record}, "
                    f"another node as {known}",
                )
            if prev_term is not None:
                known_prev = self.prev_term_of.setdefault((entry.index, entry.term), prev_term)
                if known_prev != prev_term:
                    self._fail(
                        "log_matching",
                        f"node {node} holds ({entry.index}, {entry.term}) after term "
                        f"{prev_term}, another node after term {known_prev}",
                    )
            prev_term = entry.term

    def observe_commit(self, node: int, incarnation: int, commit: int) -> None:
        """A running node's commit index (per incarnation: a restart may start lower)."""
        key = (node, incarnation)
        before = self.commit_of.get(key, 0)
        if commit < before:
            self._fail("commit_monotonic", f"node {node} commit went {before} -> {commit}")
        self.commit_of[key] = commit

    def observe_leader_commit(self, node: int, term: int, commit: int, commit_term: int) -> None:
        """A leader of ``term`` advanced its commit index to an entry of ``commit_term``.

        That (index, term) is committed from now on, applied anywhere yet or not: later
        leaders must hold it and every node must apply exactly it at that index."""
        if commit_term != term:
            self._fail(
                "leader_commit_rule",
                f"leader {node} of term {term} committed index {commit} of term {commit_term}",
            )
        known = self.committed.setdefault(commit, commit_term)
        if known != commit_term:
            self._fail(
                "state_machine_safety",
                f"leader {node} committed term {commit_term} at {commit}, earlier term {known}",
            )
        self.committed_max = max(self.committed_max, commit)

    def observe_apply(self, node: int, applied_before: int, entry: Entry, digest: int) -> None:
        """``node`` applied ``entry``; its state-machine digest is now ``digest``."""
        if entry.index != applied_before + 1:
            self._fail(
                "state_machine_safety",
                f"node {node} applied index {entry.index} right after {applied_before}",
            )
        self._record_applied(node, entry.index, AppliedRecord(entry.term, digest))
        committed_term = self.committed.get(entry.index)
        if committed_term is not None and committed_term != entry.term:
            self._fail(
                "state_machine_safety",
                f"node {node} applied term {entry.term} at {entry.index}, "
                f"where term {committed_term} was committed",
            )

    def observe_restore(self, node: int, index: int, term: int, digest: int) -> None:
        """``node`` replaced its state machine with a snapshot taken at ``index``."""
        self._record_applied(node, index, AppliedRecord(term, digest))

    def _record_applied(self, node: int, index: int, record: AppliedRecord) -> None:
        known = self.applied.setdefault(index, record)
        if known != record:
            self._fail(
                "state_machine_safety",
                f"node {node} applied {record} at index {index}, another node {known}",
            )
        self.applied_max = max(self.applied_max, index)

    def observe_new_leader(
        self,
        node: int,
        term: int,
        snapshot_index: int,
        log: Sequence[Entry],
    ) -> None:
        """A node just became leader: its snapshot plus ``log`` (the entries after it)
        must hold every entry anyone applied (leader completeness, §5.4.1)."""
        last_index = log[-1].index if log else snapshot_index
        must_hold = max(self.applied_max, self.committed_max)
        if last_index < must_hold:
            self._fail(
                "leader_completeness",
                f"leader {node} of term {term} ends at {last_index}, "
                f"index {must_hold} is committed",
            )
        for entry in log:
            record = self.applied.get(entry.index)
            committed_term = record.term if record else self.committed.get(entry.index)
            if committed_term is not None and committed_term != entry.term:
                self._fail(
                    "leader_completeness",
                    f"leader {node} of term {term} has term {entry.term} at {entry.index}, "
                    f"committed term {committed_term}",
                )

    def observe_send_promise(
        self, node: int, what: str, promised: bool, describe: Callable[[], str]
    ) -> None:
        """``node`` sent a vote/ack (``what``); ``promised`` says whether its disk already
        holds what the message promises (persist before send, §5.1 figure 2)."""
        if not promised:
            self._fail("persist_before_send", f"node {node} sent {what} before {describe()}")

    def observe_client_ack(self, index: int, term: int) -> None:
        """A client was told its write at (``index``, ``term``) succeeded."""
        self.acked[index] = term

    def check_durability(self) -> None:
        """Every acknowledged write is the entry applied at its index."""
        for index, term in sorted(self.acked.items()):
            record = self.applied.get(index)
            if record is None or record.term != term:
                self._fail(
                    "durability",
                    f"acknowledged write ({index}, {term}) is not applied; applied {record}",
                )

    def fail(self, invariant: str, detail: str) -> None:
        """Report a violation found outside this class (liveness, linearizability)."""
        self._fail(invariant, detail)
