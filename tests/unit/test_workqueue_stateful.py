"""A hypothesis state machine drives random add / add_after / get / done / forget / shutdown
sequences with several workers against a reference model, and checks client-go's invariants:
never two holders of one key; every key added after its last done is handed out again; dedup;
live keys before backlog keys, FIFO within a priority; shutdown drains."""

from __future__ import annotations

import itertools

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from reconciler.clock import FakeClock
from reconciler.ratelimit import ItemExponentialBackoff
from reconciler.workqueue import Priority, QueueShutDown, WorkQueue

KEYS = st.sampled_from([f"ns/k{i}" for i in range(6)])
PRIORITIES = st.sampled_from(list(Priority))
WORKERS = st.integers(0, 3)


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.queue = WorkQueue(clock=self.clock, rate_limiter=ItemExponentialBackoff(1, 16))
        # the reference model
        self.order: dict[Priority, list[str]] = {p: [] for p in Priority}  # queued, in order
        self.dirty: dict[str, Priority] = {}
        self.holders: dict[int, str] = {}  # worker -> key it holds
        self.delayed: dict[str, tuple[float, int, Priority]] = {}
        self.seq = itertools.count()
        self.failures: dict[str, int] = {}
        self.shut = False
        self.handed_out: list[str] = []

    # --- the model's rules, mirroring the specification ---

    def _processing(self) -> set[str]:
        return set(self.holders.values())

    def _model_add(self, key: str, priority: Priority) -> None:
        if self.shut:
            return
        if key in self.dirty:
            if priority < self.dirty[key]:
                if key not in self._processing():
                    self.order[self.dirty[key]].remove(key)
                    self.order[priority].append(key)
                self.dirty[key] = priority
            return
        self.dirty[key] = priority
        if key not in self._processing():
            self.order[priority].append(key)

    def _model_add_after(self, key: str, delay: float, priority: Priority) -> None:
        if self.shut:
            return
        if delay <= 0:
            self._model_add(key, priority)
            return
        ready = self.clock.now() + delay
        if key in self.delayed and self.delayed[key][0] <= ready:
            return
        self.delayed[key] = (ready, next(self.seq), priority)

    def _model_promote(self) -> None:
        due = sorted((v[0], v[1], k, v[2]) for k, v in self.delayed.items()
                     if v[0] <= self.clock.now())
        for _, _, key, priority in due:
            del self.delayed[key]
            self._model_add(key, priority)

    # --- rules ---

    @rule(key=KEYS, priority=PRIORITIES)
    def add(self, key: str, priority: Priority) -> None:
        self.queue.add(key, priority)
        self._model_add(key, priority)

    @rule(key=KEYS, delay=st.sampled_from([0, 0.5, 1, 3]), priority=PRIORITIES)
    def add_after(self, key: str, delay: float, priority: Priority) -> None:
        self.queue.add_after(key, delay, priority)
        self._model_add_after(key, delay, priority)

    @rule(key=KEYS)
    def add_rate_limited(self, key: str) -> None:
        self.queue.add_rate_limited(key)
        if self.shut:
            return
        failures = self.failures.get(key, 0)
        self.failures[key] = failures + 1
        self._model_add_after(key, min(1.0 * 2**failures, 16.0), Priority.LIVE)

    @rule(key=KEYS)
    def forget(self, key: str) -> None:
        self.queue.forget(key)
        self.failures.pop(key, None)
        assert self.queue.num_requeues(key) == 0

    @rule(seconds=st.sampled_from([0.5, 1, 4]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: len(self.holders) < 4)
    @rule(worker=WORKERS)
    def get(self, worker: int) -> None:
        if worker in self.holders:
            return
        self._model_promote()
        expected = next((fifo[0] for fifo in self.order.values() if fifo), None)
        try:
            got = self.queue.get_nowait()
        except QueueShutDown:
            assert self.shut and expected is None
            return
        assert got == expected
        if got is not None:
            self.order[self.dirty.pop(got)].remove(got)
            self.holders[worker] = got
            self.handed_out.append(got)

    @precondition(lambda self: self.holders)
    @rule(worker=WORKERS)
    def done(self, worker: int) -> None:
        key = self.holders.pop(worker, None)
        if key is None:
            return
        self.queue.done(key)
        if key in self.dirty:
            self.order[self.dirty[key]].append(key)

    @rule()
    def shutdown(self) -> None:
        self.queue.shutdown()
        self.shut = True
        self.delayed.clear()

    # --- invariants ---

    @invariant()
    def never_two_holders(self) -> None:
        assert len(set(self.holders.values())) == len(self.holders)
        assert self.queue.processing == frozenset(self.holders.values())

    @invariant()
    def each_waiting_key_once(self) -> None:
        queued = [k for fifo in self.order.values() for k in fifo]
        assert len(queued) == len(set(queued))
        assert len(self.queue) == len(queued)
        assert not set(queued) & self._processing()

    def teardown(self) -> None:
        """Finish every holder, wait out every delay: every key still owed is handed out, once."""
        for worker in list(self.holders):
            self.done(worker)
        self.clock.advance(1000)
        self._model_promote()
        owed = sorted(k for fifo in self.order.values() for k in fifo)
        got = []
        while True:
            try:
                key = self.queue.get_nowait()
            except QueueShutDown:
                break
            if key is None:
                break
            got.append(key)
            self.queue.done(key)
        assert sorted(got) == owed


TestQueueMachine = QueueMachine.TestCase
TestQueueMachine.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
