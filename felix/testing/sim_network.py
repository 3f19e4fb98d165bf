"""The simulated links between nodes: partitions, and per-message drop, duplication,
delay and reorder (`felix.testing.faults.NetworkFaults`).

Why a module: whether, when and how often a message arrives is the network's business
alone.  It knows nodes only by id: a node hands it a message (`Network.transmit`), and a
delivery that arrives is admitted (`Network.admit`) before the node steps it.  Links are
checked both at send and at delivery, so a message in flight on a link that goes down is
lost.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from felix.proto.raft_messages import RaftMessage
from felix.testing.faults import HEALTHY_NETWORK, NetworkFaults, PartitionEpisode, PartitionKind
from felix.testing.sim_events import Scheduler, _Deliver
from felix.testing.sim_scripts import Links

__all__ = ["Network"]

Link = tuple[int, int]  # (src, dst)


class Network:
    """Node-to-node links of one run; ``faults`` is what the network does to messages
    right now (the plan's, or a healthy network while a script runs and after healing)."""

    def __init__(
        self,
        faults: NetworkFaults,
        voters: tuple[int, ...],
        sched: Scheduler,
        fired: Counter[str],
    ) -> None:
        self.faults = faults
        self.voters = voters
        self.sched = sched
        self.fired = fired
        self.blocked: Counter[Link] = Counter()  # a link is down while its count is > 0
        self.active_partitions: dict[int, list[Link]] = {}
        self.link_sent: Counter[Link] = Counter()
        self.link_delivered: dict[Link, int] = {}

    def transmit(self, src: int, dst: int, message: RaftMessage) -> None:
        if self.blocked[(src, dst)]:
            return
        net, rng = self.faults, self.sched.rng
        if net.drop_rate and rng.random() < net.drop_rate:
            self.fired["drop"] += 1
            return
        copies = 1
        if net.duplicate_rate and rng.random() < net.duplicate_rate:
            copies = 2
            self.fired["duplicate"] += 1
        self.link_sent[(src, dst)] += 1
        for _ in range(copies):
            delay = rng.uniform(net.delay_ms_min, net.delay_ms_max)
            if net.reorder_rate and rng.random() < net.reorder_rate:
                delay += rng.uniform(0, net.reorder_ms_max)
            if delay > HEALTHY_NETWORK.delay_ms_max:
                self.fired["delay"] += 1
            self.sched.at(delay, _Deliver(src, dst, message, self.link_sent[(src, dst)]))

    def admit(self, event: _Deliver) -> bool:
        """Whether a message that arrives gets through (its link is up now)."""
        link = (event.src, event.dst)
        if self.blocked[link]:
            return False
        newest = self.link_delivered.get(link, 0)
        if event.link_seq < newest:
            self.fired["reorder"] += 1
        self.link_delivered[link] = max(newest, event.link_seq)
        return True

    # ------------------------------------------------------------------ partitions

    def start_partition(
        self, episode_id: int, episode: PartitionEpisode, leader: int | None
    ) -> None:
        """Cut the episode's links; ``leader`` is who an ISOLATE_LEADER episode isolates
        (None: nobody leads, so a random voter)."""
        pairs = self._partition_pairs(episode, leader)
        self.active_partitions[episode_id] = pairs
        self.blocked.update(pairs)
        kind = episode.kind
        if kind in (PartitionKind.SPLIT, PartitionKind.BRIDGE):
            self.fired["partition"] += 1
        elif kind is PartitionKind.ISOLATE_LEADER:
            self.fired["isolate_leader"] += 1
        else:
            self.fired["one_way_partition"] += 1

    def end_partition(self, episode_id: int) -> None:
        pairs = self.active_partitions.pop(episode_id, [])
        self.blocked.subtract(pairs)

    def _partition_pairs(self, episode: PartitionEpisode, leader: int | None) -> list[Link]:
        everyone = list(self.voters)
        kind = episode.kind
        rng = self.sched.rng
        if kind is PartitionKind.ISOLATE_LEADER:
            alone = leader if leader is not None else rng.choice(everyone)
            return _cut(alone, [n for n in everyone if n != alone], both_ways=True)
        if kind in (PartitionKind.ONE_WAY_OUT, PartitionKind.ONE_WAY_IN):
            (alone,) = episode.side
            others = [n for n in everyone if n != alone]
            pairs = _cut(alone, others, both_ways=False)
            return pairs if kind is PartitionKind.ONE_WAY_OUT else [(b, a) for a, b in pairs]
        other_side = [n for n in everyone if n not in episode.side]
        if kind is PartitionKind.BRIDGE and len(other_side) > 1:
            other_side.remove(rng.choice(other_side))
        return [pair for a in episode.side for pair in _cut(a, other_side, both_ways=True)]

    def set_links(self, links: Links) -> None:
        """A script's `Links`: exactly these links are up from now on."""
        self.blocked.clear()
        for a in self.voters:
            for b in self.voters:
                if a != b and not any(a in group and b in group for group in links.groups):
                    self.blocked[(a, b)] = 1
        for pair in links.cut:
            self.blocked[pair] = 1

    def reset(self, faults: NetworkFaults) -> None:
        """Every link up, ``faults`` from now on (a script ended)."""
        self.blocked.clear()
        self.faults = faults

    def heal(self) -> None:
        """The end of the fault phase: every link up, a healthy network for good."""
        self.blocked.clear()
        self.active_partitions.clear()
        self.faults = HEALTHY_NETWORK


def _cut(node: int, others: Iterable[int], *, both_ways: bool) -> list[Link]:
    pairs = [(node, other) for other in others]
    return pairs + [(b, a) for a, b in pairs] if both_ways else pairs
