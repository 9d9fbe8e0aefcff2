"""Every metric the reconciler exports, on a registry the caller passes (tests use their own).

Names and labels are controller-runtime's, so its dashboards work unchanged; the project's own
metrics are prefixed `nimbus_kubearmor_`.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

# controller-runtime exports no `*_created` series; neither do we.
disable_created_metrics()  # type: ignore[no-untyped-call]

# controller-runtime: prometheus.ExponentialBuckets(10e-9, 10, 12)
WORKQUEUE_BUCKETS = tuple(1e-8 * 10**i for i in range(12))
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5,
                     0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5, 6,
                     7, 8, 9, 10, 15, 20, 25, 30, 40, 50, 60)
QUEUE_LABELS = ("name", "controller")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # --- the work queue ---
        self.workqueue_depth = Gauge("workqueue_depth", "Current depth of workqueue",
                                     QUEUE_LABELS, registry=r)
        self.workqueue_adds = Counter("workqueue_adds_total",
                                      "Total number of adds handled by workqueue",
                                      QUEUE_LABELS, registry=r)
        self.workqueue_queue_duration = Histogram(
            "workqueue_queue_duration_seconds",
            "How long in seconds an item stays in workqueue before being requested",
            QUEUE_LABELS, buckets=WORKQUEUE_BUCKETS, registry=r)
        self.workqueue_work_duration = Histogram(
            "workqueue_work_duration_seconds",
            "How long in seconds processing an item from workqueue takes",
            QUEUE_LABELS, buckets=WORKQUEUE_BUCKETS, registry=r)
        self.workqueue_unfinished_work = Gauge(
            "workqueue_unfinished_work_seconds",
            "How many seconds of work has been done that is in progress and hasn't been "
            "observed by work_duration", QUEUE_LABELS, registry=r)
        self.workqueue_longest_running_processor = Gauge(
            "workqueue_longest_running_processor_seconds",
            "How many seconds has the longest running processor for workqueue been running",
            QUEUE_LABELS, registry=r)
        self.workqueue_retries = Counter("workqueue_retries_total",
                                         "Total number of retries handled by workqueue",
                                         QUEUE_LABELS, registry=r)
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
        self.cache_synced = Gauge("nimbus_kubearmor_cache_synced",
                                  "1 when the reflector of a resource has listed and is watching",
                                  ("resource",), registry=r)

    def queue(self, name: str, controller: str) -> QueueMetrics:
        return QueueMetrics(self, name, controller)


class QueueMetrics:
    """The workqueue_* children of one queue, bound to its labels once (the queue's hot path)."""

    def __init__(self, metrics: Metrics, name: str, controller: str) -> None:
        labels = {"name": name, "controller": controller}
        self.depth = metrics.workqueue_depth.labels(**labels)
        self.adds = metrics.workqueue_adds.labels(**labels)
        self.queue_duration = metrics.workqueue_queue_duration.labels(**labels)
        self.work_duration = metrics.workqueue_work_duration.labels(**labels)
        self.unfinished_work = metrics.workqueue_unfinished_work.labels(**labels)
        self.longest_running_processor = metrics.workqueue_longest_running_processor.labels(**labels)
        self.retries = metrics.workqueue_retries.labels(**labels)

    def track(self, depth: Callable[[], float], unfinished: Callable[[], float],
              longest: Callable[[], float]) -> None:
        """Gauges computed when scraped from the queue's own state, so the hot path never
        takes their locks."""
        self.depth.set_function(depth)
        self.unfinished_work.set_function(unfinished)
        self.longest_running_processor.set_function(longest)
