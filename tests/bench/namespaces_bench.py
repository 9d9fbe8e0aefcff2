"""One reconciler scoped to many namespaces (`--namespace` repeated: two watches each, a
connection each) against the same reconciler scoped to one, in the same run, on the local
control plane: time from start until ready (every cache listed, every watch open), resident
memory once ready, connections to the API server, and the latency of a change (a NimbusPolicy
created -> its policy seen by a watch) in the first and in the last namespace, taken in turns.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from tests.bench.controller_bench import percentile
from tests.controlplane.assets import build
from tests.controlplane.launcher import LocalControlPlane
from tests.e2e.nimbus import KSP_GROUP, create_nimbus_policy, rule
from tests.process import ReconcilerProcess
from tests.waiting import eventually

REPO = Path(__file__).resolve().parents[2]
USER = "nimbus-kubearmor-bench-namespaces"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def connections(pid: int, port: int) -> int:
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( dport = :{port} )"],
                         capture_output=True, text=True, check=False).stdout
    return sum(1 for line in out.splitlines() if f"pid={pid}," in line)


async def scoped(cp: LocalControlPlane, api: httpx.AsyncClient, namespaces: list[str],
                 samples: int, label: str) -> dict[str, float]:
    """Start a reconciler watching `namespaces`; its figures, keyed with `label`."""
    kubeconfig = cp.identity_kubeconfig(USER)
    process = ReconcilerProcess(kubeconfig, None, *(f"--namespace={n}" for n in namespaces),
                                "--log-level", "warning")
    port = int(cp.server.rsplit(":", 1)[1])
    started = time.perf_counter()
    process.start()
    try:
        await eventually(lambda: asyncio.to_thread(process.ready), 300, "ready", interval=0.05)
        ready = time.perf_counter() - started
        await asyncio.sleep(1)  # let the last watches settle before measuring memory
        figures = {f"ready_s_{label}": ready, f"rss_mb_{label}": rss_mb(process.pid),
                   f"connections_{label}": connections(process.pid, port)}
        ends = {"first": namespaces[0], "last": namespaces[-1]}  # one and the same for one
        latency: dict[str, list[float]] = {"first": [], "last": []}
        seen: dict[str, float] = {}
        listed = (await api.get(f"{KSP_GROUP}/kubearmorpolicies", params={"limit": 1})).json()

        async def watch() -> None:
            async with api.stream("GET", f"{KSP_GROUP}/kubearmorpolicies", params={
                    "watch": "true", "resourceVersion": listed["metadata"]["resourceVersion"]},
                    timeout=httpx.Timeout(600)) as stream:
                async for line in stream.aiter_lines():
                    event = json.loads(line)
                    if event["type"] == "ADDED":
                        metadata = event["object"]["metadata"]
                        seen.setdefault(f"{metadata['namespace']}/{metadata['name']}",
                                        time.perf_counter())

        watcher = asyncio.create_task(watch())
        for i in range(samples):
            for end in ("first", "last") if i % 2 else ("last", "first"):
                namespace, name = ends[end], f"{label}-{end}-{i:03d}"
                created = time.perf_counter()
                await create_nimbus_policy(api, namespace, name, [rule("dnsManipulation")])
                key = f"{namespace}/{name}-dnsmanipulation"
                await eventually(lambda key=key: key in seen, 30,  # type: ignore[misc]
                                 f"{key} created", interval=0.005)
                latency[end].append((seen[key] - created) * 1000)
        watcher.cancel()
        for end, values in latency.items():
            figures[f"latency_{end}_p50_ms_{label}"] = percentile(values, 0.5)
            figures[f"latency_{end}_p99_ms_{label}"] = percentile(values, 0.99)
        stopping = time.perf_counter()
        process.stop(timeout=60)
        figures[f"shutdown_s_{label}"] = time.perf_counter() - stopping
        return figures
    finally:
        process.close()


async def measure(cp: LocalControlPlane, count: int, samples: int) -> dict[str, float]:
    role = yaml.safe_load((REPO / "config/rbac/role.yaml").read_text())
    cp.grant(USER, role["rules"])
    names = [f"bench-ns-{i:03d}" for i in range(count)]
    async with cp.async_client(timeout=60) as api:
        limit = asyncio.Semaphore(16)

        async def create(name: str) -> None:
            async with limit:
                (await api.post("/api/v1/namespaces", json={"metadata": {"name": name}})
                 ).raise_for_status()

        await asyncio.gather(*(create(n) for n in names))
        print(f"   {count} namespaces; the baseline: one of them", flush=True)
        results: dict[str, float] = {"namespaces": count}
        results |= await scoped(cp, api, names[:1], samples, "1")
        print(f"   1 namespace: ready in {results['ready_s_1']:.1f}s", flush=True)
        results |= await scoped(cp, api, names, samples, str(count))
        print(f"   {count} namespaces: ready in {results[f'ready_s_{count}']:.1f}s", flush=True)
    return results


def run(quick: bool = False) -> dict[str, float]:
    """BENCH_NAMESPACES namespaces (default 200; 0 skips it) against one, on a control plane of
    its own; skipped with --quick, as the memory run is (tests/e2e/test_many_namespaces.py runs
    the shape in `make test`)."""
    count = 0 if quick else int(os.environ.get("BENCH_NAMESPACES", "200"))
    if not count:
        return {}
    samples = 40
    with LocalControlPlane(build(log=sys.stdout), log=sys.stdout) as cp:
        return asyncio.run(measure(cp, count, samples))


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
