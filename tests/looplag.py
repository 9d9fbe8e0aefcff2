"""How long the event loop goes without running a task that is ready to run.

A ticker asks to wake every `period` seconds and records how late each wake-up comes. Wall
time alone would also count the moments this process waited for a core on a busy machine (the
API server, etcd and other test runs share it), so each late wake-up is also measured in the CPU
time of the loop's own thread meanwhile: what the loop itself spent while the ticker waited (a
callback that does not yield, a garbage collection). `longest_stall` is the part of the worst
wake-up's lateness that this accounts for; `longest_gap` is the wall time of the worst one.

A worker thread of this process holding the GIL would delay the loop without showing in its
thread's CPU time; the only one the reconciler has (jsondecode.py) runs Python code, which the
interpreter makes hand the GIL over every switch interval (5 ms), and its test checks that. The
CPU time of the whole process within the worst wake-up is recorded too, for the record.

Where the loop was: while a wake-up is overdue by more than SAMPLE_AFTER, a watchdog thread
samples the loop thread's stack every SAMPLE_EVERY; the samples taken within the worst stall are
kept and summarised, so a failure names the code that held the loop (a sample is taken when the
watchdog gets the GIL: C code that holds it throughout shows as the Python line that called it).
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import Counter

import anyio
import attrs

SAMPLE_AFTER = 0.015
SAMPLE_EVERY = 0.005


@attrs.frozen
class Wakeup:
    at: float  # time.monotonic() when it came
    late: float  # seconds later than asked (wall)
    busy: float  # CPU seconds the loop's thread used meanwhile
    process_busy: float  # CPU seconds every thread of the process used meanwhile
    stacks: tuple[str, ...] = ()  # the loop thread's innermost frames, sampled meanwhile

    @property
    def stall(self) -> float:
        """The part of the delay the loop's own work accounts for."""
        return min(self.late, self.busy)


NONE = Wakeup(0.0, 0.0, 0.0, 0.0)


class LoopLag:
    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.wakeups = 0
        self.worst_stall = self.worst_gap = NONE
        # Samples of the wake-up under way: appended by the watchdog thread, taken (swapped for
        # a new list, one atomic assignment) by the ticker when it wakes.
        self._samples: list[str] = []
        self._asleep_since: float | None = None  # None while the ticker runs

    @property
    def longest_stall(self) -> float:
        return self.worst_stall.stall

    @property
    def longest_gap(self) -> float:
        return self.worst_gap.late

    def reset(self) -> None:
        self.wakeups = 0
        self.worst_stall = self.worst_gap = NONE

    async def run(self) -> None:
        """Until cancelled."""
        stop = threading.Event()
        watchdog = threading.Thread(target=self._watch, args=(threading.get_ident(), stop),
                                    name="looplag-watchdog", daemon=True)
        watchdog.start()
        try:
            await self._tick()
        finally:
            stop.set()
            watchdog.join()

    def _watch(self, loop_thread: int, stop: threading.Event) -> None:
        while not stop.wait(SAMPLE_EVERY):
            since = self._asleep_since
            if since is None or time.monotonic() - since < self.period + SAMPLE_AFTER:
                continue
            frame = sys._current_frames().get(loop_thread)
            if frame is not None:
                inner = traceback.extract_stack(frame)[-6:]
                self._samples.append(" <- ".join(
                    f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}" for f in reversed(inner)))

    async def _tick(self) -> None:
        while True:
            wall, cpu, process = time.monotonic(), time.thread_time(), time.process_time()
            self._samples = []
            self._asleep_since = wall
            await anyio.sleep(self.period)
            self._asleep_since = None
            now = time.monotonic()
            wakeup = Wakeup(now, now - wall - self.period, time.thread_time() - cpu,
                            time.process_time() - process, tuple(self._samples))
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
                f"; {self.wakeups} wake-ups{self.where()}")

    def where(self) -> str:
        """The loop thread's frames sampled within the worst stall, most often seen first."""
        if not self.worst_stall.stacks:
            return ""
        seen = Counter(self.worst_stall.stacks).most_common(3)
        return "; within the longest stall the loop was at: " + " | ".join(
            f"{count}x {stack}" for stack, count in seen)
