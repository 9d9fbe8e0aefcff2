"""The reconciler as a separate process, for tests that stop, kill and restart it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from tests.controlplane.launcher import free_port

REPO = Path(__file__).resolve().parents[2]


class ReconcilerProcess:
    def __init__(self, kubeconfig: Path, namespace: str, *extra: str) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self.probe_port = 0
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"reconciler-{namespace}.log"

    def start(self) -> None:
        self.probe_port = free_port()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "reconciler", "--kubeconfig", str(self.kubeconfig),
                 "--namespace", self.namespace, "--metrics-bind-address", "0",
                 "--health-probe-bind-address", f"127.0.0.1:{self.probe_port}", *self.extra],
                stdout=log, stderr=log, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def ready(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.probe_port}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self, how: signal.Signals = signal.SIGTERM, timeout: float = 15) -> int:
        assert self.process is not None
        self.process.send_signal(how)
        return self.process.wait(timeout=timeout)

    def kill_if_running(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
