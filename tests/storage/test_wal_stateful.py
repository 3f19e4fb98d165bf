"""Hypothesis: random append / overwrite / snapshot / compact / crash sequences on the
memory WAL (the real recovery code on a simulated disk), checked against `Model`."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from felix.raft.types import BootState, HardState
from felix.storage.memory_wal import MemoryWal
from tests.storage.model import CONF, Model, entries, snap

MODES = st.sampled_from(["lose", "keep", "torn"])


class WalMachine(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.wal = MemoryWal(segment_bytes_max=200, snapshots_keep=2)
        self.model = Model()
        self.term = 1
        self._check(self.wal.open(CONF), [self.model])

    def _floor(self) -> int:
        newest = self.model.snapshots[-1][0].index if self.model.snapshots else 0
        return max(newest, self.model.base[0])

    def _batch(self, count: int, back: int, bump: bool) -> tuple[HardState, tuple]:  # type: ignore[type-arg]
        self.term += bump
        last = self.model.last_index()
        start = max(self._floor() + 1, last + 1 - back)
        commit = min(self.model.hard_state.commit, start - 1)
        return HardState(self.term, 1, commit), entries(start, start + count - 1, self.term)

    def _check(self, boot: BootState, candidates: list[Model]) -> None:
        for candidate in candidates:
            if boot == candidate.expected_boot():
                self.model = candidate
                break
        else:
            raise AssertionError(
                f"{boot} matches none of {[c.expected_boot() for c in candidates]}"
            )
        self.model.log = {e.index: e for e in boot.entries}
        self.model.hard_state = boot.hard_state
        if boot.snapshot is not None:
            self.model.base = (boot.snapshot[0].index, boot.snapshot[0].term)
        self.term = max(self.term, boot.hard_state.term)

    @rule(count=st.integers(1, 6), back=st.integers(0, 4), bump=st.booleans())
    def append(self, count: int, back: int, bump: bool) -> None:
        hs, batch = self._batch(count, back, bump)
        self.wal.save(hs, batch)
        self.model.save(hs, batch)

    @rule(count=st.integers(1, 6), back=st.integers(0, 4), mode=MODES, torn=st.integers(0, 80))
    def crash_before_fsync(self, count: int, back: int, mode: str, torn: int) -> None:
        hs, batch = self._batch(count, back, bump=False)
        self.wal.write(hs, batch)
        after = self.model.copy()
        after.save(hs, batch)
        self.wal.crash(mode, torn_bytes=torn)  # type: ignore[arg-type]
        self._check(self.wal.open(CONF), [self.model, after])

    @precondition(lambda self: any(i > self._floor() for i in self.model.log))
    @rule(data=st.data())
    def local_snapshot(self, data: st.DataObject) -> None:
        index = data.draw(st.sampled_from(sorted(i for i in self.model.log if i > self._floor())))
        taken = snap(index, self.model.log[index].term)
        self.wal.snapshots.save(*taken)
        self.model.store(taken)

    @rule(ahead=st.integers(1, 8))
    def received_snapshot(self, ahead: int) -> None:
        self.term += 1
        received = snap(self.model.last_index() + ahead, self.term, b"leader")
        hs = HardState(self.term, None, received[0].index)
        self.wal.save(hs, (), received)
        self.model.save(hs, (), received)

    @rule(slack=st.integers(0, 10))
    def compact(self, slack: int) -> None:
        self.wal.compact(max(0, self._floor() - slack))

    @rule(mode=MODES)
    def restart(self, mode: str) -> None:
        self.wal.crash(mode)  # type: ignore[arg-type]
        self._check(self.wal.open(CONF), [self.model])


WalMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=50, deadline=None)
TestWal = WalMachine.TestCase
