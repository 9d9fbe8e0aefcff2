"""Running the controller (until SIGTERM/SIGINT), and the connection to the API server that it
and `--once` (once.py) share. Loading this module loads no HTTP server and no metrics: what the
controller needs is imported when it runs."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import attrs
import kr8s.asyncio

from .clock import Clock, MonotonicClock
from .credentials import SERVICE_ACCOUNT, find_source
from .inlinecredentials import remove_written_files
from .kube import KubeClient
from .tokenfile import TokenFile

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from .controller import ControllerConfig
    from .leaderelection import LeaderElectionConfig
    from .metrics import Metrics
    from .servingcerts import ServingCertificate

# kr8s warns, as a bare line on stderr outside our log format, whenever the API server is newer
# than the newest Kubernetes it names (kr8s 0.20.15: 1.35). We use it only to authenticate and
# send requests, and test the releases we support (1.30 to 1.37, README) ourselves.
warnings.filterwarnings("ignore", message=r"Kubernetes version \S+ is not supported",
                        category=UserWarning, module=r"kr8s\.")


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
    from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR, CollectorRegistry

    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


async def connect(kubeconfig: str | None, *, serviceaccount: str | None = None,
                  clock: Clock | None = None, throttled_retries: int = 0) -> KubeClient:
    """The API server, as credentials.py finds it (controller-runtime's order: --kubeconfig,
    $KUBECONFIG, in-cluster, ~/.kube/config; `serviceaccount`: another directory than the
    kubelet's, for tests); in a pod, the token read again every minute by `clock`.
    `throttled_retries`: KubeClient's. Raises
    CredentialsError when there is no source or the one named is missing."""
    source = find_source(kubeconfig, serviceaccount=Path(serviceaccount) if serviceaccount
                         else SERVICE_ACCOUNT)
    # An Api of our own (kr8s's factory hands back one made earlier with the same arguments,
    # whose client another user may be changing); serviceaccount "": kr8s must not go looking
    # for one itself when the kubeconfig names no server.
    api = kr8s.asyncio.Api(bypass_factory=True, kubeconfig=source.kubeconfig, serviceaccount="")
    try:
        await api.auth  # reads the credentials (kr8s writes its copies of inline data)
        token_file = None if source.token_file is None else TokenFile(source.token_file,
                                                                      clock or MonotonicClock())
        client = KubeClient(api, token_file=token_file, throttled_retries=throttled_retries)
        # The first request makes kr8s's HTTP client. (Not kr8s's own check of /version: it
        # raises for statuses, re-reading the credentials three times on a 401.)
        await client.server_version()
    except BaseException:
        session = getattr(api, "_session", None)
        if session is not None:  # its connection closed now, not when garbage is collected
            with anyio.CancelScope(shield=True):
                await session.aclose()
        raise
    finally:
        remove_written_files(api.auth)
    return client


def metrics_certificate(options: RunOptions, metrics: Metrics) -> ServingCertificate | None:
    """The certificate /metrics is served with; None for plain HTTP (or no /metrics at all).
    Raises CertificateError when the files given cannot be used."""
    from .bindaddress import parse_bind_address
    from .servingcerts import ServingCertificate

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
    import logging

    from .manager import Manager
    from .memory import freeze_startup_objects
    from .metrics import Metrics
    from .servingcerts import CertificateError

    metrics = metrics or Metrics(process_registry())
    try:
        certificate = metrics_certificate(options, metrics)
    except CertificateError as error:
        logging.getLogger(__name__).error("cannot serve metrics", extra={"error": str(error)})
        return 1
    manager = Manager(lambda: connect(options.kubeconfig), metrics,
                      options.controller, options.leader_election,
                      options.metrics_bind_address, options.health_probe_bind_address,
                      options.shutdown_grace, certificate)
    freeze_startup_objects()
    return await manager.run()
