"""The two ways to run: the controller (until SIGTERM/SIGINT) and a one-shot `--once` sync."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import anyio
import attrs
import kr8s.asyncio
from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry

from .clock import Clock, MonotonicClock
from .controller import Controller, ControllerConfig, Outcome, summary_counts
from .kube import KubeClient, service_account_token
from .leaderelection import LeaderElectionConfig
from .logs import escape_control
from .manager import Manager
from .metrics import Metrics
from .server import parse_bind_address
from .servingcerts import CertificateError, ServingCertificate
from .tokenfile import TokenFile

log = logging.getLogger(__name__)


@attrs.frozen
class RunOptions:
    controller: ControllerConfig
    kubeconfig: str | None = None
    metrics_bind_address: str = ":8443"
    # HTTPS with TokenReview + SubjectAccessReview (delegatedauth.py); False: plain HTTP
    metrics_secure: bool = True
    metrics_cert_path: str | None = None  # a directory; None: a self-signed certificate
    metrics_cert_name: str = "tls.crt"
    metrics_cert_key: str = "tls.key"
    health_probe_bind_address: str = ":8081"
    leader_election: LeaderElectionConfig | None = None  # None: no election, always reconcile
    shutdown_grace: float = 4.0  # reconciles under way get this long to finish after SIGTERM


def process_registry() -> CollectorRegistry:
    """Our metrics plus the process's own (resident memory, CPU, open fds, GC)."""
    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


async def connect(kubeconfig: str | None, *, serviceaccount: str | None = None,
                  clock: Clock | None = None) -> KubeClient:
    """--kubeconfig, else $KUBECONFIG or ~/.kube/config, else the in-cluster configuration
    (kr8s's order): the service account the kubelet mounts (`serviceaccount`: another directory,
    for tests), its token read again every minute by `clock`."""
    api = await kr8s.asyncio.api(kubeconfig=kubeconfig, serviceaccount=serviceaccount)
    token = service_account_token(api.auth)
    return KubeClient(api, token_file=TokenFile(token, clock or MonotonicClock())
                      if token is not None else None)


def metrics_certificate(options: RunOptions, metrics: Metrics) -> ServingCertificate | None:
    """The certificate /metrics is served with; None for plain HTTP (or no /metrics at all).
    Raises CertificateError when the files given cannot be used."""
    if not options.metrics_secure or parse_bind_address(options.metrics_bind_address) is None:
        return None
    files = None
    if options.metrics_cert_path is not None:
        directory = Path(options.metrics_cert_path)
        files = (directory / options.metrics_cert_name, directory / options.metrics_cert_key)
    return ServingCertificate(files, loaded=metrics.certificate_reads.inc,
                              failed=metrics.certificate_read_errors.inc)


async def run_controller(options: RunOptions, metrics: Metrics | None = None) -> int:
    """Exit status 0 after SIGTERM/SIGINT, 1 when leadership was lost (see manager.py) or the
    metrics certificate cannot be used."""
    metrics = metrics or Metrics(process_registry())
    try:
        certificate = metrics_certificate(options, metrics)
    except CertificateError as error:
        log.error("cannot serve metrics", extra={"error": str(error)})
        return 1
    manager = Manager(lambda: connect(options.kubeconfig), metrics,
                      options.controller, options.leader_election,
                      options.metrics_bind_address, options.health_probe_bind_address,
                      options.shutdown_grace, certificate)
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
