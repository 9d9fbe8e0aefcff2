"""`make demo` keeps working: it runs start to finish and shows the repairs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_demo_runs_start_to_finish() -> None:
    result = subprocess.run([sys.executable, "-m", "tests.demo"], capture_output=True, text=True,
                            timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert out.count("-> repaired in") == 2
    assert "web-escapetohost-disallowcapabilities" in out and "UnknownIntent" in out
    assert "metrics, over HTTPS: without a token 401" in out
    assert "  controller_runtime_reconcile_total{" in out  # scraped with the reader's token
    assert "reconciler exited 0" in out and out.rstrip().endswith("done.")
    assert "Traceback" not in out + result.stderr
