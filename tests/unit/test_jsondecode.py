"""Large answers are decoded without stopping the event loop (reconciler/jsondecode.py): the
same values as json.loads, the loop runs while a large one is decoded, no garbage collection
runs over the process meanwhile, and a large LIST answer's items are decoded as they are read."""

from __future__ import annotations

import gc
import json
import threading
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

from reconciler import jsondecode
from reconciler.jsondecode import INLINE_BYTES, INLINE_VALUES, ListItems, loads, loads_list, values
from reconciler.kube import one_at_a_time


def at_the_size_limit() -> str:
    """A NimbusPolicy of 31,500 rules, 1.54 MB, as the API server sends it."""
    rules = [{"id": f"unknown-{i:05d}", "rule": {"action": "Block"}} for i in range(31_500)]
    return json.dumps({"apiVersion": "intent.security.nimbus.com/v1alpha1",
                       "kind": "NimbusPolicy", "metadata": {"name": "big", "namespace": "ns"},
                       "spec": {"selector": {"matchLabels": {"app": "ünïcode ✓"}},
                                "rules": rules}}, separators=(",", ":"))


async def test_the_same_values_as_json_loads() -> None:
    big = at_the_size_limit()
    assert len(big) > INLINE_BYTES and values(big) > INLINE_VALUES
    for text in ('{"a": [1, 2.5, null, true, "\\u00e9\\ud83d\\ude00"]}', "[]", big,
                 json.dumps({"k": ["é" * 100] * 20_000, "n": {"x": {}}}, ensure_ascii=False)):
        assert await loads(text) == json.loads(text)
        assert await loads(text.encode()) == json.loads(text)
    with pytest.raises(json.JSONDecodeError):
        await loads(big[:-1])


async def test_the_loop_runs_while_a_large_body_is_decoded() -> None:
    """json.loads holds the GIL until it is done, in whichever thread: a ticker in the loop would
    not run once while it works. The decode here leaves the loop running throughout."""
    big = at_the_size_limit().encode()
    ticks: list[float] = []
    done = anyio.Event()

    async def ticker() -> None:
        while not done.is_set():
            await anyio.sleep(0.001)
            ticks.append(anyio.current_time())

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(ticker)
        await anyio.sleep(0.01)
        started = len(ticks)
        decoded = await loads(big)
        during = len(ticks) - started
        done.set()
    assert len(decoded["spec"]["rules"]) == 31_500
    # json.loads, even in a thread, lets it run twice at most (as the thread starts and ends);
    # how often it runs meanwhile depends on the machine's load (17-25 times at a load of 8)
    assert during >= 5, f"the loop ran {during} times while the body was decoded"


async def test_no_collection_runs_while_a_large_body_is_decoded() -> None:
    """json.loads of it runs some 90 collections here, moving what it builds (alive until the
    end) into older generations; in a process holding the reconciler's caches that sets off
    full collections of 60-100 ms, each holding the GIL over the whole process."""
    big = at_the_size_limit()
    collections: list[dict[str, Any]] = []

    def record(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collections.append(info)

    gc.collect()
    gc.callbacks.append(record)
    try:
        decoded = await loads(big)
        during = list(collections)
        # and the collector is on again afterwards
        assert gc.isenabled()
    finally:
        gc.callbacks.remove(record)
    assert len(decoded["spec"]["rules"]) == 31_500
    # at most the first collection after it, of the youngest generation
    assert [c["generation"] for c in during] in ([], [0]), during


class CountingPause(jsondecode._CollectorPause):
    """The collector pause, counting the decodes under way in threads at once."""

    def __init__(self) -> None:
        super().__init__()
        self.most = 0

    def __enter__(self) -> None:
        super().__enter__()
        with self._lock:
            self.most = max(self.most, self._decoding)


async def test_large_bodies_are_decoded_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each thread that wants the GIL makes the loop wait longer for it: decodes in as many
    threads at once as there are large answers (four workers' status answers, the watches of
    many namespaces) kept the loop from running for seconds. They take their turns, and a large
    LIST answer's batches take theirs among them."""
    pause = CountingPause()
    monkeypatch.setattr(jsondecode, "_collector_pause", pause)
    big = at_the_size_limit().encode()
    page = list_page([rules(3_000, f"big-{i}") for i in range(4)]).encode()
    results: list[Any] = []

    async def decode() -> None:
        results.append(await loads(big))

    async def read_list() -> None:
        listed = await loads_list(page)
        results.append([item async for item in one_at_a_time(listed["items"])])

    async with anyio.create_task_group() as decodes:
        for _ in range(5):
            decodes.start_soon(decode)
        decodes.start_soon(read_list)
    assert len(results) == 6 and all(results)
    assert pause.most == 1, f"{pause.most} large decodes ran at once"


def test_the_collector_pause_nests_across_threads_and_keeps_it_off_if_it_was() -> None:
    pause = jsondecode._CollectorPause()
    inside, release = threading.Event(), threading.Event()

    def decode() -> None:
        with pause:
            inside.set()
            release.wait(10)

    other = threading.Thread(target=decode)
    with pause:
        other.start()
        assert inside.wait(10)
        assert not gc.isenabled()
    assert not gc.isenabled()  # the other decode is still under way
    release.set()
    other.join()
    assert gc.isenabled()
    gc.disable()
    try:
        with pause:
            pass
        assert not gc.isenabled()  # whoever turned it off decides when it comes back
    finally:
        gc.enable()


def list_page(items: list[Any], **extra: Any) -> str:
    return json.dumps({"kind": "NimbusPolicyList", "apiVersion": "intent.security.nimbus.com/v1alpha1",
                       "metadata": {"resourceVersion": "42", "continue": "token"},
                       "items": items, **extra}, separators=(",", ":"))


def rules(count: int, name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"rules": [
        {"id": f"unknown-{i:05d}", "rule": {"action": "Block"}} for i in range(count)]}}


async def test_a_small_list_answer_is_decoded_whole() -> None:
    text = list_page([rules(3, "a"), rules(3, "b")])
    page = await loads_list(text.encode())
    assert page == json.loads(text) and isinstance(page["items"], list)


async def test_a_large_list_answer_is_decoded_as_its_items_are_read() -> None:
    items = [rules(6_000, f"big-{i}") if i % 3 == 0 else rules(2, f"small-{i}") for i in range(9)]
    items.append(None)  # a null item is an item like any other
    text = list_page(items)
    page = await loads_list(text.encode())
    assert isinstance(page["items"], ListItems) and page["items"]
    assert page["metadata"] == {"resourceVersion": "42", "continue": "token"}  # before the items
    assert [item async for item in one_at_a_time(page["items"])] == items
    assert list((await loads_list(text.encode()))["items"]) == items  # read in this thread too
    # members after the items (no API server writes them) are read once the items are
    trailing = list_page(items, extra={"x": [1]})
    page = await loads_list(trailing.encode())
    assert [item async for item in page["items"]] == items and page["extra"] == {"x": [1]}
    # an answer shaped otherwise (metadata after the items) is decoded whole
    reordered = json.dumps({"items": items, "metadata": {"resourceVersion": "42"}})
    assert await loads_list(reordered.encode()) == json.loads(reordered)
    for broken in (text[:-1], text[:len(text) // 2], text + "]"):
        with pytest.raises(json.JSONDecodeError):
            page = await loads_list(broken.encode())
            [item async for item in page["items"]]


async def test_a_large_list_answer_holds_one_batch_of_objects_at_a_time() -> None:
    """Eight NimbusPolicies of 2,000 rules in one page: whole, about 8 times the memory of one;
    read item by item, each let go before the next is decoded, about one."""
    text = list_page([rules(2_000, f"big-{i}") for i in range(8)]).encode()

    def peak(read: Callable[[], Awaitable[None]]) -> float:
        gc.collect()
        tracemalloc.start()
        try:
            anyio.run(read)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    async def whole() -> None:
        page = json.loads(text)
        assert len(page["items"]) == 8

    async def item_by_item() -> None:
        page = await loads_list(text)
        names = [item["metadata"]["name"] async for item in one_at_a_time(page["items"])]
        assert len(names) == 8

    whole_peak, lazy_peak = await anyio.to_thread.run_sync(lambda: (peak(whole), peak(item_by_item)))
    assert lazy_peak < whole_peak / 3, (lazy_peak, whole_peak)
