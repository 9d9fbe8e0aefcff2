"""The work queue's semantics (client-go's workqueue plus live-before-backlog priority)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from reconciler.clock import FakeClock
from reconciler.metrics import Metrics
from reconciler.ratelimit import ItemExponentialBackoff, MaxOf, TokenBucket
from reconciler.workqueue import Priority, QueueShutDown, WorkQueue


def drain_now(queue: WorkQueue) -> list[str]:
    keys = []
    while (key := queue.get_nowait()) is not None:
        keys.append(key)
    return keys


def test_dedup_fifo_and_no_second_holder() -> None:
    queue = WorkQueue(clock=FakeClock())
    for key in ["a", "b", "a", "c", "b"]:
        queue.add(key)
    assert len(queue) == 3
    assert queue.get_nowait() == "a"
    queue.add("a")  # while processing: marked dirty, not handed to another worker
    assert drain_now(queue) == ["b", "c"]
    queue.done("a")
    assert drain_now(queue) == ["a"]


def test_add_while_processing_is_handed_out_once_after_done() -> None:
    queue = WorkQueue(clock=FakeClock())
    queue.add("k")
    assert queue.get_nowait() == "k"
    queue.add("k")
    queue.add("k")
    assert queue.get_nowait() is None
    queue.done("k")
    assert queue.get_nowait() == "k"
    queue.done("k")
    assert queue.get_nowait() is None


def test_live_keys_go_ahead_of_the_backlog() -> None:
    queue = WorkQueue(clock=FakeClock())
    for i in range(5):
        queue.add(f"old-{i}", Priority.BACKLOG)
    queue.add("new")
    queue.add("old-3")  # a live event for a key in the backlog promotes it
    assert drain_now(queue) == ["new", "old-3", "old-0", "old-1", "old-2", "old-4"]


def test_add_after_waits_for_the_clock_and_only_moves_earlier() -> None:
    clock = FakeClock()
    queue = WorkQueue(clock=clock)
    queue.add_after("k", 10)
    queue.add_after("k", 20)  # later: ignored
    queue.add_after("j", 5)
    clock.advance(4.9)
    assert queue.get_nowait() is None
    clock.advance(0.1)
    assert drain_now(queue) == ["j"]
    queue.add_after("k", 1)  # earlier: moves it
    clock.advance(1)
    assert drain_now(queue) == ["k"]
    clock.advance(100)
    assert drain_now(queue) == []  # the superseded entry does not hand it out twice


async def test_get_waits_for_an_add_and_for_a_delay() -> None:
    clock = FakeClock()
    queue = WorkQueue(clock=clock)
    waiter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not waiter.done()
    queue.add("now")
    assert await asyncio.wait_for(waiter, 1) == "now"
    waiter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    queue.add_after("later", 30)
    for _ in range(3):
        await asyncio.sleep(0)
    assert not waiter.done() and clock.pending_timers == 1
    clock.advance(30)
    assert await asyncio.wait_for(waiter, 1) == "later"


def test_rate_limited_backoff_doubles_and_forget_resets() -> None:
    clock = FakeClock()
    limiter = ItemExponentialBackoff(base=0.005, max_delay=1000)
    delays = [limiter.when("k") for _ in range(20)]
    assert delays[:4] == [0.005, 0.01, 0.02, 0.04]
    assert delays[-1] == 1000 and max(delays) == 1000
    assert limiter.num_requeues("k") == 20
    limiter.forget("k")
    assert limiter.when("k") == 0.005
    queue = WorkQueue(clock=clock, rate_limiter=MaxOf(ItemExponentialBackoff(1, 8)))
    queue.add_rate_limited("k")
    queue.add_rate_limited("k")  # 2 s: later than the 1 s already waiting, ignored
    assert queue.num_requeues("k") == 2
    clock.advance(1)
    assert drain_now(queue) == ["k"]
    queue.forget("k")
    assert queue.num_requeues("k") == 0


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=100, clock=clock)
    assert [bucket.when(str(i)) for i in range(100)] == [0.0] * 100
    assert bucket.when("x") == pytest.approx(0.1)
    assert bucket.when("y") == pytest.approx(0.2)
    clock.advance(60)  # refills, but never above the burst
    assert [bucket.when(str(i)) for i in range(100)] == [0.0] * 100
    assert bucket.when("z") > 0


def test_shutdown_hands_out_what_is_queued_then_raises() -> None:
    clock = FakeClock()
    queue = WorkQueue(clock=clock)
    queue.add("a")
    queue.add("b")
    queue.add_after("delayed", 1)
    queue.shutdown()
    queue.add("ignored")
    assert [queue.get_nowait(), queue.get_nowait()] == ["a", "b"]
    clock.advance(5)
    with pytest.raises(QueueShutDown):
        queue.get_nowait()


async def test_shutdown_and_drain_waits_for_processing() -> None:
    queue = WorkQueue(clock=FakeClock())
    queue.add("busy")
    key = await queue.get()
    blocked = asyncio.create_task(queue.get())
    drained = asyncio.create_task(queue.shutdown_and_drain())
    with pytest.raises(QueueShutDown):
        await asyncio.wait_for(blocked, 1)
    await asyncio.sleep(0)
    assert not drained.done()
    queue.done(key)
    await asyncio.wait_for(drained, 1)


def test_metrics() -> None:
    clock = FakeClock()
    registry = CollectorRegistry()
    queue = WorkQueue("q", clock=clock, metrics=Metrics(registry).queue("q", "c"))
    labels = {"name": "q", "controller": "c"}

    def value(name: str) -> float:
        found = registry.get_sample_value(name, labels)
        assert found is not None, name
        return found

    queue.add("a")
    queue.add("a")
    queue.add("b")
    assert value("workqueue_adds_total") == 2 and value("workqueue_depth") == 2
    clock.advance(2)
    queue.get_nowait()
    assert value("workqueue_depth") == 1
    assert value("workqueue_queue_duration_seconds_sum") == 2
    bucket = {"le": "1.0", **labels}
    assert registry.get_sample_value("workqueue_queue_duration_seconds_bucket", bucket) == 0
    bucket["le"] = "10.0"  # 2 s lands in the first bucket whose bound is at least 2 s
    assert registry.get_sample_value("workqueue_queue_duration_seconds_bucket", bucket) == 1
    clock.advance(3)
    assert value("workqueue_unfinished_work_seconds") == 3
    assert value("workqueue_longest_running_processor_seconds") == 3
    queue.done("a")
    assert value("workqueue_work_duration_seconds_sum") == 3
    assert value("workqueue_longest_running_processor_seconds") == 0
    queue.add_rate_limited("a")
    assert value("workqueue_retries_total") == 1
    buckets = [s.labels["le"] for m in registry.collect() for s in m.samples
               if s.name == "workqueue_queue_duration_seconds_bucket" and s.labels["name"] == "q"]
    assert buckets[0] == "1e-08" and buckets[-2] == "1000.0" and len(buckets) == 13
