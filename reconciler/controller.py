"""The NimbusPolicy controller, readable top to bottom as kubernetes/sample-controller:
event handlers only enqueue "namespace/name" keys; workers take keys from the queue and call
`reconcile`, which converges the cluster to what the NimbusPolicy requires, level-triggered
(it never depends on which event caused it), in four steps:

    read    the NimbusPolicy, the policies it controls and what it remembers of it (caches only)
    plan    pure: desired policies, the diff, names held by others, every problem, drift pauses
    write   create / patch / delete what differs, then the status
    report  Events, log lines and metrics for everything the plan and the writes found
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.lowlevel
import attrs
from anyio.abc import TaskStatus

from .cached import CachedNimbusPolicy, CachedPolicy
from .clock import Clock, MonotonicClock
from .diff import (
    PolicyUpdate,
    is_orphan,
    needs_reconcile,
    repair_patch,
    status_appeared,
    status_patch,
)
from .events import ProblemReporter
from .keystate import KeyState, KeyStates
from .kube import (
    JSON_PATCH,
    KUBEARMOR_POLICIES,
    NIMBUS_POLICIES,
    ApiError,
    KubeClient,
    Resource,
    api_error,
)
from .metrics import Metrics
from .newcomers import Newcomers
from .plan import Desired, Plan, build_desired, desired_objects, plan_reconcile
from .problems import Problem, ProblemKind
from .reflector import Reflector, Source
from .store import Change, Store
from .workqueue import Priority, QueueShutDown, WorkQueue

log = logging.getLogger(__name__)
CONTROLLER = "nimbuspolicy"
FIELD_MANAGER = "nimbus-kubearmor"
# A status write refused because another adapter changed adapterPolicies since we read them is
# made again at once on a fresh read (client-go's retry.RetryOnConflict with a GET, as
# controllers sharing a status do), this many times in all; then the reconcile fails and the
# work queue's backoff takes over. Not the tight loop DESIGN.md forbids: bounded (3 writes, 2
# reads), each try on news (a read that shows what refused it), every refusal counted
# (write_conflicts), and only for the one write whose precondition is a field others write;
# other 409s and every 5xx still wait for the queue's backoff. The read serves that write only:
# the cache keeps what the watch delivered and the answers to our writes, not it.
STATUS_ATTEMPTS = 3
# Failed reconciles in a row, every failure a write that met a newer version of its object
# (another controller wrote first), that are retried quietly (debug); more is a warning.
QUIET_CONFLICT_RETRIES = 3


@attrs.frozen
class ControllerConfig:
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    workers: int = 4
    dry_run: bool = False
    resync_period: float = 600.0  # every NimbusPolicy is reconciled at least this often
    watch_read_timeout: float = 90.0
    watch_timeout: tuple[int, int] = (300, 600)
    # Objects a LIST page holds: the one page of full objects in memory at a time during a
    # list (client-go's 500 measured 10 MB at the peak of a relist of 25,000 policies, this 5)
    page_size: int = 250
    # How long the status of a NimbusPolicy created without one is left to the Nimbus core
    # (which writes one at once: we add our entries to it) before we write one. See newcomers.py.
    await_core_status: float = 1.0


@attrs.frozen
class Write:
    """A write a dry run would have made, as it would have been sent (for the diff that
    `--once --dry-run` prints)."""

    verb: str  # create, patch or delete
    resource: Resource
    namespace: str
    name: str
    body: Any = None  # create: the object; patch: the patch
    content_type: str | None = None  # of a patch
    subresource: str | None = None


@attrs.define
class Outcome:
    """What one reconcile did (or, in a dry run, would do)."""

    key: str
    created: list[str] = attrs.Factory(list)
    updated: list[str] = attrs.Factory(list)  # "name (spec, labels)"
    deleted: list[str] = attrs.Factory(list)
    unchanged: int = 0
    status_written: bool = False
    status_deferred: float = 0.0  # the status write left for so long, to the core's first
    problems: list[Problem] = attrs.Factory(list)
    errors: list[ApiError] = attrs.Factory(list)
    skipped: str | None = None  # why nothing was done: deleted, being deleted, orphan, ...
    deferred: float = 0.0  # drift left for later (seconds), as someone keeps reintroducing it
    # A write was refused because the namespace is being deleted (skipped says so; not retried)
    namespace_terminating: bool = False
    would_write: list[Write] = attrs.Factory(list)  # a dry run's writes, in order

    @property
    def failed(self) -> bool:
        return bool(self.errors)

    @property
    def wrote(self) -> bool:
        return bool(self.created or self.updated or self.deleted or self.status_written)


class NamespaceTerminating(Exception):
    """A write was refused because the namespace is being deleted: every later one would be."""


def controller_index(policy: CachedPolicy) -> list[str]:
    """"namespace/uid" of the NimbusPolicy controlling the policy: an ownerReference can only
    name an owner in its own namespace, so one in another namespace that names our uid is not
    ours (the garbage collector treats it as dangling)."""
    controller = policy.controller
    if controller is None or not controller.is_nimbus_policy:
        return []
    return [f"{policy.namespace}/{controller.uid}"]


class Controller:
    def __init__(self, client: KubeClient, metrics: Metrics, config: ControllerConfig | None = None,
                 clock: Clock | None = None) -> None:
        self.client = client
        self.metrics = metrics
        self.config = config or ControllerConfig()
        self.clock = clock or MonotonicClock()
        self.queue = WorkQueue(CONTROLLER, self.clock, metrics=metrics.queue(CONTROLLER, CONTROLLER))
        self.nimbus_policies: Store[CachedNimbusPolicy] = Store()
        # Every KubeArmorPolicy in scope, not only ours: ownership is the controller reference,
        # so a policy whose label was removed, or someone else's holding a name we need, stays
        # in sight (and its changes and deletion reach us).
        self.kubearmor_policies: Store[CachedPolicy] = Store(index=controller_index)
        self.states = KeyStates()
        # Told by on_nimbus_policy only (the watch's news); reconciles ask it how long to wait.
        self.newcomers = Newcomers(self.clock, self.config.await_core_status)
        self.reporter = ProblemReporter(client, metrics, self.config.dry_run)
        scopes: Sequence[str | None] = self.config.namespaces or (None,)
        page_lock = anyio.Lock()  # one page of full objects at a time, whichever the reflector
        self.reflectors: list[Reflector[Any]] = []
        for namespace in scopes:
            self.reflectors.append(Reflector(
                client, NIMBUS_POLICIES, namespace, self.nimbus_policies,
                CachedNimbusPolicy.from_json, self.on_nimbus_policy, metrics, clock=self.clock,
                read_timeout=self.config.watch_read_timeout, watch_timeout=self.config.watch_timeout,
                page_size=self.config.page_size, page_lock=page_lock))
            self.reflectors.append(Reflector(
                client, KUBEARMOR_POLICIES, namespace, self.kubearmor_policies,
                CachedPolicy.from_json, self.on_kubearmor_policy, metrics, clock=self.clock,
                read_timeout=self.config.watch_read_timeout, watch_timeout=self.config.watch_timeout,
                page_size=self.config.page_size, page_lock=page_lock))
        client.expect_streams(len(self.reflectors))  # a watch each, open at once
        self._gauges = (metrics.max_concurrent_reconciles.labels(CONTROLLER),
                        metrics.active_workers.labels(CONTROLLER))
        # at 0 from the start, as controller-runtime does: increase() counts the first error
        for result in ("success", "error"):
            metrics.reconcile_total.labels(CONTROLLER, result)
        metrics.reconcile_errors.labels(CONTROLLER)
        self._stopping = False  # set by stop(): workers take no new keys
        self._workers: anyio.CancelScope | None = None  # while workers run
        self._workers_done = anyio.Event()

    # --- event handlers: they say which key to look at (and which NimbusPolicy is new) ---------

    def on_nimbus_policy(self, change: Change, old: CachedNimbusPolicy | None,
                         new: CachedNimbusPolicy | None, source: Source) -> None:
        obj = new if new is not None else old
        assert obj is not None
        if change is Change.DELETED:
            self.newcomers.forget(obj.key)
        elif change is Change.ADDED and source is Source.WATCH:
            # (also an event for a key the cache had lost track of, which the store calls an
            # addition: at worst its status waits a second it need not have)
            self.newcomers.created(obj.key)
        if change is Change.UPDATED and not needs_reconcile(old, new) and not (
                status_appeared(old, new) and self.newcomers.wait(obj.key) > 0):
            # A status write cannot change what is desired. The first one, while a newcomer's
            # status write waits for it, is the core's: ours goes now. Ours (written once the
            # wait is over) brings nothing: its echo may come before its answer, and must not
            # cut short the backoff of a reconcile that failed.
            return
        self.queue.add(obj.key, _priority(source))

    def on_kubearmor_policy(self, change: Change, old: CachedPolicy | None,
                            new: CachedPolicy | None, source: Source) -> None:
        keys: set[str | None] = {policy.owner_key for policy in (old, new) if policy is not None}
        policy = new if new is not None else old
        assert policy is not None
        keys |= self.states.claimants(policy.key)  # someone else's, holding a name we need
        for key in keys:
            if key is not None:
                self.queue.add(key, _priority(source))

    # --- running ---------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Reflectors, then (once every cache has listed) the workers and the periodic resync.
        Returns after `stop()`; cancel it to stop at once."""
        async with anyio.create_task_group() as reflectors:
            for reflector in self.reflectors:
                reflectors.start_soon(reflector.run)
            await self.wait_synced()
            log.info("caches synced", extra={"nimbuspolicies": len(self.nimbus_policies),
                                             "kubearmorpolicies": len(self.kubearmor_policies),
                                             "workers": self.config.workers})
            task_status.started()
            self._gauges[0].set(self.config.workers)
            reflectors.start_soon(self._resync)
            try:
                with anyio.CancelScope() as self._workers:
                    async with anyio.create_task_group() as workers:
                        for _ in range(self.config.workers):
                            workers.start_soon(self._worker)
            finally:
                self._workers_done.set()
            reflectors.cancel_scope.cancel()  # the workers are done: nothing reads the caches

    async def wait_synced(self) -> None:
        for reflector in self.reflectors:
            await reflector.synced.wait()

    def readiness(self) -> list[str]:
        """Why the controller is not ready; empty when it is."""
        return [f"{r.resource.plural} in {r.scope}: " + ("not listed yet" if not r.synced.is_set()
                                                          else "watch not established")
                for r in self.reflectors if not (r.synced.is_set() and r.watching)]

    async def stop(self, grace: float) -> bool:
        """Take no new keys; let the reconciles under way finish for at most `grace` seconds,
        then cancel them; return once no worker runs. True when every reconcile finished, False
        when some were cancelled: a request already sent may still be applied by the server, so
        a leader should then not hand its Lease over early. What is still queued is not lost:
        the next leader or process lists and reconciles everything."""
        self._stopping = True
        finished = True
        with anyio.move_on_after(grace):
            await self.queue.shutdown_and_drain()
        if self.queue.processing:
            finished = False
            log.warning("reconciles still running at shutdown were cancelled",
                        extra={"nimbuspolicies": sorted(self.queue.processing)})
        if self._workers is not None:
            self._workers.cancel()
            await self._workers_done.wait()
        return finished

    async def _resync(self) -> None:
        while True:
            await anyio.sleep(self.config.resync_period * (0.9 + random.random() * 0.2))
            for key in self.nimbus_policies.list_keys():
                self.queue.add(key, Priority.BACKLOG)

    async def _worker(self) -> None:
        while not self._stopping:
            try:
                key = await self.queue.get()
            except QueueShutDown:
                return
            if self._stopping:  # woken by the shutdown: it takes no new key
                self.queue.done(key)
                return
            try:
                await self.process(key)
            finally:
                self.queue.done(key)
            # An up-to-date NimbusPolicy is reconciled without awaiting anything; yield so a
            # resync's backlog never holds up the watches (and the live keys they bring).
            await anyio.lowlevel.checkpoint()

    async def process(self, key: str) -> Outcome:
        """One reconcile with its bookkeeping: metrics, a log line for whatever it wrote
        (also when a later step failed), and a retry with backoff on failure."""
        active, started = self._gauges[1], self.clock.now()
        active.inc()
        outcome = Outcome(key)
        try:
            await self.reconcile(key, outcome)
        except Exception as error:  # a bug must not stop the worker; the key is retried
            log.exception("reconcile crashed", extra={"nimbuspolicy": key, **_done(outcome)})
            outcome.errors.append(api_error(error) or ApiError(0, "Crash", repr(error)))
        finally:
            active.dec()
            self.metrics.reconcile_time.labels(CONTROLLER).observe(self.clock.now() - started)
        if outcome.failed:
            self.metrics.reconcile_total.labels(CONTROLLER, "error").inc()
            self.metrics.reconcile_errors.labels(CONTROLLER).inc()
            retry_after = max((e.retry_after or 0.0) for e in outcome.errors)
            self.queue.add_rate_limited(key, at_least=retry_after)
            retries = self.queue.num_requeues(key)
            fields = {"nimbuspolicy": key, "retries": retries,
                      "errors": [str(e) for e in outcome.errors], **_done(outcome)}
            if all(e.stale for e in outcome.errors) and retries <= QUIET_CONFLICT_RETRIES:
                # Another controller wrote first; the retry reads what it wrote. What this
                # reconcile did write is still worth saying at the usual level.
                log.log(logging.INFO if outcome.wrote else logging.DEBUG,
                        "a write met a newer version of its object, will retry", extra=fields)
            else:
                log.warning("reconcile failed, will retry", extra=fields)
        else:
            self.metrics.reconcile_total.labels(CONTROLLER, "success").inc()
            self.queue.forget(key)
            if outcome.wrote:
                log.info("reconciled", extra={"nimbuspolicy": key, **_done(outcome)})
        return outcome

    # --- the sync handler ------------------------------------------------------------------------

    async def reconcile(self, key: str, outcome: Outcome | None = None) -> Outcome:
        """`outcome`: where to record what is done as it is done (so that a caller still knows
        what was written when this raises)."""
        outcome = outcome if outcome is not None else Outcome(key)
        # read
        nimbus_policy = self.nimbus_policies.get(key)
        if nimbus_policy is None:
            self.states.forget(key)  # the garbage collector removes its policies
            outcome.skipped = "deleted"
            return outcome
        if nimbus_policy.deleting:
            outcome.skipped = "being deleted"
            return outcome
        if is_orphan(nimbus_policy):
            outcome.skipped = "orphan: not controlled by a (Cluster)SecurityIntentBinding"
            return outcome
        state = self.states.get(key)
        if state.namespace_terminating == nimbus_policy.uid:
            outcome.skipped = "its namespace is being deleted"
            return outcome
        desired, rendered = self._desired(nimbus_policy, state)
        owned = self.kubearmor_policies.by_index(f"{nimbus_policy.namespace}/{nimbus_policy.uid}")

        # plan
        plan = plan_reconcile(nimbus_policy, desired, owned, self._named(nimbus_policy.namespace),
                              converged=state.converged, streak=state.drift, now=self.clock.now())
        self.states.set_claims(key, plan.claims)
        outcome.problems = list(plan.problems)
        outcome.unchanged = len(plan.diff.unchanged)
        outcome.errors += [ApiError(409, "AlreadyExists", f"{name} still belongs to a deleted "
                                    "NimbusPolicy of this name; waiting for the garbage collector")
                           for name in plan.waiting_for_gc]
        if plan.defer:
            outcome.deferred = plan.defer
            self.queue.add_after(key, plan.defer)
            return outcome
        if plan.drift is not None:
            state.drift = plan.drift.streak
            if plan.drift.insisting:
                log.warning("policies keep being changed by someone else; correcting them with "
                            "growing pauses", extra={"nimbuspolicy": key,
                                                     "corrections": plan.drift.streak.corrections})

        try:
            # write
            await self._write(nimbus_policy, desired, rendered, plan, outcome)
            # report
            if state.reported_version != nimbus_policy.version:
                state.reported_version, state.reported = nimbus_policy.version, set()
            try:
                await self.reporter.report(nimbus_policy, outcome.problems, state.reported)
            except ApiError as error:
                # Best effort, as client-go's event recorder: what is not reported yet is tried
                # again at the next reconcile; a NimbusPolicy does not fail for want of an Event.
                self.metrics.write_errors.labels("create", str(error.status)).inc()
                log.warning("could not post an Event", extra={"nimbuspolicy": key,
                                                             "error": str(error)})
        except NamespaceTerminating:
            # Not a failure to retry: nothing can be created there any more, and the namespace
            # controller deleting our policies is not someone fighting us. The NimbusPolicy's
            # own deletion comes next.
            state.namespace_terminating = nimbus_policy.uid
            log.info("namespace is being deleted; waiting for the NimbusPolicy to go",
                     extra={"nimbuspolicy": key})
            outcome.skipped = "its namespace is being deleted"
            outcome.namespace_terminating = True
            outcome.errors.clear()
            return outcome
        if not outcome.failed:
            # (its status may still be to write, left to the core's first: see _write_status)
            state.converged = nimbus_policy.version
        return outcome

    def _desired(self, nimbus_policy: CachedNimbusPolicy, state: KeyState
                 ) -> tuple[Desired, dict[str, Any] | None]:
        """What the NimbusPolicy requires, and the policies' JSON if they were just built."""
        if state.desired is not None and state.desired[0] == nimbus_policy.version:
            return state.desired[1], None
        desired, rendered = build_desired(nimbus_policy)
        state.desired = (nimbus_policy.version, desired)
        return desired, rendered

    def _named(self, namespace: str) -> Any:
        return lambda name: self.kubearmor_policies.get(f"{namespace}/{name}")

    # --- the writes ------------------------------------------------------------------------------

    async def _write(self, nimbus_policy: CachedNimbusPolicy, desired: Desired,
                     rendered: dict[str, Any] | None, plan: Plan, outcome: Outcome) -> None:
        existing = set(plan.diff.unchanged)
        objects = rendered or {}
        if not objects and (plan.diff.create or plan.diff.update):
            objects = desired_objects(nimbus_policy)
        for name in plan.diff.create:
            if await self._create(objects[name], outcome, nimbus_policy.adapter_policies):
                existing.add(name)
        for update in plan.diff.update:
            await self._patch(update, objects[update.name], outcome)
            existing.add(update.name)  # patched or not, it exists
        for stale in plan.diff.delete:
            await self._delete(stale, outcome)
        await self._write_status(nimbus_policy, [name for name in desired.fingerprints
                                                 if name in existing], outcome)

    def _remember(self, store: Store[Any], written: Any) -> None:
        """Tell the cache the answer to our own write, so the next reconcile does not act on
        the version before it. The store decides whether it is news: a late answer older than
        what the watch has brought since (another change, the object's deletion) is not."""
        store.upsert(written)

    def _failed(self, verb: str, resource: str, error: ApiError, outcome: Outcome) -> None:
        self.metrics.write_errors.labels(verb, str(error.status)).inc()
        if error.namespace_terminating:
            raise NamespaceTerminating(str(error))
        outcome.errors.append(error)
        if error.stale:  # made on an outdated read: retried on a newer one, nothing to report
            self.metrics.write_conflicts.labels(_conflict_resource(resource)).inc()
        elif error.status in (403, 422) or error.too_large:
            # refused, not failed: say so where the user looks
            outcome.problems.append(Problem(
                ProblemKind.WRITE_REFUSED, outcome.key, "spec.rules",
                f"{verb} of {resource} was refused by the API server: {error}",
                same_as=f"{verb} {resource} {error.status} {error.reason}"))

    def _wrote(self, verb: str, resource: str) -> None:
        self.metrics.policy_writes.labels(verb, resource).inc()

    async def _create(self, policy: dict[str, Any], outcome: Outcome,
                      listed: Sequence[str]) -> bool:
        """`policy`: its JSON."""
        name, namespace = policy["metadata"]["name"], policy["metadata"]["namespace"]
        if f"KubeArmorPolicy/{name}" in listed:
            self.metrics.drift_corrections.labels("missing").inc()
        if self.config.dry_run:
            outcome.created.append(name)
            outcome.would_write.append(Write("create", KUBEARMOR_POLICIES, namespace, name, policy))
            return True
        try:
            created = await self.client.create(KUBEARMOR_POLICIES, namespace, policy,
                                               FIELD_MANAGER)
        except ApiError as error:
            # AlreadyExists: the cache has not seen it yet; the next try (after a backoff) will
            self._failed("create", f"KubeArmorPolicy {name}", error, outcome)
            return False
        self._wrote("create", "kubearmorpolicies")
        self._remember(self.kubearmor_policies, CachedPolicy.from_json(created))
        outcome.created.append(name)
        return True

    async def _patch(self, update: PolicyUpdate, desired: dict[str, Any],
                     outcome: Outcome) -> bool:
        """True when the policy is now as desired."""
        name = update.name
        for field in update.fields:
            self.metrics.drift_corrections.labels(field).inc()
        if self.config.dry_run:
            outcome.updated.append(f"{name} ({', '.join(update.fields)})")
            outcome.would_write.append(Write("patch", KUBEARMOR_POLICIES, update.actual.namespace,
                                             name, repair_patch(update, desired), JSON_PATCH))
            return True
        try:
            patched = await self.client.patch(KUBEARMOR_POLICIES, update.actual.namespace, name,
                                              repair_patch(update, desired), JSON_PATCH,
                                              FIELD_MANAGER)
        except ApiError as error:
            # Conflict: our copy is stale; the watch brings the new one and the next try uses it
            self._failed("patch", f"KubeArmorPolicy {name}", error, outcome)
            return False
        self._wrote("patch", "kubearmorpolicies")
        self._remember(self.kubearmor_policies, CachedPolicy.from_json(patched))
        outcome.updated.append(f"{name} ({', '.join(update.fields)})")
        return True

    async def _delete(self, policy: CachedPolicy, outcome: Outcome) -> None:
        if self.config.dry_run:
            outcome.would_write.append(Write("delete", KUBEARMOR_POLICIES, policy.namespace,
                                             policy.name))
        else:
            try:
                answer = await self.client.delete(KUBEARMOR_POLICIES, policy.namespace,
                                                  policy.name, uid=policy.uid)
            except ApiError as error:
                self._failed("delete", f"KubeArmorPolicy {policy.name}", error, outcome)
                return
            self._wrote("delete", "kubearmorpolicies")
            if answer is not None and answer.get("kind") == KUBEARMOR_POLICIES.kind:
                # a finalizer holds it: it is still there, being deleted (the answer is the
                # object with its deletionTimestamp, at the version of that update)
                self._remember(self.kubearmor_policies, CachedPolicy.from_json(answer))
            elif self.kubearmor_policies.delete(policy.key, policy.uid) is not None:
                # Gone (a Status, or 404: already gone), at a version the answer does not say;
                # the store keeps a tombstone until the watch's DELETED event says it, so an
                # older event still on its way cannot bring the policy back. That event finds
                # nothing left to report: say it here.
                self.on_kubearmor_policy(Change.DELETED, policy, None, Source.OWN_WRITE)
        outcome.deleted.append(policy.name)

    async def _write_status(self, nimbus_policy: CachedNimbusPolicy, names: list[str],
                            outcome: Outcome) -> None:
        # The newest copy the cache has: entries other adapters wrote while our policies were
        # being written have likely arrived by now, and a patch tested against them holds.
        latest = self.nimbus_policies.get(nimbus_policy.key)
        current = latest if latest is not None and latest.uid == nimbus_policy.uid \
            else nimbus_policy
        for attempt in range(1, STATUS_ATTEMPTS + 1):
            patch = status_patch(current, names)
            if patch is None:
                return
            wait = 0.0 if current.has_status else self.newcomers.wait(current.key)
            if wait > 0:
                # The core is about to write its status: ours adds our entries to it, when its
                # appearance brings a reconcile. The reconcile queued here, at the end of the
                # wait, writes ours if the core has not, and otherwise finds nothing to do (it
                # is not taken back: one no-op reconcile per NimbusPolicy created).
                outcome.status_deferred = wait
                self.queue.add_after(current.key, wait)
                return
            if self.config.dry_run:
                outcome.would_write.append(Write("patch", NIMBUS_POLICIES, current.namespace,
                                                 current.name, patch, JSON_PATCH, "status"))
                outcome.status_written = True
                return
            try:
                written = await self.client.patch(NIMBUS_POLICIES, current.namespace,
                                                  current.name, patch, JSON_PATCH,
                                                  FIELD_MANAGER, subresource="status")
            except ApiError as error:
                if not error.stale or attempt == STATUS_ATTEMPTS:
                    self._failed("patch", "nimbuspolicies/status", error, outcome)
                    return
                self.metrics.write_errors.labels("patch", str(error.status)).inc()
                self.metrics.write_conflicts.labels("nimbuspolicies/status").inc()
                log.debug("status write met another adapter's, retrying on a fresh read",
                          extra={"nimbuspolicy": outcome.key, "attempt": attempt,
                                 "error": str(error)})
                fresh = await self._read_again(current, outcome)
                if fresh is None:
                    return
                current = fresh
                continue
            self._wrote("patch", "nimbuspolicies/status")
            self._remember(self.nimbus_policies, CachedNimbusPolicy.from_json(written))
            outcome.status_written = True
            return

    async def _read_again(self, nimbus_policy: CachedNimbusPolicy,
                          outcome: Outcome) -> CachedNimbusPolicy | None:
        """The NimbusPolicy as the API server has it now, for a write to retry at once (not
        for the cache, which holds only what the watch and our writes brought); None when it
        is gone or replaced (its successor gets a reconcile of its own) or the read failed."""
        try:
            obj = await self.client.get(NIMBUS_POLICIES, nimbus_policy.namespace,
                                        nimbus_policy.name)
        except ApiError as error:
            self.metrics.write_errors.labels("get", str(error.status)).inc()
            outcome.errors.append(error)
            return None
        fresh = CachedNimbusPolicy.from_json(obj) if obj is not None else None
        return fresh if fresh is not None and fresh.uid == nimbus_policy.uid else None


def _priority(source: Source) -> Priority:
    """What was there before we started waits behind what changes now."""
    return Priority.BACKLOG if source is Source.FIRST_LIST else Priority.LIVE


def _done(outcome: Outcome) -> dict[str, Any]:
    """What a reconcile wrote, as log fields."""
    done = {"policies_created": outcome.created, "policies_updated": outcome.updated,
            "policies_deleted": outcome.deleted, "status_written": outcome.status_written}
    if outcome.status_deferred:
        done["status_deferred_s"] = round(outcome.status_deferred, 3)
    return done


def _conflict_resource(resource: str) -> str:
    """The write_conflicts label of what `_failed` names ("KubeArmorPolicy x", ...)."""
    return "nimbuspolicies/status" if resource == "nimbuspolicies/status" else "kubearmorpolicies"

