"""Running the controller (until SIGTERM/SIGINT), and the connection to the API server that it
and `--once` (once.py) share. Loading this module loads no HTTP server and no metrics: what the
controller needs is imported when it runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import kr8s.asyncio

from .kube import KubeClient

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .controller import ControllerConfig
    from .leaderelection import LeaderElectionConfig
    from .metrics import Metrics


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
    from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry

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
    from .manager import Manager
    from .metrics import Metrics

    manager = Manager(lambda: connect(options.kubeconfig), metrics or Metrics(process_registry()),
                      options.controller, options.leader_election,
                      options.metrics_bind_address, options.health_probe_bind_address,
                      options.shutdown_grace)
    return await manager.run()
