"""Work queue throughput: add+get+done cycles over 10k keys with 4 workers, and 200k adds
coalescing onto 10k keys. The baseline is a bare asyncio.Queue doing the same puts and gets
(no dedup, no processing set, no priority) in the same run."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from reconciler.metrics import Metrics
from reconciler.workqueue import QueueShutDown, WorkQueue

KEYS = [f"ns-{i % 50}/np-{i}" for i in range(10_000)]
WORKERS = 4


class Workers:
    """WORKERS coroutines that take keys and mark them done at once, counting hand-outs."""

    def __init__(self, queue: WorkQueue) -> None:
        self.queue = queue
        self.handed_out = 0
        self.tasks = [asyncio.create_task(self._work()) for _ in range(WORKERS)]

    async def _work(self) -> None:
        while True:
            try:
                key = await self.queue.get()
            except QueueShutDown:
                return
            self.handed_out += 1
            self.queue.done(key)

    async def finish(self) -> int:
        await self.queue.shutdown_and_drain()
        await asyncio.gather(*self.tasks)
        return self.handed_out


def _queue(metrics: bool) -> WorkQueue:
    queue_metrics = Metrics(CollectorRegistry()).queue("bench", "bench") if metrics else None
    return WorkQueue("bench", metrics=queue_metrics)


async def cycles(rounds: int, metrics: bool) -> tuple[int, float]:
    queue = _queue(metrics)
    started = time.perf_counter()
    workers = Workers(queue)
    for _ in range(rounds):
        for key in KEYS:
            queue.add(key)
        await asyncio.sleep(0)  # let the workers run between rounds
    handed_out = await workers.finish()
    return handed_out * 3, time.perf_counter() - started  # one add, get and done per hand-out


async def baseline_cycles(rounds: int) -> tuple[int, float]:
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    handed_out = 0

    async def worker() -> None:
        nonlocal handed_out
        while await queue.get() is not None:
            handed_out += 1
            queue.task_done()

    started = time.perf_counter()
    tasks = [asyncio.create_task(worker()) for _ in range(WORKERS)]
    for _ in range(rounds):
        for key in KEYS:
            queue.put_nowait(key)
        await asyncio.sleep(0)
    for _ in tasks:
        queue.put_nowait(None)
    await asyncio.gather(*tasks)
    return handed_out * 3, time.perf_counter() - started


async def coalescing(metrics: bool) -> tuple[int, int, float]:
    queue = _queue(metrics)
    started = time.perf_counter()
    for _ in range(20):
        for key in KEYS:
            queue.add(key)
    handed_out = await Workers(queue).finish()
    return 200_000, handed_out, time.perf_counter() - started


def run(quick: bool = False) -> dict[str, float]:
    rounds = 3 if quick else 20
    results: dict[str, float] = {}
    for label, metrics in (("", False), ("_with_metrics", True)):
        ops, seconds = asyncio.run(cycles(rounds, metrics))
        results[f"queue_ops_per_s{label}"] = ops / seconds
        adds, handed_out, seconds = asyncio.run(coalescing(metrics))
        assert handed_out == len(KEYS), f"200k adds over 10k keys handed out {handed_out}"
        results[f"coalesce_adds_per_s{label}"] = adds / seconds
    ops, seconds = asyncio.run(baseline_cycles(rounds))
    results["baseline_asyncio_queue_ops_per_s"] = ops / seconds
    results["queue_vs_asyncio_queue"] = (results["queue_ops_per_s"]
                                         / results["baseline_asyncio_queue_ops_per_s"])
    return results
