"""The two ways to run: the controller (until SIGTERM/SIGINT) and a one-shot `--once` sync."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Sequence
from typing import TextIO

import anyio
import attrs
import kr8s.asyncio
from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry

from .controller import Controller, ControllerConfig, Outcome, summary_counts
from .kube import KubeClient
from .leaderelection import LeaderElectionConfig
from .logs import escape_control
from .manager import Manager
from .metrics import Metrics

log = logging.getLogger(__name__)

# kr8s warns, as a bare line on stderr outside our log format, whenever the API server is newer
# than the newest Kubernetes it names (kr8s 0.20.15: 1.35). We use it only to authenticate and
# send requests, and test the releases we support (1.30 to 1.37, README) ourselves.
warnings.filterwarnings("ignore", message=r"Kubernetes version \S+ is not supported",
                        category=UserWarning, module=r"kr8s\.")


@attrs.frozen
class RunOptions:
    controller: ControllerConfig
    kubeconfig: str | None = None
    metrics_bind_address: str = ":8080"
    health_probe_bind_address: str = ":8081"
    leader_election: LeaderElectionConfig | None = None  # None: no election, always reconcile
    shutdown_grace: float = 4.0  # reconciles under way get this long to finish after SIGTERM


def process_registry() -> CollectorRegistry:
    """Our metrics plus the process's own (resident memory, CPU, open fds, GC)."""
    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


async def connect(kubeconfig: str | None) -> KubeClient:
    """In-cluster service account, else KUBECONFIG / ~/.kube/config (or --kubeconfig)."""
    api = await kr8s.asyncio.api(kubeconfig=kubeconfig)
    return KubeClient(api)


async def run_controller(options: RunOptions, metrics: Metrics | None = None) -> int:
    """Exit status 0 after SIGTERM/SIGINT, 1 when leadership was lost (see manager.py)."""
    manager = Manager(lambda: connect(options.kubeconfig), metrics or Metrics(process_registry()),
                      options.controller, options.leader_election,
                      options.metrics_bind_address, options.health_probe_bind_address,
                      options.shutdown_grace)
    return await manager.run()


async def run_once(options: RunOptions, out: TextIO = sys.stdout) -> int:
    """List everything, reconcile every NimbusPolicy once, print what happened. Exit status:
    0 converged, 1 something failed, 2 converged apart from bad input (problems)."""
    client = await connect(options.kubeconfig)
    controller = Controller(client, Metrics(CollectorRegistry()), options.controller)
    for reflector in controller.reflectors:
        await reflector.list_once()
    keys = sorted(controller.nimbus_policies.list_keys())
    outcomes: list[Outcome] = []
    limiter = anyio.CapacityLimiter(max(1, options.controller.workers))

    async def reconcile(key: str) -> None:
        async with limiter:
            outcomes.append(await controller.reconcile(key))

    async with anyio.create_task_group() as tasks:
        for key in keys:
            tasks.start_soon(reconcile, key)
    outcomes.sort(key=lambda o: o.key)
    print_summary(outcomes, options.controller.dry_run, out)
    if any(o.failed for o in outcomes):
        return 1
    return 2 if any(o.problems for o in outcomes) else 0


def print_summary(outcomes: Sequence[Outcome], dry_run: bool, out: TextIO) -> None:
    would = "would " if dry_run else ""
    for o in outcomes:
        actions = ([f"{would}create {n}" for n in o.created] +
                   [f"{would}patch {n}" for n in o.updated] +
                   [f"{would}delete {n}" for n in o.deleted] +
                   ([f"{would}write status"] if o.status_written else []) +
                   [f"FAILED: {e}" for e in o.errors])
        if o.skipped:
            actions.append(f"skipped ({o.skipped})")
        if actions:
            print(escape_control(f"NimbusPolicy {o.key}: " + "; ".join(actions)), file=out)
    problems = [p for o in outcomes for p in o.problems]
    if problems:
        print("problems:", file=out)
        for problem in problems:
            print(f"  {escape_control(str(problem))}", file=out)
    counts = summary_counts(outcomes)
    skipped = sum(1 for o in outcomes if o.skipped)
    print(f"{'dry run: ' if dry_run else ''}{len(outcomes)} NimbusPolicies ({skipped} skipped): "
          f"{would}created {counts['created']}, {would}updated {counts['updated']}, "
          f"{would}deleted {counts['deleted']}, unchanged {counts['unchanged']}, "
          f"failed {counts['failed']}, problems {len(problems)}", file=out)
