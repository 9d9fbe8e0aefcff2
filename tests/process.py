"""`python -m reconciler` as a separate process, for tests and benchmarks that scrape, signal,
kill and restart it. Its output goes to a log file that outlives stops and restarts and is
removed when the context ends."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType

import httpx

from tests.controlplane.launcher import free_port

REPO = Path(__file__).resolve().parents[1]


class ReconcilerProcess:
    def __init__(self, kubeconfig: Path, namespace: str | None, *extra: str,
                 env: dict[str, str] | None = None, metrics_token: str | None = None,
                 open_files: int | None = None) -> None:
        """`namespace` None: every namespace, as a cluster-wide deployment runs.
        `metrics_token`: serve /metrics as a Deployment does (HTTPS, to those the API server
        authenticates and authorizes: the kubeconfig's identity needs config/rbac's metrics
        auth role) and scrape it with this token; None: plain HTTP (--metrics-secure=false).
        `open_files`: start it with this soft limit on open files (the hard limit unchanged),
        as a container runtime may (containerd 2 gives 1024)."""
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.extra = extra
        self.env = env or {}
        self.metrics_token = metrics_token
        self.open_files = open_files
        self.process: subprocess.Popen[bytes] | None = None
        self.probe_port = self.metrics_port = 0
        self._logs = Path(tempfile.mkdtemp(prefix="nimbus-kubearmor-reconciler-"))
        self.log = self._logs / "reconciler.log"

    def __enter__(self) -> ReconcilerProcess:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Kill it if it still runs, and remove its log."""
        self.kill_if_running()
        shutil.rmtree(self._logs, ignore_errors=True)

    def start(self) -> None:
        """Start it (again), on fresh ports, appending to the same log."""
        self.probe_port, self.metrics_port = free_port(), free_port()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "reconciler", "--kubeconfig", str(self.kubeconfig),
                 *(["--namespace", self.namespace] if self.namespace else []),
                 "--metrics-bind-address", f"127.0.0.1:{self.metrics_port}",
                 "--health-probe-bind-address", f"127.0.0.1:{self.probe_port}",
                 *(["--metrics-secure=false"] if self.metrics_token is None else []),
                 *self.extra],
                stdout=log, stderr=log, cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                preexec_fn=None if self.open_files is None else self._limit_open_files)

    def _limit_open_files(self) -> None:
        assert self.open_files is not None
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, hard))

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.probe_port}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    @property
    def metrics_url(self) -> str:
        scheme = "http" if self.metrics_token is None else "https"
        return f"{scheme}://127.0.0.1:{self.metrics_port}/metrics"

    def scrape(self, token: str | None = None) -> httpx.Response:
        """GET /metrics with `token` (over HTTPS when served so, trusting the self-signed
        certificate as kubebuilder's ServiceMonitor does: insecureSkipVerify)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(self.metrics_url, headers=headers, timeout=15, verify=False)

    def metrics(self) -> str:
        """The /metrics text (scraped with `metrics_token`), or "" while it is not answering."""
        try:
            response = self.scrape(self.metrics_token)
        except httpx.TransportError:
            return ""
        return response.text if response.status_code == 200 else ""

    def stop(self, how: signal.Signals = signal.SIGTERM, timeout: float = 15) -> int:
        assert self.process is not None
        self.process.send_signal(how)
        return self.process.wait(timeout=timeout)

    def kill_if_running(self) -> None:
        if self.running():
            assert self.process is not None
            self.process.kill()
            self.process.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
