"""How long the event loop is held: the longest single callback it ran, and how late a ticker's
wake-ups came.

A stall is one callback (a task's step from one `await` to the next, a protocol's callback)
that runs without giving the loop back: nothing else, no watch, probe or Lease renewal, runs
until it returns. While measuring, every callback the loop runs is timed in the CPU time of the
loop's own thread (asyncio's Handle._run, wrapped): `longest_stall` is the longest of them. CPU
time, not wall: on a busy machine (the API server, etcd and other test runs share two cores) a
callback may wait for a core, which is not the loop's doing; a garbage collection that the
callback set off is counted, being its doing. A worker thread holding the GIL would delay the
loop without showing here; the only one the reconciler has (jsondecode.py) runs Python code,
which hands the GIL over every switch interval (5 ms), and its test checks that.

Where the loop was: while a callback has run longer than SAMPLE_AFTER, a watchdog thread samples
the loop thread's stack every SAMPLE_EVERY; the samples of the longest callback are kept, so a
failure names the code that held the loop (a sample is taken when the watchdog gets the GIL: C
code that holds it throughout shows as the Python line that called it).

A ticker asks to wake every `period` and records how late each wake-up comes, in wall time:
`longest_gap`, for the record (it includes the moments this process waited for a core).
"""

from __future__ import annotations

import asyncio.events
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio
import attrs

SAMPLE_AFTER = 0.015
SAMPLE_EVERY = 0.005


@attrs.frozen
class Callback:
    cpu: float  # CPU seconds of the loop's thread it took
    what: str  # the task (its coroutine) or the function it ran
    stacks: tuple[str, ...] = ()  # the loop thread's innermost frames, sampled meanwhile


NONE = Callback(0.0, "")


def _describe(handle: asyncio.events.Handle) -> str:
    callback: Any = getattr(handle, "_callback", None)
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro: Any = owner.get_coro()
        return f"task {getattr(coro, '__qualname__', coro)!s}"
    return getattr(callback, "__qualname__", repr(callback))


class LoopLag:
    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.wakeups = 0
        self.callbacks = 0
        self.worst_stall = NONE
        self.worst_gap = 0.0
        # The callback under way in the loop's thread: when it began (monotonic), None between
        # callbacks; its samples, appended by the watchdog thread. Both written by the loop's
        # thread at a callback's start and end only.
        self._running_since: float | None = None
        self._samples: list[str] = []

    @property
    def longest_stall(self) -> float:
        return self.worst_stall.cpu

    @property
    def longest_gap(self) -> float:
        return self.worst_gap

    def reset(self) -> None:
        self.wakeups = self.callbacks = 0
        self.worst_stall, self.worst_gap = NONE, 0.0

    async def run(self) -> None:
        """Until cancelled: every callback of the loop it runs in is timed meanwhile."""
        loop_thread = threading.get_ident()
        stop = threading.Event()
        watchdog = threading.Thread(target=self._watch, args=(loop_thread, stop),
                                    name="looplag-watchdog", daemon=True)
        original: Callable[[asyncio.events.Handle], None] = asyncio.events.Handle._run

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
                if took > self.worst_stall.cpu:
                    self.worst_stall = Callback(took, _describe(handle), tuple(self._samples))

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
            since = self._running_since
            if since is None or time.monotonic() - since < SAMPLE_AFTER:
                continue
            frame = sys._current_frames().get(loop_thread)
            if frame is not None:
                inner = traceback.extract_stack(frame)[-6:]
                self._samples.append(" <- ".join(
                    f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}" for f in reversed(inner)))

    async def _tick(self) -> None:
        while True:
            wall = time.monotonic()
            await anyio.sleep(self.period)
            self.wakeups += 1
            self.worst_gap = max(self.worst_gap, time.monotonic() - wall - self.period)

    def summary(self) -> str:
        worst = self.worst_stall
        return (f"longest stall {worst.cpu * 1000:.1f} ms of the loop's CPU time in one callback "
                f"({worst.what}) of {self.callbacks}; longest gap {self.worst_gap * 1000:.1f} ms "
                f"wall between {self.wakeups} ticker wake-ups{self.where()}")

    def where(self) -> str:
        """The loop thread's frames sampled within the longest stall, most often seen first."""
        if not self.worst_stall.stacks:
            return ""
        seen = Counter(self.worst_stall.stacks).most_common(3)
        return "; within the longest stall the loop was at: " + " | ".join(
            f"{count}x {stack}" for stack, count in seen)
