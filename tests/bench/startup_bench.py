"""Start-up of `python -m reconciler`, against two floors measured in the same run, in turns (so
a change in the machine's load weighs on all alike): `python -c pass` (the interpreter) and
`python -c "import kr8s"` (the client library alone, before it has read a kubeconfig).

- help, render: wall time of `--help` and of `render -f config/samples/nimbuspolicies.yaml`
  (targets: <= 200 ms).
- once: `--once` on a local control plane (one namespace, one NimbusPolicy whose policy each run
  creates): from just before the process is started to the API server receiving its first request
  (the audit log's requestReceivedTimestamp, same clock) and its first write, and the whole run.
  Target: the first request within 150 ms of the `import kr8s` floor.

Each under two conditions: with the bytecode of every module compiled (as in the image, where
pip compiles at install, and wherever Python may write __pycache__; here in a temporary
PYTHONPYCACHEPREFIX, so the venv and the work tree are left alone), and `_as_installed`: in the
environment as it is. This machine sets PYTHONDONTWRITEBYTECODE=1, so there every module that
was not compiled at install (`make venv` compiles the venv's; the project's own, installed
editable, are not) is compiled again at every start, the floors' included. Every figure in
milliseconds, min and median over the runs.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.controlplane.assets import build
from tests.controlplane.launcher import LocalControlPlane

REPO = Path(__file__).resolve().parents[2]
USER = "nimbus-kubearmor-startup"
NAMESPACE = "startup"
SAMPLES = REPO / "config" / "samples" / "nimbuspolicies.yaml"
GROUP = "/apis/intent.security.nimbus.com/v1alpha1"


def compiled(pycache: Path, *, write: bool) -> dict[str, str]:
    """Python reads (and with `write`, writes) bytecode in `pycache` only."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    if not write:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def wall(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False, timeout=120, env=env)
    return time.perf_counter() - started


def _timestamp(event: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(event["requestReceivedTimestamp"]).timestamp()


class OnceRuns:
    def __init__(self, cp: LocalControlPlane) -> None:
        self.cp = cp
        role = yaml.safe_load((REPO / "config/rbac/role.yaml").read_text())
        cp.grant(USER, role["rules"])
        self.kubeconfig = cp.identity_kubeconfig(USER)
        with cp.client() as client:
            client.post("/api/v1/namespaces", json={"metadata": {"name": NAMESPACE}}
                        ).raise_for_status()
            binding = client.post(f"{GROUP}/namespaces/{NAMESPACE}/securityintentbindings", json={
                "apiVersion": "intent.security.nimbus.com/v1alpha1",
                "kind": "SecurityIntentBinding", "metadata": {"name": "startup"},
                "spec": {"intents": [{"name": "x"}], "selector": {}}})
            binding.raise_for_status()
            self.owner = binding.json()
        self.runs = 0

    def _pending_create(self) -> None:
        """A NimbusPolicy whose policy does not exist yet: the run's first write creates it."""
        self.runs += 1
        owner = self.owner
        with self.cp.client() as client:
            client.post(f"{GROUP}/namespaces/{NAMESPACE}/nimbuspolicies", json={
                "apiVersion": "intent.security.nimbus.com/v1alpha1", "kind": "NimbusPolicy",
                "metadata": {"name": f"np-{self.runs}", "ownerReferences": [{
                    "apiVersion": owner["apiVersion"], "kind": owner["kind"],
                    "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
                    "controller": True}]},
                "spec": {"selector": {"matchLabels": {"app": "x"}},
                         "rules": [{"id": "dnsManipulation", "rule": {"action": "Block"}}]},
            }).raise_for_status()

    def run(self, env: dict[str, str]) -> tuple[float, float, float]:
        """(first request, first write, whole run), seconds from just before the start."""
        self._pending_create()
        mark = len(self.cp.audit_events())
        started_at = time.time()
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "reconciler", "--once", "--kubeconfig", str(self.kubeconfig),
             "--namespace", NAMESPACE, "--log-level", "error"], cwd=REPO, capture_output=True,
            text=True, check=False, timeout=120, env=env)
        total = time.perf_counter() - started
        if result.returncode != 0:
            raise RuntimeError(f"--once exited {result.returncode}: {result.stdout}{result.stderr}")
        ours = [e for e in self.cp.audit_events()[mark:] if e["user"].get("username") == USER]
        first = min(_timestamp(e) for e in ours)
        first_write = min(_timestamp(e) for e in ours if e["verb"] == "create")
        return first - started_at, first_write - started_at, total


def _figures(name: str, values: list[float]) -> dict[str, float]:
    return {f"startup_{name}_ms_min": min(values) * 1000,
            f"startup_{name}_ms_median": statistics.median(values) * 1000}


def measure(cp: LocalControlPlane, runs: int) -> dict[str, float]:
    once = OnceRuns(cp)
    python = sys.executable
    commands: dict[str, Callable[[dict[str, str]], float]] = {
        "python": lambda env: wall([python, "-c", "pass"], env),
        "import_kr8s": lambda env: wall([python, "-c", "import kr8s"], env),
        "help": lambda env: wall([python, "-m", "reconciler", "--help"], env),
        "render": lambda env: wall([python, "-m", "reconciler", "render", "-f", str(SAMPLES)],
                                   env),
    }
    results: dict[str, float] = {"startup_runs": runs}
    with tempfile.TemporaryDirectory(prefix="nimbus-kubearmor-pycache-") as scratch:
        bytecode = Path(scratch)
        conditions = {"": compiled(bytecode, write=False), "_as_installed": dict(os.environ)}
        for command in commands.values():  # compile what each imports, once
            command(compiled(bytecode, write=True))
        once.run(compiled(bytecode, write=True))
        samples: dict[str, list[float]] = {}
        for _ in range(runs):  # in turns, so a change in the machine's load weighs on all alike
            for suffix, env in conditions.items():
                for name, command in commands.items():
                    samples.setdefault(name + suffix, []).append(command(env))
                first_request, first_write, total = once.run(env)
                samples.setdefault("once_first_request" + suffix, []).append(first_request)
                samples.setdefault("once_first_write" + suffix, []).append(first_write)
                samples.setdefault("once_total" + suffix, []).append(total)
        for suffix in conditions:
            # the target: the first request within 150 ms of import kr8s (paired, same turn)
            samples["once_first_request_over_import_kr8s" + suffix] = [
                ours - floor for ours, floor in zip(samples["once_first_request" + suffix],
                                                    samples["import_kr8s" + suffix], strict=True)]
    for name, values in samples.items():
        results |= _figures(name, values)
    return results


def run(quick: bool = False) -> dict[str, float]:
    """BENCH_STARTUP_RUNS runs of each (default 15, 1 with --quick)."""
    runs = int(os.environ.get("BENCH_STARTUP_RUNS", "1" if quick else "15"))
    with LocalControlPlane(build(log=sys.stdout), log=sys.stdout) as cp:
        return measure(cp, runs=runs)


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
