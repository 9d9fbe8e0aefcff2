"""How each kind of point perturbs the reconciler's view, on the fault proxy between it and the
API server: rules installed before the run starts, and for some kinds an orchestration that runs
beside the workload (it waits for the point's moment, then releases what it holds in the order
the point names). Every hold has a time limit (`Context.hold_limit`): a condition that does not
come is noted, and the hold released, so no run waits for ever.

A perturbation counts writes and events as the trace does (trace.py's keys), live, in the
proxy's thread: `where=` of a rule sees every write as it arrives, a Steer's `decide` every event
of the watched resource.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import httpx

from tests.e2e.nimbus import kubearmor_policies, nimbus_policies
from tests.faultproxy import (
    Cut,
    Exchange,
    FaultProxy,
    Gate,
    Hold,
    Pass,
    ResetAnswered,
    Rule,
    SlowAnswer,
    Stall,
    Steer,
    Verdict,
    WatchEvent,
)
from tests.sieve.points import Point
from tests.sieve.trace import Numbering, event_base, key_name, key_resource, write_base

G = TypeVar("G", bound=Gate)
POLL = 0.02
LINGER = 1.0  # how long a stale event's view lasts at most before the news after it comes


@attrs.define
class Context:
    proxy: FaultProxy
    api: httpx.AsyncClient  # someone else's: the user's
    namespace: str
    kill: Callable[[], None]  # SIGKILL the reconciler (a process)
    hold_limit: float


async def until(condition: Callable[[], Any]) -> Any:
    """Wait for `condition` with no deadline (the run cancels what is left when it ends)."""
    return await within(math.inf, condition)


async def within(seconds: float, condition: Callable[[], Any]) -> Any:
    """`condition`'s first truthy value within `seconds`, else None (condition may be async)."""
    deadline = time.monotonic() + seconds
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result or time.monotonic() > deadline:
            return result or None
        await asyncio.sleep(POLL)


class Perturbation:
    """A point's perturbation. `reached`: its moment came in this run; `notes`: what happened."""

    def __init__(self, point: Point, context: Context) -> None:
        self.point, self.context = point, context
        self.reached = False
        self.notes: list[str] = []
        self._gates: list[Gate] = []  # what it holds, released by finish() at the latest

    @property
    def resource(self) -> str:
        return key_resource(self.point.key)

    @property
    def name(self) -> str:
        return key_name(self.point.key)

    def install(self) -> None:
        """Add the rules it needs before the reconciler starts."""

    async def orchestrate(self) -> None:
        """Runs beside the workload; cancelled when the run ends."""

    def busy(self) -> bool:
        """Whether it holds something now (the reconciler is not idle of its own accord).
        Every kind's holds start at its point."""
        return self.reached and any(not gate.released for gate in self._gates)

    def finish(self) -> None:
        """Release whatever it still holds."""
        for gate in self._gates:
            gate.release()

    def _gate(self, gate: G) -> G:
        self._gates.append(gate)
        return gate

    def _is_point(self, numbering: Numbering, base: str | None) -> bool:
        return base is not None and not self.reached and numbering.key(base) == self.point.key

    def _write_rule(self, answer: Any) -> Rule:
        """A rule answering the point's write with `answer`."""
        numbering = Numbering()

        def where(exchange: Exchange) -> bool:
            return self._is_point(numbering, write_base(exchange))
        return self.context.proxy.add(Rule(answer, kind="write", where=where, times=1))

    def _event_rule(self, decide: Callable[[WatchEvent], Verdict],
                    query: Callable[[dict[str, str]], dict[str, str]] | None = None,
                    then: Callable[[WatchEvent], Verdict] | None = None) -> Rule:
        """A rule on the watches of the point's resource: `decide` answers the point's event,
        `then` the one after it; every other event passes."""
        numbering = Numbering()
        after = [then]

        def steer(exchange: Exchange, event: WatchEvent) -> Verdict:
            if self._is_point(numbering, event_base(exchange.path, event)):
                self.reached = True
                return decide(event)
            if self.reached and after[0] is not None:
                next_one, after[0] = after[0], None
                return next_one(event)
            return Pass()
        return self.context.proxy.add(Rule(Steer(decide=steer, query=query), kind="watch",
                                           path=f"/{self.resource}"))

    async def _read(self) -> dict[str, Any] | None:
        """The point's object as the API server has it now (None: there is none)."""
        collection = (nimbus_policies if self.resource == "nimbuspolicies"
                      else kubearmor_policies)(self.context.namespace)
        response = await self.context.api.get(f"{collection}/{self.name}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]


class Crash(Perturbation):
    """SIGKILL right after the API server answers the write; its answer never arrives."""

    def install(self) -> None:
        self._write_rule(ResetAnswered(then=self._kill))

    def _kill(self, exchange: Exchange) -> None:  # in the proxy's thread
        self.context.kill()
        self.reached = True
        self.notes.append(f"killed once the API server had answered {exchange.status}")


class Gone(Perturbation):
    """The write held; a 410 ends the watch of its resource; the relist's LIST served at once
    (so from before the write) but its answer held; the write let go and answered; then the
    LIST's answer delivered: a relist racing a write in flight, the LIST read after the write's
    answer although served before it."""

    async def orchestrate(self) -> None:
        proxy = self.context.proxy
        held = self._write_rule(self._gate(Stall()))
        await until(lambda: proxy.requests(rule=held))
        self.reached = True
        late = self._gate(Gate())
        page = proxy.add(Rule(SlowAnswer(until=late), kind="list", path=f"/{self.resource}", times=1,
                              where=lambda e: "continue=" not in e.query))
        if not proxy.end_open(path=f"/{self.resource}"):
            self.notes.append("no watch was open to end")
        if not await within(self.context.hold_limit,
                            lambda: [e for e in proxy.requests(rule=page) if e.status]):
            self.notes.append(f"no relist within {self.context.hold_limit}s")
        held.release()
        answered = await within(self.context.hold_limit,
                                lambda: [e for e in proxy.requests(rule=held) if e.done])
        self.notes.append(f"write answered {answered and answered[0].status} before the LIST")
        late.release()


class Straddle(Perturbation):
    """The write held; a 410 ends the watch; the relist's page 1 (or 2) held; the write answered;
    its object deleted by someone else; then the page served."""

    def __init__(self, point: Point, context: Context, page: int) -> None:
        super().__init__(point, context)
        self.page = page

    async def orchestrate(self) -> None:
        proxy = self.context.proxy
        held = self._write_rule(self._gate(Stall()))
        await until(lambda: proxy.requests(rule=held))
        paged = self.page == 2
        page = proxy.add(Rule(self._gate(Stall()), kind="list", path=f"/{self.resource}", times=1,
                              where=lambda e: ("continue=" in e.query) == paged))
        proxy.end_open(path=f"/{self.resource}")
        if not await within(self.context.hold_limit, lambda: proxy.requests(rule=page)):
            self.notes.append(f"the relist asked for no page {self.page}")
            self.finish()
            return
        self.reached = True
        held.release()
        answered = await within(self.context.hold_limit,
                                lambda: [e for e in proxy.requests(rule=held) if e.done])
        self.notes.append(f"write answered {answered and answered[0].status}")
        response = await self.context.api.delete(
            f"{kubearmor_policies(self.context.namespace)}/{self.name}")
        self.notes.append(f"{self.name} deleted by someone else: {response.status_code}")
        if not await within(self.context.hold_limit, self._gone):
            self.notes.append(f"not gone within {self.context.hold_limit}s")
        page.release()

    async def _gone(self) -> bool:
        return await self._read() is None


class Drop(Perturbation):
    """The stream cut right before the event; the next watch resumes past it."""

    def install(self) -> None:
        self._resume: str | None = None
        self._event_rule(self._cut, query=self._past_it)

    def _cut(self, event: WatchEvent) -> Verdict:
        self._resume = event.resource_version
        return Cut()

    def _past_it(self, query: dict[str, str]) -> dict[str, str]:
        resume, since = self._resume, query.get("resourceVersion", "")
        if resume is None or not since.isdigit() or int(since) >= int(resume):
            return query
        self._resume = None
        self.notes.append(f"watch resumed at {resume} instead of {since}")
        return {**query, "resourceVersion": resume}


class StaleEvent(Perturbation):
    """The event held, with the events after it, until `_released()` or the time limit; then
    the stream pauses again right after it, so that the reconciler acts on the view it gives
    (until one of our writes is answered, or for at most LINGER seconds): a late event followed
    at once by the news that supersedes it would leave no stale view to act on."""

    what = ""

    def install(self) -> None:
        self._held, self._next = self._gate(Gate()), self._gate(Gate())
        self._held_at = 0.0
        self._uid = ""
        self._event_rule(self._hold, then=lambda _: Hold(self._next))

    def _hold(self, event: WatchEvent) -> Verdict:
        self._held_at, self._uid = time.monotonic(), event.uid
        return Hold(self._held)

    async def orchestrate(self) -> None:
        await until(lambda: self.reached)
        if not await within(self.context.hold_limit, self._released):
            self.notes.append(f"released after {self.context.hold_limit}s: {self.what} did not "
                              "happen meanwhile")
        released = time.monotonic()
        self._held.release()
        await within(LINGER, lambda: [e for e in self.context.proxy.requests(kind="write")
                                      if e.at > released and e.done])
        self._next.release()

    async def _released(self) -> bool:
        raise NotImplementedError


class StaleUntilWrite(StaleEvent):
    what = "no write of ours to the object was answered"

    async def _released(self) -> bool:
        return any(e.done and not e.reset and e.at > self._held_at
                   and (base := write_base(e)) is not None
                   and key_resource(base + "#") == self.resource and key_name(base + "#") == self.name
                   for e in self.context.proxy.requests(kind="write"))


class StaleUntilAnswer(StaleEvent):
    what = "no write of ours was answered"

    async def _released(self) -> bool:
        return any(e.done and not e.reset and e.at > self._held_at
                   for e in self.context.proxy.requests(kind="write"))


class StaleUntilDeleted(StaleEvent):
    """Until the object is gone; a NimbusPolicy's DELETED, until its policies are too (the
    garbage collector's work)."""

    what = "the object (or the deleted NimbusPolicy's policies) was not deleted"

    async def _released(self) -> bool:
        if self.point.key.startswith("DELETED/"):
            response = await self.context.api.get(kubearmor_policies(self.context.namespace))
            return not any(r.get("uid") == self._uid for p in response.json()["items"]
                           for r in p["metadata"].get("ownerReferences") or [])
        now = await self._read()
        return now is None or now["metadata"]["uid"] != self._uid


class StaleRelist(Perturbation):
    """The event delivered; then a 410, and the relist's LIST answered from the snapshot just
    before the event (resourceVersionMatch=Exact), so the watch after it brings the event again;
    that watch's first event waits until one of our writes is answered (at most LINGER
    seconds), so that the reconciler acts on the stale snapshot."""

    def install(self) -> None:
        self._since = ""
        self._replay = self._gate(Gate())
        self._event_rule(self._delivered, then=lambda _: Hold(self._replay))

    def _delivered(self, event: WatchEvent) -> Verdict:
        self._since = str(int(event.resource_version) - 1)
        return Pass()

    async def orchestrate(self) -> None:
        proxy = self.context.proxy
        await until(lambda: self.reached)
        since = self._since
        stale = proxy.add(Rule(Steer(query=lambda q: {**q, "resourceVersion": since,
                                                      "resourceVersionMatch": "Exact"}),
                               kind="list", path=f"/{self.resource}", times=1,
                               where=lambda e: "continue=" not in e.query))
        listing = self._gate(Gate())
        proxy.end_open(path=f"/{self.resource}")
        listed = await within(self.context.hold_limit,
                              lambda: [e for e in proxy.requests(rule=stale) if e.done])
        self.notes.append(f"relisted at {since}: " + (f"answered {listed[0].status}" if listed
                                                       else "no relist came"))
        listing.release()
        if listed:
            await within(LINGER, lambda: [e for e in proxy.requests(kind="write")
                                          if e.at > listed[0].at and e.done])
        self._replay.release()


def perturbation(point: Point, context: Context) -> Perturbation:
    match point.kind:
        case "crash":
            return Crash(point, context)
        case "gone":
            return Gone(point, context)
        case "straddle1" | "straddle2":
            return Straddle(point, context, int(point.kind[-1]))
        case "drop":
            return Drop(point, context)
        case "stale-write":
            return StaleUntilWrite(point, context)
        case "stale-answer":
            return StaleUntilAnswer(point, context)
        case "stale-delete":
            return StaleUntilDeleted(point, context)
        case "stale-relist":
            return StaleRelist(point, context)
    raise ValueError(point.kind)

