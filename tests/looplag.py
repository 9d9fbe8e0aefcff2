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
"""

from __future__ import annotations

import time

import anyio
import attrs


@attrs.frozen
class Wakeup:
    at: float  # time.monotonic() when it came
    late: float  # seconds later than asked (wall)
    busy: float  # CPU seconds the loop's thread used meanwhile
    process_busy: float  # CPU seconds every thread of the process used meanwhile

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
        while True:
            wall, cpu, process = time.monotonic(), time.thread_time(), time.process_time()
            await anyio.sleep(self.period)
            now = time.monotonic()
            wakeup = Wakeup(now, now - wall - self.period, time.thread_time() - cpu,
                            time.process_time() - process)
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
                f"; {self.wakeups} wake-ups")
