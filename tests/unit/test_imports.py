"""Each mode loads only what it needs (start-up time: `make bench`'s start-up figures), checked
on the real entry point in a fresh interpreter with `python -X importtime`, which lists every
module imported. The e2e twin (tests/e2e/test_once.py) checks a whole --once run."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NIMBUS_POLICY = """\
apiVersion: intent.security.nimbus.com/v1alpha1
kind: NimbusPolicy
metadata: {name: web, namespace: ns}
spec:
  selector: {matchLabels: {app: web}}
  rules: [{id: dnsManipulation, rule: {action: Block}}]
"""
HEAVY = {"kr8s", "httpx", "aiohttp", "prometheus_client", "cattrs", "yaml"}


def imported(*args: str, stdin: str = "") -> tuple[set[str], subprocess.CompletedProcess[str]]:
    """The top-level packages `python -m reconciler *args` imports, and how it ended."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "reconciler", *args],
                            capture_output=True, text=True, cwd=REPO, input=stdin, timeout=60)
    modules = {match[1].split(".")[0] for match in
               re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", result.stderr, re.M)}
    assert "reconciler" in modules, result.stderr[-2000:]
    return modules, result


def test_help_and_bad_flags_load_nothing_heavy() -> None:
    modules, result = imported("--help")
    assert result.returncode == 0 and "exit status" in result.stdout
    assert modules & HEAVY == set()
    modules, result = imported("--once", "--output", "yaml")
    assert result.returncode == 4 and "invalid choice" in result.stderr
    assert modules & HEAVY == set()


def test_render_loads_no_client_no_server_no_metrics() -> None:
    modules, result = imported("render", "-f", "-", stdin=NIMBUS_POLICY)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "kind: KubeArmorPolicy" in result.stdout
    assert {"yaml", "cattrs"} <= modules
    assert modules & {"kr8s", "httpx", "aiohttp", "prometheus_client"} == set()


def test_once_connects_before_loading_the_reconciler(tmp_path: Path) -> None:
    """Nothing listens on port 1: the connection fails before the controller (its model,
    converters and metrics) is loaded, and no HTTP server is loaded at all."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1', "
        "insecure-skip-tls-verify: true}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n")
    modules, result = imported("--once", "--kubeconfig", str(kubeconfig))
    assert result.returncode == 4, result.stdout + result.stderr[-2000:]
    assert result.stdout.splitlines()[-1].startswith("exit 4: could not run: cannot reach the "
                                                     "API server: ConnectError")
    assert "kr8s" in modules
    assert modules & {"aiohttp", "prometheus_client", "cattrs"} == set()
