"""`python -m reconciler` as a process: --once and --dry-run, the probes and metrics, signals."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.controlplane.launcher import LocalControlPlane, wait_for
from tests.e2e.conftest import RECONCILER_USER, eventually, writes_by
from tests.e2e.nimbus import (
    create_nimbus_policy,
    nimbus_policies,
    policy_names,
    rule,
)
from tests.process import ReconcilerProcess

REPO = Path(__file__).resolve().parents[2]


def reconciler(*args: str, kubeconfig: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reconciler", "--kubeconfig", str(kubeconfig),
                           "--log-format", "json", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)



async def test_once_and_dry_run(api: httpx.AsyncClient, namespace: str,
                                control_plane: LocalControlPlane,
                                reconciler_kubeconfig: Path) -> None:
    await create_nimbus_policy(api, namespace, "web", [rule("escapeToHost"), rule("nope")])
    await create_nimbus_policy(api, namespace, "db", [rule("dnsManipulation", "Audit")])
    await create_nimbus_policy(api, namespace, "lonely", [rule("pkgMgrs")], owner=None)
    scope = ("--once", "--namespace", namespace)

    mark = len(control_plane.audit_events())
    dry = reconciler(*scope, "--dry-run", kubeconfig=reconciler_kubeconfig)
    assert dry.returncode == 1, dry.stderr  # something would change (bad input is also reported)
    assert f"NimbusPolicy {namespace}/web: would create web-escapetohost-disallowchroot" in dry.stdout
    assert f"NimbusPolicy {namespace}/lonely: skipped (orphan" in dry.stdout
    assert "unknown intent 'nope'" in dry.stdout
    assert dry.stdout.strip().splitlines()[-2:] == [
        "dry run: 3 NimbusPolicies (1 skipped): would create 4, would update 0, would delete 0,"
        " unchanged 0, failed 0, problems 1; 2 statuses would be written",
        "exit 1: changes would be made"]
    assert writes_by(control_plane, RECONCILER_USER, since=mark) == []
    assert await policy_names(api, namespace) == set()

    first = reconciler(*scope, kubeconfig=reconciler_kubeconfig)
    assert first.returncode == 2, first.stderr
    assert "created 4, updated 0, deleted 0, unchanged 0, failed 0, problems 1" in first.stdout
    assert len(await policy_names(api, namespace)) == 4

    mark = len(control_plane.audit_events())
    again = reconciler(*scope, kubeconfig=reconciler_kubeconfig)
    assert "created 0, updated 0, deleted 0, unchanged 4, failed 0, problems 1" in again.stdout
    assert writes_by(control_plane, RECONCILER_USER, since=mark) == []

    # stale policies are deleted; fixed input exits 0
    await api.patch(f"{nimbus_policies(namespace)}/web", headers={
        "Content-Type": "application/merge-patch+json"}, content=json.dumps(
        {"spec": {"rules": [rule("dnsManipulation")]}}))
    fixed = reconciler(*scope, kubeconfig=reconciler_kubeconfig)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "created 1, updated 0, deleted 3, unchanged 1, failed 0, problems 0" in fixed.stdout
    assert await policy_names(api, namespace) == {"web-dnsmanipulation", "db-dnsmanipulation"}


async def test_once_exits_3_when_writes_fail(api: httpx.AsyncClient, namespace: str,
                                             control_plane: LocalControlPlane) -> None:
    await create_nimbus_policy(api, namespace, "web", [rule("dnsManipulation")])
    reader = "nimbus-kubearmor-reader"
    control_plane.grant(reader, [
        {"apiGroups": ["intent.security.nimbus.com"], "resources": ["nimbuspolicies"],
         "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["security.kubearmor.com"], "resources": ["kubearmorpolicies"],
         "verbs": ["get", "list", "watch"]}])
    result = reconciler("--once", "--namespace", namespace,
                        kubeconfig=control_plane.identity_kubeconfig(reader))
    assert result.returncode == 3, result.stdout + result.stderr
    assert "FAILED: 403 Forbidden" in result.stdout
    assert "failed 1" in result.stdout.splitlines()[-2]
    assert result.stdout.splitlines()[-1] == "exit 3: 1 NimbusPolicy failed"


async def test_text_logs_and_the_summary_escape_what_users_wrote(
        api: httpx.AsyncClient, namespace: str, reconciler_kubeconfig: Path) -> None:
    """A rule id is the user's text: a newline in it must not forge a log or summary line."""
    forged = "dns\n12:00:00.000 ERROR   forged line  nimbuspolicy=x\x1b[31m"
    await create_nimbus_policy(api, namespace, "evil", [rule(forged), rule("pkgMgrs")])
    result = subprocess.run([sys.executable, "-m", "reconciler", "--kubeconfig",
                             str(reconciler_kubeconfig), "--log-format", "text", "--once",
                             "--namespace", namespace], capture_output=True, text=True,
                            timeout=60, cwd=REPO)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert any("unknown intent" in line for line in lines)
    for line in lines:
        assert re.match(r"\d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR) ", line), line
        assert "\x1b" not in line
    summary = result.stdout.splitlines()
    assert not [line for line in summary if line.startswith("12:00")]
    assert any("dns\\n12:00:00.000 ERROR" in line for line in summary), summary


def _get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=5)


async def test_controller_process_probes_metrics_and_sigterm(
        api: httpx.AsyncClient, namespace: str, reconciler_kubeconfig: Path) -> None:
    with ReconcilerProcess(reconciler_kubeconfig, namespace, "--workers", "2") as process:
        process.start()
        wait_for(process.ready, 30, "/readyz")
        assert _get(f"http://127.0.0.1:{process.probe_port}/healthz").text == "ok"
        await create_nimbus_policy(api, namespace, "web", [rule("escapeToHost")])

        async def converged() -> bool:
            return len(await policy_names(api, namespace)) == 3
        await eventually(converged, what="the process to create three policies")
        # the reconcile that created them ends (its status written, its time observed) after
        # they exist
        scrape = await eventually(
            lambda: (text := process.metrics()) and re.search(r'result="success"} [1-9]', text)
            and text,
            what="the reconcile to be counted")
        for name in ("workqueue_depth", "workqueue_adds_total", "workqueue_queue_duration_seconds",
                     "workqueue_work_duration_seconds", "workqueue_unfinished_work_seconds",
                     "workqueue_longest_running_processor_seconds", "workqueue_retries_total",
                     "controller_runtime_reconcile_total", "controller_runtime_reconcile_time_seconds",
                     "controller_runtime_max_concurrent_reconciles",
                     "controller_runtime_active_workers", "process_resident_memory_bytes",
                     "nimbus_kubearmor_policy_writes_total"):
            assert f"\n{name}" in scrape, name
        assert 'controller_runtime_max_concurrent_reconciles{controller="nimbuspolicy"} 2.0' in scrape
        assert 'nimbus_kubearmor_policy_writes_total{resource="kubearmorpolicies",verb="create"} 3.0' \
            in scrape
        assert "_created" not in scrape
        sent = time.monotonic()
        assert process.stop(signal.SIGTERM, timeout=10) == 0
        assert time.monotonic() - sent < 5
        lines: list[dict[str, Any]] = [json.loads(line) for line in process.log_text().splitlines()
                                       if line.strip()]
    messages = [line["msg"] for line in lines]
    assert "caches synced" in messages and "stopping" in messages and messages[-1] == "stopped"
    reconciled = next(line for line in lines if line["msg"] == "reconciled")
    assert reconciled["nimbuspolicy"] == f"{namespace}/web" and reconciled["level"] == "info"
