"""One run of the workload: on its own namespace and fault proxy, with the reconciler talking
to the API server through the proxy, unperturbed (the reference) or at one point; then the
oracle. The reconciler runs

- in the test's event loop (as tests/e2e/conftest.py's RunningReconciler) for every kind but
  crash: the perturbation is all on the wire, so this is faithful, starts in a fraction of a
  second, and lets the run see that the reconciler is idle (its queue empty, nothing processing
  or delayed, every watch open) while the cluster is still wrong: stuck, a failure at once
  rather than at a deadline;
- as a real process (tests/process.py) for crash points: only a real SIGKILL loses what a
  process holds without any `finally` running; a supervisor restarts it at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import httpx

from reconciler.controller import ControllerConfig
from reconciler.logs import TextFormatter
from tests.controlplane.launcher import LocalControlPlane
from tests.e2e.conftest import RunningReconciler
from tests.faultproxy import FaultProxy
from tests.process import ReconcilerProcess
from tests.sieve.oracle import Cluster, EndState, deleted_twice, writes_while_quiet
from tests.sieve.perturb import Context, Perturbation, perturbation
from tests.sieve.points import Point
from tests.sieve.trace import Trace, trace_of, write_base
from tests.sieve.workload import Workload


@attrs.frozen
class Settings:
    step_timeout: float = 20.0  # for each step to be as the builder says
    stuck_after: float = 5.0  # in-loop: idle this long while the cluster is wrong is a failure
    final_timeout: float = 15.0  # for the end state to equal the reference's
    quiet: float = 2.0  # seconds without a write at the end
    hold_limit: float = 3.0  # the longest a perturbation holds anything
    page_size: int = 2  # LIST pages of the in-loop reconciler (several pages to straddle)


# The notes a perturbation leaves when a step of its interleaving did not come about within its
# time limit (perturb.py): the point then passes without being the one it names.
MISSED = ("released after", "no watch was open", "no relist within", "no relist came",
          "not gone within", "write answered []")


@attrs.frozen
class Outcome:
    point: str  # "reference" for the reference run
    mode: str
    reached: bool
    problems: tuple[str, ...]
    notes: tuple[str, ...]
    seconds: float
    writes: int  # the reconciler made (the reference's trace says how many it needed)
    log: str  # the reconciler's last log lines, when there are problems

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def missed(self) -> list[str]:
        """What of the point's interleaving did not come about (empty when all of it did)."""
        return [note for note in self.notes if note.startswith(MISSED)]

    @property
    def perturbed(self) -> bool:
        """Whether the run was the point it names: its moment came, and all that followed."""
        return self.reached and not self.missed


@attrs.frozen
class Reference:
    outcome: Outcome
    end: EndState
    trace: Trace


class Unsettled(Exception):
    pass


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: collections.deque[str] = collections.deque(maxlen=60)
        self.setFormatter(TextFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


# The lines of the in-loop run whose task logged: runs may share the event loop (the reconciler's
# tasks inherit the context of the run that started them).
_RUN_LINES: contextvars.ContextVar[_Lines | None] = contextvars.ContextVar("sieve_run_lines",
                                                                           default=None)


class _ToItsRun(logging.Handler):
    """On the "reconciler" logger while any in-loop run is under way (`runs` of them), at INFO:
    each record to the lines of the run that logged it."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.runs = 0
        self.level_before = logging.NOTSET

    def emit(self, record: logging.LogRecord) -> None:
        lines = _RUN_LINES.get()
        if lines is not None:
            lines.handle(record)

    def attach(self) -> None:
        logger = logging.getLogger("reconciler")
        if not self.runs:
            logger.addHandler(self)
            self.level_before = logger.level
            logger.setLevel(logging.INFO)
        self.runs += 1

    def detach(self) -> None:
        self.runs -= 1
        if not self.runs:
            logger = logging.getLogger("reconciler")
            logger.removeHandler(self)
            logger.setLevel(self.level_before)


_TO_ITS_RUN = _ToItsRun()


class InLoop:
    """The reconciler as a task of this event loop."""

    mode = "in-loop"

    def __init__(self, kubeconfig: Path, namespace: str, settings: Settings) -> None:
        self.running = RunningReconciler(kubeconfig, ControllerConfig(
            namespaces=(namespace,), workers=4, page_size=settings.page_size))
        self._log = _Lines()
        self._attached = False

    async def start(self) -> None:
        _RUN_LINES.set(self._log)  # (in this run's task, before the reconciler's are made)
        _TO_ITS_RUN.attach()
        self._attached = True
        await self.running.start()

    async def stop(self) -> None:
        await self.running.stop()
        if self._attached:
            _TO_ITS_RUN.detach()
            self._attached = False

    def kill(self) -> None:
        raise AssertionError("a reconciler in the test's event loop cannot be SIGKILLed")

    async def up(self) -> bool:
        return True

    def idle(self) -> bool:
        controller = self.running.controller
        return controller is not None and not len(controller.queue) and \
            not controller.queue.processing and not controller.queue.delayed and \
            not controller.readiness()

    def cache_differences(self, cluster: Cluster) -> list[str]:
        controller = self.running.controller
        assert controller is not None
        return cluster.cache_differences(controller.nimbus_policies, controller.kubearmor_policies)

    def failures(self) -> list[str]:
        task = self.running._task
        if task is not None and task.done() and not task.cancelled() and task.exception():
            return [f"the reconciler's task ended: {task.exception()!r}"]
        return []

    def log(self) -> str:
        return "\n".join(self._log.lines)


class AsProcess:
    """`python -m reconciler`, restarted at once whenever a point kills it."""

    mode = "process"

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self.process = ReconcilerProcess(kubeconfig, namespace, "--log-level", "info",
                                         "--log-format", "text", "--workers", "4")
        self._lock = threading.Lock()
        self._kills = 0  # by the point (from the proxy's thread), not yet restarted
        self._exits: list[str] = []
        self._supervisor: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.process.start()
        self._supervisor = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            if self.process.running():
                continue
            with self._lock:
                killed, self._kills = self._kills > 0, max(0, self._kills - 1)
            if not killed:
                assert self.process.process is not None
                self._exits.append(f"the reconciler exited by itself ({self.process.process.returncode})")
            self.process.start()

    def kill(self) -> None:  # from the proxy's thread
        with self._lock:
            self._kills += 1
        os.kill(self.process.pid, signal.SIGKILL)

    def idle(self) -> bool:
        return False  # a process cannot be asked: the deadlines decide

    async def up(self) -> bool:
        """Running and ready (its caches listed, its watches open)."""
        return self.process.running() and await asyncio.to_thread(self.process.ready)

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        await asyncio.to_thread(self.process.kill_if_running)

    def cache_differences(self, cluster: Cluster) -> list[str]:
        return []  # a process's caches cannot be read

    def failures(self) -> list[str]:
        return list(self._exits)

    def log(self) -> str:
        return "\n".join(self.process.log_text().splitlines()[-60:])

    def close(self) -> None:
        self.process.close()


async def run(cp: LocalControlPlane, user: str, point: Point | None, settings: Settings,
              reference: Reference | None = None) -> Outcome | Reference:
    """The workload unperturbed (point None: returns the Reference) or at `point` (returns its
    Outcome, judged against `reference`)."""
    started = time.monotonic()
    namespace = f"sieve-{uuid.uuid4().hex[:8]}"
    mode = point.mode if point is not None else "in-loop"
    async with cp.async_client() as api:
        (await api.post("/api/v1/namespaces", json={"metadata": {"name": namespace}})
         ).raise_for_status()
        try:
            with FaultProxy.for_control_plane(cp, as_user=user, record=True) as proxy:
                kubeconfig = cp.identity_kubeconfig(user, server=proxy.url)
                reconciler: InLoop | AsProcess = AsProcess(kubeconfig, namespace) \
                    if mode == "process" else InLoop(kubeconfig, namespace, settings)
                context = Context(proxy, api, namespace, reconciler.kill, settings.hold_limit)
                perturbing = perturbation(point, context) if point is not None else None
                try:
                    return await _run(api, proxy, namespace, reconciler, perturbing, settings,
                                      reference, started, str(point or "reference"))
                finally:
                    if isinstance(reconciler, AsProcess):
                        reconciler.close()
        finally:
            await api.delete(f"/api/v1/namespaces/{namespace}")


async def _run(api: httpx.AsyncClient, proxy: FaultProxy, namespace: str,
               reconciler: InLoop | AsProcess, perturbing: Perturbation | None,
               settings: Settings, reference: Reference | None, started: float,
               name: str) -> Outcome | Reference:
    workload = Workload(api, namespace)
    steps: list[tuple[str, float]] = [("setup", time.monotonic())]
    problems: list[str] = []
    end: EndState | None = None
    finished = False  # every step settled: its writes compare with the reference's
    await workload.setup()
    if perturbing is not None:
        perturbing.install()
    orchestration: asyncio.Task[None] | None = None

    async def settle(step: str) -> None:
        """Until the cluster is as the builder says: within step_timeout seconds of the
        reconciler being up (a restarted process's start-up does not count)."""
        last, spent, idle_since = time.monotonic(), 0.0, None
        while True:
            cluster = await Cluster.read(api, namespace)
            wrong = cluster.differences()
            if not wrong:
                return
            now = time.monotonic()
            if await reconciler.up():
                spent += now - last
            last = now
            if spent > settings.step_timeout:
                raise Unsettled(f"after {step!r}, not as the builder says within "
                                f"{settings.step_timeout}s: {wrong}")
            idle = reconciler.idle() and not cluster.waiting_for_gc() and \
                not (perturbing is not None and perturbing.busy()) and \
                not [e for e in proxy.requests() if not e.done and e.kind != "watch"]
            idle_since = (idle_since or now) if idle else None
            if idle_since is not None and now - idle_since >= settings.stuck_after:
                raise Unsettled(f"after {step!r}, stuck: the reconciler idle for "
                                f"{settings.stuck_after}s with the cluster not as the builder "
                                f"says: {wrong}")
            await asyncio.sleep(0.05)

    try:
        await reconciler.start()
        if perturbing is not None:
            orchestration = asyncio.create_task(perturbing.orchestrate())
        await settle("setup")
        for step, act in workload.steps():
            steps.append((step, time.monotonic()))
            await act()
            await settle(step)
        if orchestration is not None:
            # A point at the workload's last moments is still under way: let it play out.
            await asyncio.wait({orchestration}, timeout=settings.hold_limit * 2 + 2)
            if perturbing is not None:
                perturbing.finish()  # what is still held goes now
            await settle("the perturbation's end")
        if reference is None:
            problems += await writes_while_quiet(proxy, settings.quiet)
            end = (await Cluster.read(api, namespace)).end_state()
        else:
            last: list[str] = []

            async def as_reference() -> bool:
                nonlocal last
                last = (await Cluster.read(api, namespace)).end_state().differences_from(
                    reference.end)
                return not last
            if not await _within(settings.final_timeout, as_reference):
                problems += [f"not as the reference after {settings.final_timeout}s: {d}"
                             for d in last]
            problems += await writes_while_quiet(proxy, settings.quiet)
        cluster = await Cluster.read(api, namespace)
        problems += [f"not as the builder says: {d}" for d in cluster.differences()]
        problems += cluster.touched(workload.users)
        if perturbing is None or perturbing.point.kind != "drop":
            # the watch brings the last events within moments of the quiet
            wrong: list[str] = []

            async def cache_as_server() -> bool:
                nonlocal wrong
                wrong = reconciler.cache_differences(await Cluster.read(api, namespace))
                return not wrong
            if not await _within(settings.hold_limit, cache_as_server):
                problems += wrong
        finished = True
    except Unsettled as failure:
        problems.append(str(failure))
    finally:
        if orchestration is not None:
            orchestration.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await orchestration
        if perturbing is not None:
            perturbing.finish()
        await reconciler.stop()
    problems += workload.problems
    problems += deleted_twice(proxy.requests(kind="write"))
    problems += reconciler.failures()
    notes = list(perturbing.notes if perturbing else ())
    if reference is not None and finished:
        notes += _writes_compared(proxy, reference.trace)
    outcome = Outcome(name, reconciler.mode, perturbing is None or perturbing.reached,
                      tuple(problems), tuple(notes),
                      time.monotonic() - started, len(proxy.requests(kind="write")),
                      reconciler.log() if problems else "")
    if reference is not None or end is None:
        return outcome
    return Reference(outcome, end, trace_of(proxy.requests(), steps))


def _writes_compared(proxy: FaultProxy, reference: Trace) -> list[str]:
    """The writes this run made that the reference did not, and the other way round."""
    made = Counter(write_base(e) or "" for e in proxy.requests(kind="write"))
    needed = Counter(w.key.rpartition("#")[0] for w in reference.writes)
    notes = []
    if made - needed:
        notes.append(f"writes beyond the reference's: {sorted((made - needed).elements())}")
    if needed - made:
        notes.append(f"the reference's writes not made: {sorted((needed - made).elements())}")
    return notes


async def _within(seconds: float, condition: Callable[[], Awaitable[bool]]) -> bool:
    deadline = time.monotonic() + seconds
    while not await condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True
