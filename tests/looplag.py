"""How long the event loop makes a task that is ready to run wait.

A ticker asks to wake every `period` seconds and records how late each wake-up comes. Its timer
is due at the end of the sleep, and runs once the loop has run every callback that was ready
before it: a Lease renewal, a probe or a watch's next event waits just as long. Wall time alone
would also count the moments this process waited for a core on a busy machine (the API server,
etcd and other test runs share two cores), so the lateness that counts is measured in the CPU
time of the loop's own thread meanwhile (from the start of the sleep: at most one period more
than from the moment it was due): what the loop itself spent while the ticker waited. That is
`longest_stall`; `longest_gap` is the wall time of the worst wake-up.

A worker thread of this process holding the GIL would delay the loop without showing in its
thread's CPU time; the only one the reconciler has (jsondecode.py) runs Python code, which the
interpreter makes hand the GIL over every switch interval (5 ms), and its test checks that. A
callback blocking in a system call (a sleep, a file read) would not show either: the wake-up's
wall lateness does, for the record.

What held the loop: while measuring, every callback the loop runs is timed in its thread's CPU
time (asyncio's Handle._run, wrapped); the worst wake-up keeps the longest callbacks that ran
within it, and a watchdog thread samples the loop thread's stack every SAMPLE_EVERY while a
callback has run longer than SAMPLE_AFTER, so a failure names the code (a sample is taken when
the watchdog gets the GIL: C code that holds it throughout shows as the Python line that called
it).
"""

from __future__ import annotations

import asyncio.events
import heapq
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio
import attrs

SAMPLE_AFTER = 0.010
SAMPLE_EVERY = 0.005
KEPT = 4  # callbacks named for the worst wake-up


@attrs.frozen
class Callback:
    cpu: float  # CPU seconds of the loop's thread it took
    what: str  # the task (its coroutine) or the function it ran
    stacks: tuple[str, ...] = ()  # the loop thread's innermost frames, sampled meanwhile

    def __lt__(self, other: Callback) -> bool:
        return self.cpu < other.cpu


@attrs.frozen
class Wakeup:
    late: float  # seconds later than asked (wall)
    busy: float  # CPU seconds the loop's thread used meanwhile
    process_busy: float  # CPU seconds every thread of the process used meanwhile
    longest: tuple[Callback, ...] = ()  # the longest callbacks run meanwhile, longest first

    @property
    def stall(self) -> float:
        """The part of the delay the loop's own work accounts for."""
        return min(self.late, self.busy)


NONE = Wakeup(0.0, 0.0, 0.0)


def _describe(handle: asyncio.events.Handle) -> str:
    callback: Any = getattr(handle, "_callback", None)
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        # the task's coroutines down to where it waits now (where the step ended)
        names, coro = [], owner.get_coro()
        while coro is not None and len(names) < 8:
            names.append(str(getattr(coro, "__qualname__", type(coro).__name__)))
            coro = getattr(coro, "cr_await", None)
        return "task " + " > ".join(names[-3:])
    return getattr(callback, "__qualname__", repr(callback))


class LoopLag:
    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.wakeups = 0
        self.callbacks = 0
        self.worst_stall = self.worst_gap = NONE
        # The longest callbacks since the ticker last went to sleep (a heap of KEPT at most),
        # and the samples of the callback under way, which began at `_running_since` (None
        # between callbacks). Written by the loop's thread; `_samples` appended to by the
        # watchdog thread too.
        self._longest: list[Callback] = []
        self._running_since: float | None = None
        self._samples: list[str] = []

    @property
    def longest_stall(self) -> float:
        return self.worst_stall.stall

    @property
    def longest_gap(self) -> float:
        return self.worst_gap.late

    def reset(self) -> None:
        self.wakeups = self.callbacks = 0
        self.worst_stall = self.worst_gap = NONE

    async def run(self) -> None:
        """Until cancelled: every callback of the loop it runs in is timed meanwhile."""
        loop_thread = threading.get_ident()
        stop = threading.Event()
        watchdog = threading.Thread(target=self._watch, args=(loop_thread, stop),
                                    name="looplag-watchdog", daemon=True)
        original: Callable[[asyncio.events.Handle], None] = asyncio.events.Handle._run
        assert getattr(original, "__module__", "") == "asyncio.events", \
            "one LoopLag at a time: Handle._run is already wrapped"

        def timed(handle: asyncio.events.Handle) -> None:
            if threading.get_ident() != loop_thread:
                return original(handle)
            self._samples = []
            self._running_since = time.monotonic()
            began = time.thread_time()
            try:
                return original(handle)
            finally:
                took = time.thread_time() - began
                self._running_since = None
                self.callbacks += 1
                if len(self._longest) < KEPT or took > self._longest[0].cpu:
                    entry = Callback(took, _describe(handle), tuple(self._samples))
                    (heapq.heappush if len(self._longest) < KEPT else heapq.heapreplace)(
                        self._longest, entry)

        asyncio.events.Handle._run = timed  # type: ignore[method-assign]
        watchdog.start()
        try:
            await self._tick()
        finally:
            asyncio.events.Handle._run = original  # type: ignore[method-assign]
            stop.set()
            watchdog.join()

    def _watch(self, loop_thread: int, stop: threading.Event) -> None:
        while not stop.wait(SAMPLE_EVERY):
            since, samples = self._running_since, self._samples  # the callback's own list
            if since is None or time.monotonic() - since < SAMPLE_AFTER:
                continue
            frame = sys._current_frames().get(loop_thread)
            if frame is not None:
                # the innermost frames only, their source not read: reading it would give the
                # GIL up at each file, and the callback could be over before the sample is
                # (the import system's own frames left out: an import shows as its caller)
                inner = [f for f in traceback.StackSummary.extract(
                    traceback.walk_stack(frame), limit=24, lookup_lines=False)
                    if not f.filename.startswith("<frozen")][:6]
                samples.append(" <- ".join(
                    f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}" for f in inner))

    async def _tick(self) -> None:
        while True:
            wall, cpu, process = time.monotonic(), time.thread_time(), time.process_time()
            self._longest = []
            await anyio.sleep(self.period)
            now = time.monotonic()
            wakeup = Wakeup(now - wall - self.period, time.thread_time() - cpu,
                            time.process_time() - process,
                            tuple(sorted(self._longest, reverse=True)))
            self.wakeups += 1
            if wakeup.stall > self.worst_stall.stall:
                self.worst_stall = wakeup
            if wakeup.late > self.worst_gap.late:
                self.worst_gap = wakeup

    def summary(self) -> str:
        worst, gap = self.worst_stall, self.worst_gap
        return (f"longest stall {worst.stall * 1000:.1f} ms of the loop's own CPU time "
                f"({worst.late * 1000:.1f} ms late, the process busy {worst.process_busy * 1000:.1f}"
                f" ms meanwhile); longest gap {gap.late * 1000:.1f} ms wall ({gap.busy * 1000:.1f}"
                f" ms of it on the loop's CPU, {gap.process_busy * 1000:.1f} ms on the process's)"
                f"; {self.wakeups} wake-ups, {self.callbacks} callbacks{self.where()}")

    def where(self) -> str:
        """The longest callbacks within the longest stall, and where the loop was in them."""
        if not self.worst_stall.longest:
            return ""
        parts = []
        for callback in self.worst_stall.longest:
            seen = Counter(callback.stacks).most_common(2)
            at = "".join(f" [{count}x {stack}]" for stack, count in seen)
            parts.append(f"{callback.cpu * 1000:.1f} ms {callback.what}{at}")
        return "; within the longest stall: " + " | ".join(parts)
