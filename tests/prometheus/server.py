"""Debian's `prometheus` on 127.0.0.1 with a throwaway config and data directory, started and
stopped by the test (a system service the package may run is never used), and its HTTP API."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml

from tests.controlplane.launcher import free_port, wait_for
from tests.prometheus.rules import binary


class PromQLError(AssertionError):
    """Prometheus answered a query with an error (or a warning)."""


class PrometheusServer:
    def __init__(self, scrape_configs: list[dict[str, Any]], rule_files: Sequence[Path] = (),
                 interval: str = "1s") -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="nimbus-kubearmor-prometheus-"))
        self.config = {
            "global": {"scrape_interval": interval, "scrape_timeout": interval,
                       "evaluation_interval": interval},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": scrape_configs,
        }
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> PrometheusServer:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def start(self, timeout: float = 30) -> None:
        config = self.directory / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.port = free_port()
        with (self.directory / "prometheus.log").open("ab") as log:
            self.process = subprocess.Popen(
                [binary("prometheus"), f"--config.file={config}",
                 f"--storage.tsdb.path={self.directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL)

        def ready() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log_tail()
            try:
                return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, timeout, "Prometheus to be ready")

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        log = self.directory / "prometheus.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""

    # --- the HTTP API ---------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>: its data; PromQLError when it answers an error or a warning."""
        body = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        if body["status"] != "success":
            raise PromQLError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        if body.get("warnings"):
            raise PromQLError(f"{path} {params}: warnings {body['warnings']}")
        return body["data"]

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """An instant query's series: (labels, value) each."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        assert data["resultType"] == "vector", data
        return [(series["metric"], float(series["value"][1])) for series in data["result"]]

    def label_values(self, label: str, match: str) -> list[str]:
        return list(self.api(f"label/{label}/values", **{"match[]": match}))

    def metric_types(self) -> dict[str, str]:
        """Metric family -> type (counter, gauge, histogram, ...), from the targets' metadata."""
        return {name: entries[0]["type"] for name, entries in self.api("metadata").items()}

    def rules(self) -> dict[str, dict[str, Any]]:
        """Rules by name (alert or record), as Prometheus evaluates them: health, state, ..."""
        return {rule.get("name", ""): rule for group in self.api("rules")["groups"]
                for rule in group["rules"]}

