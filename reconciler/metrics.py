"""Every metric the reconciler exports, on a registry the caller passes (tests use their own).

Names and labels are controller-runtime's, so its dashboards work unchanged; the project's own
metrics are prefixed `nimbus_kubearmor_`.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .problems import ProblemKind

# controller-runtime exports no `*_created` series; neither do we.
disable_created_metrics()  # type: ignore[no-untyped-call]

# controller-runtime: prometheus.ExponentialBuckets(10e-9, 10, 12)
WORKQUEUE_BUCKETS = tuple(1e-8 * 10**i for i in range(12))
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5,
                     0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5, 6,
                     7, 8, 9, 10, 15, 20, 25, 30, 40, 50, 60)
QUEUE_LABELS = ("name", "controller")
DRIFT_FIELDS = ("missing", "spec", "labels", "annotations", "owner")
POLICY_WRITES = (("create", "kubearmorpolicies"), ("patch", "kubearmorpolicies"),
                 ("delete", "kubearmorpolicies"), ("patch", "nimbuspolicies/status"))
CONFLICT_RESOURCES = ("kubearmorpolicies", "nimbuspolicies/status")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # --- the work queue: workqueue_* from a collector of our own (see WorkqueueCollector) ---
        self._workqueues = WorkqueueCollector()
        r.register(self._workqueues)
        # --- the controller ---
        self.reconcile_total = Counter("controller_runtime_reconcile_total",
                                       "Total number of reconciliations per controller",
                                       ("controller", "result"), registry=r)
        self.reconcile_errors = Counter("controller_runtime_reconcile_errors_total",
                                        "Total number of reconciliation errors per controller",
                                        ("controller",), registry=r)
        self.reconcile_time = Histogram("controller_runtime_reconcile_time_seconds",
                                        "Length of time per reconciliation per controller",
                                        ("controller",), buckets=RECONCILE_BUCKETS, registry=r)
        self.max_concurrent_reconciles = Gauge(
            "controller_runtime_max_concurrent_reconciles",
            "Maximum number of concurrent reconciles per controller", ("controller",), registry=r)
        self.active_workers = Gauge("controller_runtime_active_workers",
                                    "Number of currently used workers per controller",
                                    ("controller",), registry=r)
        self.leader_election_master_status = Gauge(
            "leader_election_master_status",
            "Gauge of if the reporting system is master of the relevant lease, 0 indicates "
            "backup, 1 indicates master. 'name' is the string used to identify the lease.",
            ("name",), registry=r)
        # --- the project's own ---
        self.policy_writes = Counter("nimbus_kubearmor_policy_writes_total",
                                     "API writes made by the reconciler, by verb and resource",
                                     ("verb", "resource"), registry=r)
        self.drift_corrections = Counter(
            "nimbus_kubearmor_drift_corrections_total",
            "KubeArmorPolicies found differing from the desired state and corrected, by what "
            "differed (missing, spec, labels, annotations, owner)", ("field",), registry=r)
        self.watch_restarts = Counter("nimbus_kubearmor_watch_restarts_total",
                                      "Watch streams restarted, by resource and reason",
                                      ("resource", "reason"), registry=r)
        self.relists = Counter("nimbus_kubearmor_relists_total",
                               "Full LISTs made by the reflectors, by resource",
                               ("resource",), registry=r)
        self.problems = Counter("nimbus_kubearmor_problems_total",
                                "Bad input found in NimbusPolicies, by kind (reported once per "
                                "NimbusPolicy generation)", ("kind",), registry=r)
        self.write_errors = Counter("nimbus_kubearmor_api_errors_total",
                                    "Failed API requests, by verb and HTTP status code",
                                    ("verb", "code"), registry=r)
        self.write_conflicts = Counter(
            "nimbus_kubearmor_write_conflicts_total",
            "Writes refused because the object had changed since it was read (409 Conflict, or "
            "a status patch whose test of adapterPolicies failed: another adapter wrote its "
            "entries), by resource; each is made again on a fresh read", ("resource",),
            registry=r)
        # Every series of a known label value exists from the start, at 0 (controller-runtime
        # does the same for its own): increase() and rate() never count a series' first sample,
        # so the first problem of a kind, exported straight at 1, would be invisible to the
        # NimbusKubeArmorBadInput alert and the dashboard. (Open-ended labels, such as an API
        # error's code or a watch restart's reason, cannot be: their first is not counted.)
        for kind in ProblemKind:
            self.problems.labels(kind.value)
        for field in DRIFT_FIELDS:
            self.drift_corrections.labels(field)
        for verb, resource in POLICY_WRITES:
            self.policy_writes.labels(verb, resource)
        for resource in CONFLICT_RESOURCES:
            self.write_conflicts.labels(resource)
        self.cache_synced = Gauge("nimbus_kubearmor_cache_synced",
                                  "1 when the reflector of a resource in a namespace scope (\"\" for "
                                  "all) has listed and is watching", ("resource", "namespace"),
                                  registry=r)
        # controller-runtime's certwatcher: reads of a mounted metrics certificate
        self.certificate_reads = Counter("certwatcher_read_certificate_total",
                                         "Total number of certificate reads", registry=r)
        self.certificate_read_errors = Counter("certwatcher_read_certificate_errors_total",
                                               "Total number of certificate read errors",
                                               registry=r)

    def queue(self, name: str, controller: str) -> QueueMetrics:
        queue = QueueMetrics(name, controller)
        self._workqueues.queues.append(queue)
        return queue


class Count:
    """A counter without a lock: a work queue lives on one event loop."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class Buckets:
    """A histogram without a lock: the count per bucket (the last is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # the first bound >= value
        self.total += value

    def cumulative(self) -> list[tuple[str, float]]:
        running, out = 0, []
        for bound, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            out.append((floatToGoString(bound), float(running)))  # type: ignore[no-untyped-call]
        return out


class QueueMetrics:
    """One work queue's numbers. Every add, get and done touches them, so they are plain
    numbers (prometheus-client's locked metrics cost more than the queue operation itself);
    gauges are functions of the queue's own state, read when scraped."""

    def __init__(self, name: str, controller: str) -> None:
        self.labels = [name, controller]
        self.adds = Count()
        self.retries = Count()
        self.queue_duration = Buckets(WORKQUEUE_BUCKETS)
        self.work_duration = Buckets(WORKQUEUE_BUCKETS)
        self.depth: Callable[[], float] = lambda: 0.0
        self.unfinished_work: Callable[[], float] = lambda: 0.0
        self.longest_running_processor: Callable[[], float] = lambda: 0.0

    def track(self, depth: Callable[[], float], unfinished: Callable[[], float],
              longest: Callable[[], float]) -> None:
        self.depth, self.unfinished_work, self.longest_running_processor = depth, unfinished, longest


class WorkqueueCollector(Collector):
    """Exposes every queue's numbers as controller-runtime's workqueue_* metrics."""

    def __init__(self) -> None:
        self.queues: list[QueueMetrics] = []

    def describe(self) -> Iterable[Metric]:
        return self._families(with_samples=False)

    def collect(self) -> Iterable[Metric]:
        return self._families(with_samples=True)

    def _families(self, with_samples: bool) -> list[Metric]:
        depth = GaugeMetricFamily("workqueue_depth", "Current depth of workqueue",
                                  labels=QUEUE_LABELS)
        adds = CounterMetricFamily("workqueue_adds", "Total number of adds handled by workqueue",
                                   labels=QUEUE_LABELS)
        queue_duration = HistogramMetricFamily(
            "workqueue_queue_duration_seconds",
            "How long in seconds an item stays in workqueue before being requested",
            labels=QUEUE_LABELS)
        work_duration = HistogramMetricFamily(
            "workqueue_work_duration_seconds",
            "How long in seconds processing an item from workqueue takes", labels=QUEUE_LABELS)
        unfinished = GaugeMetricFamily(
            "workqueue_unfinished_work_seconds",
            "How many seconds of work has been done that is in progress and hasn't been "
            "observed by work_duration", labels=QUEUE_LABELS)
        longest = GaugeMetricFamily(
            "workqueue_longest_running_processor_seconds",
            "How many seconds has the longest running processor for workqueue been running",
            labels=QUEUE_LABELS)
        retries = CounterMetricFamily("workqueue_retries",
                                      "Total number of retries handled by workqueue",
                                      labels=QUEUE_LABELS)
        for queue in self.queues if with_samples else ():
            depth.add_metric(queue.labels, queue.depth())
            adds.add_metric(queue.labels, queue.adds.value)
            queue_duration.add_metric(queue.labels, queue.queue_duration.cumulative(),
                                      queue.queue_duration.total)
            work_duration.add_metric(queue.labels, queue.work_duration.cumulative(),
                                     queue.work_duration.total)
            unfinished.add_metric(queue.labels, queue.unfinished_work())
            longest.add_metric(queue.labels, queue.longest_running_processor())
            retries.add_metric(queue.labels, queue.retries.value)
        return [depth, adds, queue_duration, work_duration, unfinished, longest, retries]
