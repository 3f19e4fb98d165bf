"""Scripted schedules: the small language a `Script` is written in, and the scripts.

Why a module: a script is data, like the rest of a `felix.testing.faults.FaultPlan` (a
plan carries one), but it is a language of its own -- actions, conditions, steps -- and
the two scripts are long.  `felix.testing.sim_phases.ScriptRunner` runs one.

A script is a fixed schedule of links, crashes, restarts, campaigns and writes, each step
waiting for a condition on the cluster, that steers the cluster into a known dangerous
corner before the random faults start:

* ``figure8``: the Raft paper's figure 8 (§5.4.2).  An old-term entry reaches a majority
  under a later leader, that leader crashes, and a node whose log ends in a conflicting
  entry of a newer term wins the next election.  A leader that commits old-term entries by
  counting replicas has then committed an entry the next leader overwrites.
* ``ack_crash``: followers crash right after acknowledging an entry (before their fsync
  returns), the leader crashes after committing it, and the survivors elect a leader.  A
  follower that acknowledges before persisting has then acknowledged a write that is gone.

A correct core passes both: the dangerous step simply never happens (the wait times out).

The mark: the log index a script step talks about.  `Write` sets it to the index the
write will get; conditions test it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CAMPAIGN_RETRY_MS",
    "SCRIPTS",
    "Applied",
    "CaughtUp",
    "Committed",
    "CrashNodes",
    "CrashOnWrite",
    "Holds",
    "IsLeader",
    "Links",
    "RestartNodes",
    "Script",
    "ScriptAction",
    "ScriptCondition",
    "ScriptStep",
    "StartCampaign",
    "Write",
    "ack_crash_script",
    "figure8_script",
]


@dataclass(frozen=True, slots=True)
class Links:
    """Only links inside a group are up (both ways), except the one-way ``cut`` pairs
    ``(src, dst)``.  A node in no group hears nobody.  Messages in flight on a link that
    goes down are lost (links are checked on delivery)."""

    groups: tuple[tuple[int, ...], ...]
    cut: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class CrashNodes:
    """Power loss on running ``nodes`` (unsynced writes lost); down until restarted."""

    nodes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CrashOnWrite:
    """Arm each of ``nodes`` to crash right after it hands a write reaching the mark to
    its disk: after the batch's ``send_now`` went out, before its fsync returns."""

    nodes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RestartNodes:
    """Boot ``nodes`` that are down from what their WAL holds."""

    nodes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class StartCampaign:
    node: int


@dataclass(frozen=True, slots=True)
class Write:
    """A client writes through ``node``; the mark becomes the index the write gets."""

    node: int


ScriptAction = Links | CrashNodes | CrashOnWrite | RestartNodes | StartCampaign | Write


@dataclass(frozen=True, slots=True)
class IsLeader:
    """One of ``nodes`` is leader."""

    nodes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """There is a leader and every running node applied up to its last index."""


@dataclass(frozen=True, slots=True)
class Holds:
    """Each of ``nodes`` holds the mark in its log (``durable``: in its fsynced WAL)."""

    nodes: tuple[int, ...]
    durable: bool = False


@dataclass(frozen=True, slots=True)
class Committed:
    """``node``'s commit index reached the mark."""

    node: int


@dataclass(frozen=True, slots=True)
class Applied:
    """``node`` applied the mark (a client write there is acknowledged)."""

    node: int


ScriptCondition = IsLeader | CaughtUp | Holds | Committed | Applied


@dataclass(frozen=True, slots=True)
class ScriptStep:
    """Do ``do``, then wait for ``until`` (None: go on at once).  With ``retry_ms`` the
    actions are redone that often while waiting (so they must be idempotent: links,
    crashes, restarts, campaigns).  After ``timeout_ms`` the script goes on regardless:
    a correct core never reaches some of the conditions."""

    do: tuple[ScriptAction, ...] = ()
    until: ScriptCondition | None = None
    retry_ms: float | None = None
    timeout_ms: float = 300.0


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    steps: tuple[ScriptStep, ...]


CAMPAIGN_RETRY_MS = 40.0


def figure8_script() -> Script:
    """Raft paper figure 8 (§5.4.2) on five nodes, S1..S5 = nodes 1..5."""
    everyone = ((1, 2, 3, 4, 5),)
    retry = CAMPAIGN_RETRY_MS
    return Script(
        "figure8",
        (
            # (a) S1 leads and everyone holds its log; S1 then replicates an entry (at the
            # mark, old term T) to S2 only.
            ScriptStep((Links(everyone), StartCampaign(1)), IsLeader((1,)), retry),
            ScriptStep((), CaughtUp()),
            ScriptStep((Links(((1, 2), (3, 4, 5))), Write(1)), Holds((1, 2), durable=True)),
            # (b) S1 crashes; S5 wins with S3 and S4 and appends its own entry at the mark
            # (term > T), which nobody else receives; it crashes too.
            ScriptStep(
                (CrashNodes((1,)), Links(((3, 4, 5),)), StartCampaign(5)), IsLeader((5,)), retry
            ),
            ScriptStep((Links(((3, 4),)),), Holds((5,), durable=True)),
            # (c) S1 restarts and wins with S2 and S3 in a later term; its term-T entry at
            # the mark reaches S3, but nothing after it: the old-term entry is on a majority
            # (S1, S2, S3), the new leader's NOOP only on S1 and S2.  A correct leader does
            # not commit the mark now; one that counts replicas of old terms does.
            ScriptStep(
                (CrashNodes((5,)), RestartNodes((1,)), Links(((1, 2, 3),)), StartCampaign(1)),
                IsLeader((1,)),
                retry,
            ),
            ScriptStep((), Holds((3,))),
            ScriptStep((Links(((1, 2, 3),), cut=((1, 3),)),), Committed(1), timeout_ms=100.0),
            # (d) S1 crashes; S5 restarts and wins with S3 and S4 (its entry at the mark is
            # newer than theirs), and overwrites the mark everywhere.
            ScriptStep(
                (CrashNodes((1,)), RestartNodes((5,)), Links(((2, 3, 4, 5),)), StartCampaign(5)),
                IsLeader((5,)),
                retry,
                timeout_ms=1000.0,
            ),
            ScriptStep((), CaughtUp()),
        ),
    )


def ack_crash_script(nodes: int) -> Script:
    """Followers crash right after acknowledging; the leader after committing."""
    everyone = tuple(range(1, nodes + 1))
    ackers = tuple(range(2, nodes // 2 + 2))  # with the leader: a bare majority
    others = everyone[len(ackers) + 1 :]
    survivors = everyone[1:]
    retry = CAMPAIGN_RETRY_MS
    return Script(
        "ack_crash",
        (
            ScriptStep((Links((everyone,)), StartCampaign(1)), IsLeader((1,)), retry),
            ScriptStep((), CaughtUp()),
            # S1 reaches only the ackers; each crashes as soon as its write of the new
            # entry starts, i.e. right after an acknowledgement sent before persisting.
            ScriptStep(
                (Links(((1, *ackers), (*ackers, *others))), CrashOnWrite(ackers), Write(1)),
                Committed(1),
                timeout_ms=100.0,
            ),
            ScriptStep((), Applied(1), timeout_ms=100.0),  # the client hears "ok"
            # S1 crashes; the others restart and elect a leader among themselves.
            ScriptStep(
                (CrashNodes((1,)), RestartNodes(ackers), Links((survivors,)), StartCampaign(2)),
                IsLeader(survivors),
                retry,
                timeout_ms=1000.0,
            ),
            ScriptStep((), CaughtUp()),
        ),
    )


SCRIPTS: tuple[str, ...] = ("figure8", "ack_crash")
