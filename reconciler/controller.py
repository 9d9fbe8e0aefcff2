"""The NimbusPolicy controller, readable top to bottom as kubernetes/sample-controller:
event handlers only enqueue "namespace/name" keys; workers take keys from the queue and call
`reconcile`, which reads the caches, computes the desired KubeArmorPolicies and converges
the cluster to them. Level-triggered: a reconcile never depends on which event caused it.
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

from .builder import desired_policies
from .clock import Clock, MonotonicClock
from .diff import (
    Fingerprint,
    PolicyDiff,
    PolicyUpdate,
    controller_of,
    diff_policies,
    fingerprint,
    is_orphan,
    keep_spec_digest,
    needs_reconcile,
    owner_key,
    repair_patch,
    status_patch,
)
from .events import ProblemReporter
from .kube import (
    JSON_PATCH,
    KUBEARMOR_POLICIES,
    MERGE_PATCH,
    NIMBUS_POLICIES,
    ApiError,
    KubeClient,
    api_error,
)
from .metrics import Metrics
from .model import MANAGED_BY_KEY, MANAGED_BY_VALUE, KubeArmorPolicy, to_dict
from .parse import parse_nimbus_policy
from .problems import Problem, ProblemKind
from .reflector import Reflector
from .store import Change, Obj, Store, object_key
from .workqueue import Priority, QueueShutDown, WorkQueue

log = logging.getLogger(__name__)
CONTROLLER = "nimbuspolicy"
FIELD_MANAGER = "nimbus-kubearmor"
# Someone else (another controller, a GitOps tool) keeps changing a NimbusPolicy's policies
# back: the first correction is immediate, the next ones wait 0.1 s, 0.2 s, ... up to 10 s
# after the previous, and a minute without drift forgives it. A write per change would be a
# fight with no end; this keeps our side of it to a few writes a minute.
DRIFT_PAUSE_BASE = 0.1
DRIFT_PAUSE_MAX = 10.0
DRIFT_FORGIVEN_AFTER = 60.0


@attrs.frozen
class ControllerConfig:
    namespaces: tuple[str, ...] = ()  # empty: every namespace
    workers: int = 4
    dry_run: bool = False
    resync_period: float = 600.0  # every NimbusPolicy is reconciled at least this often
    watch_read_timeout: float = 90.0
    watch_timeout: tuple[int, int] = (300, 600)


@attrs.frozen
class Desired:
    """The policies a NimbusPolicy requires, the problems found in it, and the fingerprint of
    each policy (their JSON is rendered only to be written)."""

    policies: tuple[KubeArmorPolicy, ...]
    problems: tuple[Problem, ...]
    fingerprints: dict[str, Fingerprint]


@attrs.define
class Outcome:
    """What one reconcile did (or, in a dry run, would do)."""

    key: str
    created: list[str] = attrs.Factory(list)
    updated: list[str] = attrs.Factory(list)  # "name (spec, labels)"
    deleted: list[str] = attrs.Factory(list)
    unchanged: int = 0
    status_written: bool = False
    problems: list[Problem] = attrs.Factory(list)
    errors: list[ApiError] = attrs.Factory(list)
    skipped: str | None = None  # why nothing was done: deleted, being deleted, orphan
    deferred: float = 0.0  # drift left for later (seconds), as someone keeps reintroducing it

    @property
    def failed(self) -> bool:
        return bool(self.errors)

    @property
    def wrote(self) -> bool:
        return bool(self.created or self.updated or self.deleted or self.status_written)


class Controller:
    def __init__(self, client: KubeClient, metrics: Metrics, config: ControllerConfig | None = None,
                 clock: Clock | None = None) -> None:
        self.client = client
        self.metrics = metrics
        self.config = config or ControllerConfig()
        self.clock = clock or MonotonicClock()
        self.queue = WorkQueue(CONTROLLER, self.clock, metrics=metrics.queue(CONTROLLER, CONTROLLER))
        self.nimbus_policies = Store()
        self.kubearmor_policies = Store(index=lambda obj: [k] if (k := owner_key(obj)) else [],
                                        transform=keep_spec_digest)
        self.reporter = ProblemReporter(client, metrics, self.config.dry_run)
        scopes: Sequence[str | None] = self.config.namespaces or (None,)
        self.reflectors = [
            reflector for namespace in scopes for reflector in (
                Reflector(client, NIMBUS_POLICIES, namespace, self.nimbus_policies,
                          self.on_nimbus_policy, metrics, clock=self.clock,
                          read_timeout=self.config.watch_read_timeout,
                          watch_timeout=self.config.watch_timeout),
                Reflector(client, KUBEARMOR_POLICIES, namespace, self.kubearmor_policies,
                          self.on_kubearmor_policy, metrics, clock=self.clock,
                          label_selector=f"{MANAGED_BY_KEY}={MANAGED_BY_VALUE}",
                          read_timeout=self.config.watch_read_timeout,
                          watch_timeout=self.config.watch_timeout),
            )
        ]
        self._gauges = (metrics.max_concurrent_reconciles.labels(CONTROLLER),
                        metrics.active_workers.labels(CONTROLLER))
        self._stopping = False  # set by shutdown(): workers take no new keys
        # What each NimbusPolicy requires, by key, for the (uid, generation) it was built from:
        # the builder's input is the spec, name, namespace and uid, so a resync or an event
        # about its policies reuses it rather than building and rendering it again.
        self._desired: dict[str, tuple[tuple[str, int], Desired]] = {}
        # By key: the (uid, generation) last converged, and (corrections in a row, when the last
        # was made) for the drift corrections made since.
        self._converged: dict[str, tuple[str, int]] = {}
        self._drift: dict[str, tuple[int, float]] = {}

    # --- event handlers: they only say which key to look at --------------------------------------

    def on_nimbus_policy(self, change: Change, old: Obj | None, new: Obj | None,
                         from_list: bool) -> None:
        if change is Change.UPDATED and not needs_reconcile(old, new):
            return  # a status write (ours included) cannot change what is desired
        obj = new if new is not None else old
        assert obj is not None
        key = object_key(obj)
        if change is Change.DELETED:
            self.reporter.forget(key)
            for cache in (self._desired, self._converged, self._drift):
                cache.pop(key, None)
        self.queue.add(key, Priority.BACKLOG if from_list else Priority.LIVE)

    def on_kubearmor_policy(self, change: Change, old: Obj | None, new: Obj | None,
                            from_list: bool) -> None:
        owners = {owner_key(obj) for obj in (old, new) if obj is not None}
        for key in owners - {None}:
            assert key is not None
            self.queue.add(key, Priority.BACKLOG if from_list else Priority.LIVE)

    # --- running ---------------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Reflectors, then (once every cache is synced) the workers and the periodic resync.
        Returns when the queue is shut down and drained; cancel it to stop at once."""
        async with anyio.create_task_group() as reflectors:
            for reflector in self.reflectors:
                reflectors.start_soon(reflector.run)
            await self.wait_synced()
            log.info("caches synced", extra={"nimbuspolicies": len(self.nimbus_policies),
                                             "kubearmorpolicies": len(self.kubearmor_policies),
                                             "workers": self.config.workers})
            task_status.started()
            self._gauges[0].set(self.config.workers)
            async with anyio.create_task_group() as workers:
                for _ in range(self.config.workers):
                    workers.start_soon(self._worker)
                reflectors.start_soon(self._resync)
            reflectors.cancel_scope.cancel()  # the queue is drained: nothing reads the caches

    async def wait_synced(self) -> None:
        for reflector in self.reflectors:
            await reflector.synced.wait()

    def readiness(self) -> list[str]:
        """Why the controller is not ready; empty when it is."""
        return [f"{r.resource.plural} in {r.scope}: " + ("not synced" if not r.synced.is_set()
                                                          else "watch not established")
                for r in self.reflectors if not (r.synced.is_set() and r.watching)]

    async def shutdown(self, grace: float) -> None:
        """Take no new keys and let in-flight reconciles finish, for at most `grace` seconds.
        What is still queued is not lost: the next process lists and reconciles everything."""
        self._stopping = True
        with anyio.move_on_after(grace):
            await self.queue.shutdown_and_drain()

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
            try:
                await self.process(key)
            finally:
                self.queue.done(key)
            # An up-to-date NimbusPolicy is reconciled without awaiting anything; yield so a
            # resync's backlog never holds up the watches (and the live keys they bring).
            await anyio.lowlevel.checkpoint()

    async def process(self, key: str) -> Outcome:
        """One reconcile with its bookkeeping: metrics, and a retry with backoff on failure."""
        active, started = self._gauges[1], self.clock.now()
        active.inc()
        try:
            outcome = await self.reconcile(key)
        except Exception as error:  # a bug must not stop the worker; the key is retried
            log.exception("reconcile crashed", extra={"nimbuspolicy": key})
            outcome = Outcome(key, errors=[api_error(error) or ApiError(0, "Crash", repr(error))])
        finally:
            active.dec()
            self.metrics.reconcile_time.labels(CONTROLLER).observe(self.clock.now() - started)
        if outcome.failed:
            self.metrics.reconcile_total.labels(CONTROLLER, "error").inc()
            self.metrics.reconcile_errors.labels(CONTROLLER).inc()
            retry_after = max((e.retry_after or 0.0) for e in outcome.errors)
            self.queue.add_rate_limited(key, at_least=retry_after)
            log.warning("reconcile failed, will retry", extra={
                "nimbuspolicy": key, "retries": self.queue.num_requeues(key),
                "errors": [str(e) for e in outcome.errors]})
        else:
            self.metrics.reconcile_total.labels(CONTROLLER, "success").inc()
            self.queue.forget(key)
            if outcome.wrote:
                log.info("reconciled", extra={
                    "nimbuspolicy": key, "policies_created": outcome.created,
                    "policies_updated": outcome.updated, "policies_deleted": outcome.deleted,
                    "status_written": outcome.status_written})
        return outcome

    # --- the sync handler ------------------------------------------------------------------------

    async def reconcile(self, key: str) -> Outcome:
        outcome = Outcome(key)
        nimbus_policy = self.nimbus_policies.get(key)
        if nimbus_policy is None:
            outcome.skipped = "deleted"  # the garbage collector removes its policies
            return outcome
        metadata = nimbus_policy["metadata"]
        if metadata.get("deletionTimestamp"):
            outcome.skipped = "being deleted"
            return outcome
        if is_orphan(nimbus_policy):
            outcome.skipped = "orphan: not controlled by a (Cluster)SecurityIntentBinding"
            return outcome

        wanted = self._desired_for(key, nimbus_policy)
        desired, problems = wanted.policies, list(wanted.problems)
        owned = [obj for obj in self.kubearmor_policies.by_index(key)
                 if (controller_of(obj) or {}).get("uid") == metadata["uid"]]
        namespace = metadata["namespace"]
        diff = diff_policies(desired, owned,
                             lambda name: self.kubearmor_policies.get(f"{namespace}/{name}"),
                             wanted.fingerprints)
        problems += self._conflict_problems(key, diff, outcome)
        outcome.problems = list(problems)
        await self._report(nimbus_policy, outcome)

        existing = set(diff.unchanged)
        outcome.unchanged = len(diff.unchanged)
        listed = {e.removeprefix("KubeArmorPolicy/") for e in
                  (nimbus_policy.get("status") or {}).get("adapterPolicies") or []}
        version = (metadata["uid"], int(metadata.get("generation") or 0))
        drifted = bool(diff.update or any(p.name in listed for p in diff.create))
        if drifted and self._converged.get(key) == version:  # ours changed, not the intent
            pause = self._drift_pause(key)
            if pause > 0:
                outcome.deferred = pause
                self.queue.add_after(key, pause)
                return outcome
        for policy in diff.create:
            if await self._create(policy, outcome, was_listed=policy.name in listed):
                existing.add(policy.name)
        for update in diff.update:
            await self._patch(update, outcome)
            existing.add(update.desired.name)  # patched or not, it exists
        for obj in diff.delete:
            await self._delete(obj, outcome)
        await self._write_status(nimbus_policy, [p.name for p in desired if p.name in existing],
                                 outcome)
        if not outcome.failed:
            self._converged[key] = version
        return outcome

    def _drift_pause(self, key: str) -> float:
        """Seconds to wait before correcting this NimbusPolicy's policies again (0: now)."""
        now = self.clock.now()
        streak, last = self._drift.get(key, (0, -DRIFT_FORGIVEN_AFTER - 1))
        if now - last > DRIFT_FORGIVEN_AFTER:
            streak = 0
        pause = 0.0 if streak == 0 else min(DRIFT_PAUSE_BASE * 2 ** (streak - 1), DRIFT_PAUSE_MAX)
        if now < last + pause:
            return last + pause - now
        if streak >= 2:
            log.warning("policies keep being changed by someone else; correcting them with "
                        "growing pauses", extra={"nimbuspolicy": key, "corrections": streak + 1,
                                                 "next_pause_s": min(pause * 2, DRIFT_PAUSE_MAX)})
        self._drift[key] = (streak + 1, now)
        return 0.0

    def _desired_for(self, key: str, nimbus_policy: Obj) -> Desired:
        metadata = nimbus_policy["metadata"]
        version = (metadata["uid"], int(metadata.get("generation") or 0))
        cached = self._desired.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        parsed, problems = parse_nimbus_policy(nimbus_policy)
        policies: tuple[KubeArmorPolicy, ...] = ()
        if parsed is not None:
            policies, build_problems = desired_policies(parsed)
            problems += build_problems
        desired = Desired(policies, problems, {p.name: fingerprint(p) for p in policies})
        self._desired[key] = (version, desired)
        return desired

    # --- the writes ------------------------------------------------------------------------------

    def _conflict_problems(self, key: str, diff: PolicyDiff, outcome: Outcome) -> list[Problem]:
        problems = []
        for conflict in diff.conflicts:
            name = conflict.desired.name
            if conflict.transient:  # the previous NimbusPolicy of this name; GC removes it
                outcome.errors.append(ApiError(409, "AlreadyExists",
                                               f"{name} still belongs to a deleted NimbusPolicy"))
                continue
            problems.append(Problem(ProblemKind.NAME_TAKEN, key, "metadata.name",
                                    f"KubeArmorPolicy {name} exists and is controlled by "
                                    f"{conflict.holder}; it is left alone"))
        return problems

    async def _report(self, nimbus_policy: Obj, outcome: Outcome) -> None:
        try:
            await self.reporter.report(nimbus_policy, outcome.problems)
        except ApiError as error:
            self._failed("create", "events", error, outcome)

    def _failed(self, verb: str, resource: str, error: ApiError, outcome: Outcome) -> None:
        self.metrics.write_errors.labels(verb, str(error.status)).inc()
        outcome.errors.append(error)

    def _wrote(self, verb: str, resource: str) -> None:
        self.metrics.policy_writes.labels(verb, resource).inc()

    async def _create(self, policy: KubeArmorPolicy, outcome: Outcome, was_listed: bool) -> bool:
        if was_listed:
            self.metrics.drift_corrections.labels("missing").inc()
        if self.config.dry_run:
            outcome.created.append(policy.name)
            return True
        namespace = policy.metadata.namespace
        try:
            created = await self.client.create(KUBEARMOR_POLICIES, namespace, to_dict(policy),
                                               FIELD_MANAGER)
        except ApiError as error:
            if not error.already_exists:
                self._failed("create", "kubearmorpolicies", error, outcome)
                return False
            return await self._adopt_existing(policy, outcome)
        self._wrote("create", "kubearmorpolicies")
        self.kubearmor_policies.upsert(created)
        outcome.created.append(policy.name)
        return True

    async def _adopt_existing(self, policy: KubeArmorPolicy, outcome: Outcome) -> bool:
        """The name exists though our cache did not show it (the cache lags our own writes, or
        the object lost our label): read it and treat it as the diff says."""
        namespace = policy.metadata.namespace
        try:
            actual = await self.client.get(KUBEARMOR_POLICIES, namespace, policy.name)
        except ApiError as error:
            self._failed("get", "kubearmorpolicies", error, outcome)
            return False
        if actual is None:  # deleted meanwhile: the next try creates it
            outcome.errors.append(ApiError(409, "AlreadyExists", f"{policy.name} was just deleted"))
            return False
        self.kubearmor_policies.upsert(actual)
        diff = diff_policies([policy], [], lambda _: actual)
        outcome.problems += self._conflict_problems(outcome.key, diff, outcome)
        if diff.update:
            return await self._patch(diff.update[0], outcome)
        return bool(diff.unchanged)

    async def _patch(self, update: PolicyUpdate, outcome: Outcome) -> bool:
        """True when the policy is now as desired."""
        name = update.desired.name
        for field in update.fields:
            self.metrics.drift_corrections.labels(field).inc()
        if self.config.dry_run:
            outcome.updated.append(f"{name} ({', '.join(update.fields)})")
            return True
        try:
            patched = await self.client.patch(KUBEARMOR_POLICIES, update.desired.metadata.namespace,
                                              name, repair_patch(update), JSON_PATCH, FIELD_MANAGER)
        except ApiError as error:
            self._failed("patch", "kubearmorpolicies", error, outcome)
            if error.conflict:
                # Our copy is stale. Forget it rather than wait for the watch: an object that
                # lost our label is outside the watch, and the next try reads it afresh.
                self.kubearmor_policies.delete(object_key(update.actual))
            return False
        self._wrote("patch", "kubearmorpolicies")
        self.kubearmor_policies.upsert(patched)
        outcome.updated.append(f"{name} ({', '.join(update.fields)})")
        return True

    async def _delete(self, obj: Obj, outcome: Outcome) -> None:
        metadata = obj["metadata"]
        if not self.config.dry_run:
            try:
                await self.client.delete(KUBEARMOR_POLICIES, metadata["namespace"],
                                         metadata["name"], uid=metadata.get("uid"))
            except ApiError as error:
                self._failed("delete", "kubearmorpolicies", error, outcome)
                return
            self._wrote("delete", "kubearmorpolicies")
            self.kubearmor_policies.delete(object_key(obj))
        outcome.deleted.append(metadata["name"])

    async def _write_status(self, nimbus_policy: Obj, names: list[str], outcome: Outcome) -> None:
        patch = status_patch(nimbus_policy, names)
        if patch is None:
            return
        if not self.config.dry_run:
            metadata = nimbus_policy["metadata"]
            try:
                written = await self.client.patch(NIMBUS_POLICIES, metadata["namespace"],
                                                  metadata["name"], patch, MERGE_PATCH,
                                                  FIELD_MANAGER, subresource="status")
            except ApiError as error:
                self._failed("patch", "nimbuspolicies/status", error, outcome)
                return
            self._wrote("patch", "nimbuspolicies/status")
            self.nimbus_policies.upsert(written)
        outcome.status_written = True


def summary_counts(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    return {
        "created": sum(len(o.created) for o in outcomes),
        "updated": sum(len(o.updated) for o in outcomes),
        "deleted": sum(len(o.deleted) for o in outcomes),
        "unchanged": sum(o.unchanged for o in outcomes),
        "failed": sum(1 for o in outcomes if o.failed),
    }
