"""`make bench --quick` runs, and its figures that are properties rather than timings hold:
no write in steady state, no request per reconcile of an up-to-date NimbusPolicy. The suites
whose subject has an end-to-end test of its own (bigpolicy: tests/e2e/test_big_policy.py;
namespaces, which --quick skips: test_many_namespaces.py) are left out, for make test's time,
as is startup (a control plane of its own and a compile of every module: 26 s; the import graph
it measures is kept honest by tests/unit/test_imports.py). The controller suite runs at the
smallest scale that still measures each figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_quick_benchmarks_run(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "tests.bench", "--quick",
                             "--results", str(tmp_path / "results.json"),
                             "queue", "memory", "controller"],
                            capture_output=True, text=True, timeout=600, cwd=REPO,
                            env={**os.environ, "BENCH_SCALE": "20", "BENCH_SAMPLES": "5",
                                 "BENCH_RESYNC_PERIOD": "5s"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads((tmp_path / "results.json").read_text())
    assert figures["steady_state_writes"] == 0
    assert figures["api_requests_per_reconcile"] == 0
    assert figures["queue_ops_per_s"] > 0 and figures["convergence_ratio"] > 0
    for key in ("floor_s", "convergence_s", "rss_mb", "create_latency_p99_ms",
                "drift_latency_p99_ms", "create_latency_floor_p99_ms"):
        assert figures[key] > 0, key
