"""tests/looplag.py measures what a ready task waits for: one long callback, and several that
each hold the loop a little but are ready together, the same."""

from __future__ import annotations

import asyncio
import time

import anyio

from tests.looplag import LoopLag


def burn(seconds: float) -> None:
    """Hold the loop's thread on its CPU for `seconds` of its CPU time."""
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


async def measured(work: object) -> LoopLag:
    lag = LoopLag()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(lag.run)
        await anyio.sleep(0.05)  # the ticker under way
        await work  # type: ignore[misc]
        await anyio.sleep(0.05)
        tasks.cancel_scope.cancel()
    return lag


async def test_one_long_callback() -> None:
    async def work() -> None:
        burn(0.08)
    lag = await measured(work())
    assert lag.longest_stall >= 0.07, lag.summary()
    assert "burn" in lag.where(), lag.summary()  # where the loop was, sampled


async def test_several_ready_together_add_up() -> None:
    async def step() -> None:
        await asyncio.sleep(0)
        burn(0.02)

    async def work() -> None:
        await asyncio.gather(*(step() for _ in range(4)))
    lag = await measured(work())
    assert lag.longest_stall >= 0.06, lag.summary()
    assert lag.worst_stall.longest[0].cpu < 0.04, lag.summary()  # no one of them was long


async def test_an_idle_loop_is_not_stalled() -> None:
    lag = await measured(anyio.sleep(0.2))
    assert lag.longest_stall < 0.02 and lag.wakeups > 10, lag.summary()


async def test_the_loop_is_left_as_it_was() -> None:
    original = asyncio.events.Handle._run
    await measured(anyio.sleep(0.01))
    assert asyncio.events.Handle._run is original
