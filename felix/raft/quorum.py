"""Majority arithmetic over the voters of one configuration (§5.2, §5.3; thesis §4.2.1:
learners never count).

Kept apart from the roles so the rules that decide safety — who won an election, which
index is on a majority — are a few lines each and unit-tested on their own.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def majority(voter_count: int) -> int:
    """Smallest number of voters that is more than half (§5.2)."""
    return voter_count // 2 + 1


def committed_index(matches: Iterable[int]) -> int:
    """The highest index a majority of voters holds (§5.3): the majority-th largest
    match index.  With no voters nothing can be committed."""
    ordered = sorted(matches, reverse=True)
    if not ordered:
        return 0
    return ordered[majority(len(ordered)) - 1]


def vote_result(voters: Iterable[int], votes: Mapping[int, bool]) -> VoteResult:
    """§5.2: won with a majority of grants, lost once a majority can no longer grant."""
    voter_list = list(voters)
    need = majority(len(voter_list))
    granted = sum(1 for v in voter_list if votes.get(v) is True)
    rejected = sum(1 for v in voter_list if votes.get(v) is False)
    if granted >= need:
        return VoteResult.WON
    if len(voter_list) - rejected < need:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Iterable[int], acked: Iterable[int] | set[int]) -> bool:
    """Whether the nodes in ``acked`` include a majority of ``voters``."""
    voter_list = list(voters)
    acked_set = acked if isinstance(acked, set) else set(acked)
    count = sum(1 for v in voter_list if v in acked_set)
    return count >= majority(len(voter_list))
