"""The controller on the local control plane, against baselines measured in the same run.

- convergence: N NimbusPolicies (swDeploymentTools, dnsManipulation, escapeToHost: 5 policies
  each) exist before the reconciler starts; time from its process start until every status is
  written (a status is written after its policies exist). The floor is a plain client, same
  library (kr8s, httpx), same concurrency (4), making exactly the necessary writes (5 creates and
  1 status patch per NimbusPolicy, everything built before its clock starts). Each side runs on a
  control plane of its own, started for it and holding exactly the same N NimbusPolicies and
  nothing else: the floor's 5N policies and N statuses are not in the cluster the reconciler
  converges (with them there it measured 143.8 s at 5,000, where a fresh control plane gave
  114.9 s). The control plane's own CPU seconds (kube-apiserver, etcd,
  kube-controller-manager) are given for each side.
- steady_state_writes: write requests by the reconciler's identity in the API server's audit log
  during a full resync and a restart after convergence.
- api_requests_per_reconcile: every request by that identity during the resync, per reconcile.
- create / drift latency: NimbusPolicy created -> its 5 policies exist, and a policy edited by
  hand -> reverted, seen through a watch, while 20 NimbusPolicy changes a second churn.
- rss_mb: the reconciler process's resident memory after convergence.
- memory run (BENCH_MEMORY_SCALE): resident memory after convergence; its peak during a full
  relist (etcd compacted, every watch gets 410), and during the same relist when the policies'
  LIST has its continue token expire halfway (through the fault proxy; the LIST pages again).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import kr8s.asyncio
import yaml

from reconciler.builder import desired_policies
from reconciler.controller import ControllerConfig
from reconciler.kube import KUBEARMOR_POLICIES, MERGE_PATCH, NIMBUS_POLICIES, KubeClient
from reconciler.model import to_dict
from reconciler.parse import parse_nimbus_policy
from tests.controlplane.assets import build
from tests.controlplane.launcher import LocalControlPlane
from tests.faultproxy import FaultProxy, Rule, Status
from tests.process import ReconcilerProcess
from tests.waiting import eventually

REPO = Path(__file__).resolve().parents[2]
USER = "nimbus-kubearmor-bench"
RULES = [{"id": i, "rule": {"action": "Block"}}
         for i in ("swDeploymentTools", "dnsManipulation", "escapeToHost")]
POLICIES_PER_NP = 5
GROUP = "/apis/intent.security.nimbus.com/v1alpha1"
WORKERS = 4
# The steady state's resync (BENCH_RESYNC_PERIOD): long enough for the convergence at the
# scale measured to be over before it
RESYNC_PERIOD = os.environ.get("BENCH_RESYNC_PERIOD", "20s")
PAGE_SIZE = ControllerConfig().page_size


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Bench:
    def __init__(self, cp: LocalControlPlane, scale: int, samples: int) -> None:
        self.cp = cp
        self.scale = scale
        self.samples = samples
        self.api = cp.async_client(timeout=60)
        self.process: ReconcilerProcess | None = None

    # --- set-up ---------------------------------------------------------------------------------

    async def namespace_with_policies(self, namespace: str, count: int) -> list[dict[str, Any]]:
        (await self.api.post("/api/v1/namespaces", json={"metadata": {"name": namespace}})
         ).raise_for_status()
        binding = (await self.api.post(f"{GROUP}/namespaces/{namespace}/securityintentbindings", json={
            "apiVersion": "intent.security.nimbus.com/v1alpha1", "kind": "SecurityIntentBinding",
            "metadata": {"name": "bench"}, "spec": {"intents": [{"name": "x"}], "selector": {}}}))
        binding.raise_for_status()
        owner = binding.json()
        limit = asyncio.Semaphore(16)

        async def one(i: int) -> dict[str, Any]:
            async with limit:
                return await self.create_nimbus_policy(namespace, f"np-{i:05d}", owner)

        return list(await asyncio.gather(*(one(i) for i in range(count))))

    async def create_nimbus_policy(self, namespace: str, name: str,
                                   owner: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": "intent.security.nimbus.com/v1alpha1", "kind": "NimbusPolicy",
                "metadata": {"name": name, "ownerReferences": [{
                    "apiVersion": owner["apiVersion"], "kind": owner["kind"],
                    "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
                    "controller": True}]},
                "spec": {"selector": {"matchLabels": {"app": name}}, "rules": RULES}}
        response = await self.api.post(f"{GROUP}/namespaces/{namespace}/nimbuspolicies", json=body)
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    # --- the floor ------------------------------------------------------------------------------

    async def floor(self, nimbus_policies: list[dict[str, Any]]) -> float:
        api = await kr8s.asyncio.api(kubeconfig=str(self.kubeconfig))
        client = KubeClient(api)
        work: list[tuple[str, Any]] = []
        for obj in nimbus_policies:
            parsed, _ = parse_nimbus_policy(obj)
            assert parsed is not None
            policies, _ = desired_policies(parsed)
            work += [("create", to_dict(p)) for p in policies]
            work.append(("status", (obj, [p.name for p in policies])))
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        for item in work:
            queue.put_nowait(item)

        async def worker() -> None:
            while not queue.empty():
                verb, item = queue.get_nowait()
                if verb == "create":
                    await client.create(KUBEARMOR_POLICIES, item["metadata"]["namespace"], item,
                                        "floor")
                else:
                    obj, names = item
                    entries = [f"KubeArmorPolicy/{n}" for n in names]
                    await client.patch(NIMBUS_POLICIES, obj["metadata"]["namespace"],
                                       obj["metadata"]["name"], {"status": {
                                           "status": "Created", "adapterPolicies": entries,
                                           "numberOfAdapterPolicies": len(entries)}},
                                       MERGE_PATCH, "floor", subresource="status")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(WORKERS)))
        return time.perf_counter() - started

    # --- the reconciler -------------------------------------------------------------------------

    def start_reconciler(self, namespace: str) -> None:
        self.process = ReconcilerProcess(self.kubeconfig, namespace, "--workers", str(WORKERS),
                                         "--resync-period", RESYNC_PERIOD, "--log-level", "warning")
        self.process.start()

    def stop_reconciler(self) -> None:
        assert self.process is not None
        self.process.stop(timeout=30)
        self.process.close()

    async def metric(self, name: str) -> float:
        assert self.process is not None
        text = await asyncio.to_thread(self.process.metrics)
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name))

    async def statuses_written(self, namespace: str, count: int) -> float:
        """Watch NimbusPolicies until `count` have their status written; seconds it took."""
        started = time.perf_counter()
        done: set[str] = set()
        listed = (await self.api.get(f"{GROUP}/namespaces/{namespace}/nimbuspolicies")).json()
        for item in listed["items"]:
            if (item.get("status") or {}).get("numberOfAdapterPolicies") == POLICIES_PER_NP:
                done.add(item["metadata"]["name"])
        if len(done) >= count:
            return time.perf_counter() - started
        async with self.api.stream("GET", f"{GROUP}/namespaces/{namespace}/nimbuspolicies", params={
                "watch": "true", "resourceVersion": listed["metadata"]["resourceVersion"]},
                timeout=httpx.Timeout(600)) as stream:
            async for line in stream.aiter_lines():
                event = json.loads(line)["object"]
                if (event.get("status") or {}).get("numberOfAdapterPolicies") == POLICIES_PER_NP:
                    done.add(event["metadata"]["name"])
                    if len(done) >= count:
                        break
        return time.perf_counter() - started

    def rss_mb(self, field: str = "VmRSS") -> float:
        """Resident memory now (VmRSS), or its peak since the last reset_peak (VmHWM)."""
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def cpu_s(self) -> float:
        """CPU seconds the reconciler process has used (user + system)."""
        assert self.process is not None
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def reset_peak(self) -> None:
        assert self.process is not None
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS

    async def forced_relist(self) -> dict[str, float]:
        """etcd compacted while the API server is down: every watch resumes from a version
        that is gone (410), so every reflector lists everything again. The peak resident
        memory while it does, against the steady memory before."""
        assert self.process is not None
        steady = self.rss_mb()
        relists = await self.metric("nimbus_kubearmor_relists_total")
        self.reset_peak()
        started = time.perf_counter()
        self.cp.stop_apiserver()
        self.cp.etcd_compact()
        self.cp.start_apiserver()
        await eventually(lambda: _relisted(self, relists + 2), 300, "every reflector to relist",
                         interval=0.2)
        await eventually(lambda: asyncio.to_thread(self.process.ready)  # type: ignore[union-attr]
                         , 120, "ready again", interval=0.2)
        return {"relist_s": time.perf_counter() - started, "rss_before_relist_mb": steady,
                "relist_peak_rss_mb": self.rss_mb("VmHWM"), "rss_after_relist_mb": self.rss_mb()}

    async def expired_continue_relist(self, proxy: FaultProxy) -> dict[str, float]:
        """The same forced relist, with the reconciler talking to the API server through the
        fault proxy, which answers the continue token of the policies' LIST halfway through
        with 410 Expired (as the API server does once etcd has compacted the snapshot being
        paged through): that LIST starts again from its first page. The peak resident memory
        while it does, against the steady memory before."""
        pages = -(-self.scale * POLICIES_PER_NP // PAGE_SIZE)
        expired = Rule(Status(410, reason="Expired", message="The provided continue parameter "
                              "is too old to display a consistent list result."),
                       kind="list", path="/kubearmorpolicies", when=_continued,
                       after=(pages - 1) // 2, times=1)
        proxy.add(expired)
        mark = len(proxy.requests(kind="list", path="/kubearmorpolicies"))
        figures = await self.forced_relist()
        if expired.hits != 1:
            raise RuntimeError(f"the continue token was refused {expired.hits} times, not once")
        lists = proxy.requests(kind="list", path="/kubearmorpolicies")[mark:]
        if not all("limit=" in e.query for e in lists):
            raise RuntimeError("a LIST without a limit after the continue token expired")
        return {"expired_continue_" + k if k.startswith("relist") else
                k.replace("relist", "expired_continue_relist"): v for k, v in figures.items()} | {
            "expired_continue_list_requests": len(lists)}

    def writes_since(self, mark: int) -> tuple[int, int]:
        events = [e for e in self.cp.audit_events()[mark:] if e["user"].get("username") == USER]
        writes = [e for e in events if e["verb"] in ("create", "update", "patch", "delete")]
        return len(writes), len(events)

    async def floor_writes(self, obj: dict[str, Any]) -> float:
        """Milliseconds a plain client takes for one NimbusPolicy's writes, one after another."""
        parsed, _ = parse_nimbus_policy(obj)
        assert parsed is not None
        policies, _ = desired_policies(parsed)
        started = time.perf_counter()
        namespace = obj["metadata"]["namespace"]
        url = f"/apis/security.kubearmor.com/v1/namespaces/{namespace}/kubearmorpolicies"
        for policy in policies:
            (await self.api.post(url, json=to_dict(policy))).raise_for_status()
        entries = [f"KubeArmorPolicy/{p.name}" for p in policies]
        (await self.api.patch(f"{GROUP}/namespaces/{namespace}/nimbuspolicies/"
                              f"{obj['metadata']['name']}/status", content=json.dumps({"status": {
                                  "status": "Created", "adapterPolicies": entries,
                                  "numberOfAdapterPolicies": len(entries)}}),
                              headers={"Content-Type": "application/merge-patch+json"})
         ).raise_for_status()
        return (time.perf_counter() - started) * 1000

    # --- latency under churn --------------------------------------------------------------------

    async def latencies(self, namespace: str, owner: dict[str, Any], existing: list[str]) -> dict[str, float]:
        url = f"/apis/security.kubearmor.com/v1/namespaces/{namespace}/kubearmorpolicies"
        listed = (await self.api.get(url, params={"limit": 1})).json()
        added: dict[str, list[float]] = {}
        reverted: dict[str, float] = {}
        watching = asyncio.Event()

        async def watch() -> None:
            async with self.api.stream("GET", url, params={
                    "watch": "true", "resourceVersion": listed["metadata"]["resourceVersion"]},
                    timeout=httpx.Timeout(600)) as stream:
                watching.set()
                async for line in stream.aiter_lines():
                    now = time.perf_counter()
                    event = json.loads(line)
                    obj = event["object"]
                    name = obj["metadata"]["name"]
                    if event["type"] == "ADDED":
                        owner_name = obj["metadata"]["ownerReferences"][0]["name"]
                        added.setdefault(owner_name, []).append(now)
                    elif event["type"] == "MODIFIED" and obj["spec"].get("action") == "Block":
                        reverted.setdefault(name, now)

        async def churn(stop: asyncio.Event) -> None:
            n = 0
            while not stop.is_set():
                name = random.choice(existing)
                n += 1
                rules = [dict(r, description=f"churn {n}") for r in RULES]
                await self.api.patch(f"{GROUP}/namespaces/{namespace}/nimbuspolicies/{name}",
                                     content=json.dumps({"spec": {"rules": rules}}),
                                     headers={"Content-Type": "application/merge-patch+json"})
                await asyncio.sleep(0.05)  # 20 changes a second

        watcher = asyncio.create_task(watch())
        await watching.wait()
        stop = asyncio.Event()
        churner = asyncio.create_task(churn(stop))
        created: dict[str, float] = {}
        for i in range(self.samples):
            name = f"late-{i:04d}"
            created[name] = time.perf_counter()
            await self.create_nimbus_policy(namespace, name, owner)
            await asyncio.sleep(0.1)
        await eventually(lambda: _all(added, created), 60, "the late NimbusPolicies' policies")
        # the floor under the same churn: a plain client making the same writes in order
        floor_owner = (await self.api.get(
            f"{GROUP}/namespaces/floor/securityintentbindings/bench")).json()
        floor_latency = []
        for i in range(self.samples):
            obj = await self.create_nimbus_policy("floor", f"late-{i:04d}", floor_owner)
            floor_latency.append(await self.floor_writes(obj))
            await asyncio.sleep(0.1)
        edited: dict[str, float] = {}
        for i in range(self.samples):
            name = f"late-{i:04d}-dnsmanipulation"
            edited[name] = time.perf_counter()
            response = await self.api.patch(f"{url}/{name}", content=json.dumps(
                {"spec": {"action": "Audit"}}), headers={"Content-Type": "application/merge-patch+json"})
            response.raise_for_status()
            await asyncio.sleep(0.1)
        await eventually(lambda: _reverted(reverted, edited), 60, "the edits to be reverted")
        stop.set()
        await churner
        watcher.cancel()
        create = [(max(added[n][:POLICIES_PER_NP]) - t) * 1000 for n, t in created.items()]
        drift = [(reverted[n] - t) * 1000 for n, t in edited.items()]
        return {"create_latency_p50_ms": percentile(create, 0.5),
                "create_latency_p99_ms": percentile(create, 0.99),
                "create_latency_floor_p50_ms": percentile(floor_latency, 0.5),
                "create_latency_floor_p99_ms": percentile(floor_latency, 0.99),
                "drift_latency_p50_ms": percentile(drift, 0.5),
                "drift_latency_p99_ms": percentile(drift, 0.99),
                "latency_samples": len(create)}


async def _all(added: dict[str, list[float]], created: dict[str, float]) -> bool:
    return all(len(added.get(n, [])) >= POLICIES_PER_NP for n in created)


async def _reverted(reverted: dict[str, float], edited: dict[str, float]) -> bool:
    return all(n in reverted for n in edited)


def controlplane_cpu_s(cp: LocalControlPlane) -> float:
    """CPU seconds kube-apiserver, etcd and kube-controller-manager have used (user + system)."""
    total = 0.0
    for process in cp.processes.values():
        fields = Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def grant(cp: LocalControlPlane) -> Path:
    """The benchmark's identity, bound to config/rbac (plus reading the bindings)."""
    role = yaml.safe_load((REPO / "config/rbac/role.yaml").read_text())
    cp.grant(USER, role["rules"] + [{"apiGroups": ["intent.security.nimbus.com"],
                                     "resources": ["securityintentbindings"], "verbs": ["get"]}])
    return cp.identity_kubeconfig(USER)


async def measure_floor(cp: LocalControlPlane, scale: int) -> dict[str, float]:
    """The floor, on a control plane holding the N NimbusPolicies and nothing else."""
    bench = Bench(cp, scale, 0)
    bench.kubeconfig = grant(cp)
    print(f"   setting up {scale} NimbusPolicies for the floor", flush=True)
    nimbus_policies = await bench.namespace_with_policies("bench", scale)
    cpu = controlplane_cpu_s(cp)
    results = {"floor_s": await bench.floor(nimbus_policies)}
    results["floor_controlplane_cpu_s"] = controlplane_cpu_s(cp) - cpu
    print(f"   floor: {results['floor_s']:.2f}s", flush=True)
    await bench.api.aclose()
    return results


async def measure(cp: LocalControlPlane, scale: int, samples: int) -> dict[str, float]:
    """The reconciler, on a control plane of its own holding the same N NimbusPolicies as the
    floor's did (and, for the latencies' floor under churn, an empty namespace)."""
    bench = Bench(cp, scale, samples)
    bench.kubeconfig = grant(cp)
    results: dict[str, float] = {"scale": scale}
    print(f"   setting up {scale} NimbusPolicies for the reconciler", flush=True)
    await bench.namespace_with_policies("bench", scale)
    await bench.namespace_with_policies("floor", 0)

    cpu = controlplane_cpu_s(cp)
    started = time.perf_counter()
    bench.start_reconciler("bench")
    await bench.statuses_written("bench", scale)
    results["convergence_s"] = time.perf_counter() - started
    results["convergence_controlplane_cpu_s"] = controlplane_cpu_s(cp) - cpu
    results["convergence_cpu_s"] = bench.cpu_s()
    print(f"   convergence: {results['convergence_s']:.2f}s", flush=True)
    await asyncio.sleep(1)  # let the last watch events settle before measuring memory
    results["rss_mb"] = bench.rss_mb()

    mark = len(cp.audit_events())
    reconciles = await bench.metric("controller_runtime_reconcile_total")
    await eventually(lambda: _more(bench, reconciles + scale), 60, "a full resync", interval=0.5)
    writes, requests = bench.writes_since(mark)
    results["api_requests_per_reconcile"] = requests / scale
    bench.stop_reconciler()
    bench.start_reconciler("bench")
    await eventually(lambda: _more(bench, scale), 120, "the reconciles after a restart", interval=0.5)
    restart_writes, _ = bench.writes_since(mark)
    results["steady_state_writes"] = restart_writes
    print(f"   steady state: {restart_writes} writes ({writes} during the resync)", flush=True)

    owner = (await bench.api.get(f"{GROUP}/namespaces/bench/securityintentbindings/bench")).json()
    existing = [f"np-{i:05d}" for i in range(scale)]
    results |= await bench.latencies("bench", owner, existing)
    bench.stop_reconciler()
    await bench.api.aclose()
    return results


async def _relisted(bench: Bench, n: float) -> bool:
    return await bench.metric("nimbus_kubearmor_relists_total") >= n


async def measure_memory(cp: LocalControlPlane, scale: int) -> dict[str, float]:
    """At `scale` NimbusPolicies (5 policies each): convergence, resident memory after it, and
    the peak during a forced full relist."""
    bench = Bench(cp, scale, 0)
    bench.kubeconfig = cp.identity_kubeconfig(USER)
    print(f"   setting up {scale} NimbusPolicies for the memory run", flush=True)
    await bench.namespace_with_policies("memory", scale)
    started = time.perf_counter()
    bench.start_reconciler("memory")
    await bench.statuses_written("memory", scale)
    results = {f"convergence_s_{scale}": time.perf_counter() - started}
    await asyncio.sleep(1)  # let the last watch events settle before measuring memory
    results[f"rss_mb_{scale}"] = bench.rss_mb()
    print(f"   {scale}: converged in {results[f'convergence_s_{scale}']:.1f}s, "
          f"{results[f'rss_mb_{scale}']:.0f} MB", flush=True)
    results |= {f"{k}_{scale}" if not k.startswith("relist_peak") else k: v
                for k, v in (await bench.forced_relist()).items()}
    bench.stop_reconciler()

    if scale * POLICIES_PER_NP <= PAGE_SIZE:
        print("   (one page of policies: no continue token to expire)", flush=True)
        await bench.api.aclose()
        return results
    print("   the same, its continue token expiring halfway (through the fault proxy)", flush=True)
    with FaultProxy.for_control_plane(cp, as_user=USER) as proxy:
        bench.kubeconfig = cp.identity_kubeconfig(USER, server=proxy.url)
        bench.start_reconciler("memory")
        await eventually(lambda: _more(bench, scale), 300, "the reconciles after a restart",
                         interval=0.5)
        await asyncio.sleep(1)  # let the last watch events settle before measuring memory
        results |= {f"{k}_{scale}" if "peak" not in k and "requests" not in k else k: v
                    for k, v in (await bench.expired_continue_relist(proxy)).items()}
        bench.stop_reconciler()
    await bench.api.aclose()
    return results


def _continued(request: Any) -> bool:
    return "continue" in request.query


async def _more(bench: Bench, n: float) -> bool:
    return await bench.metric("controller_runtime_reconcile_total") >= n


def run(quick: bool = False) -> dict[str, float]:
    """BENCH_SCALE (default 1000) for every figure, BENCH_SAMPLES latencies of each kind (default
    100, 20 with --quick): the floor on a fresh control plane, then
    the reconciler on another; then, on a third, the memory run at BENCH_MEMORY_SCALE (default
    5000; 0 skips it; skipped with --quick)."""
    scale = int(os.environ.get("BENCH_SCALE", "100" if quick else "1000"))
    memory_scale = 0 if quick else int(os.environ.get("BENCH_MEMORY_SCALE", "5000"))
    samples = int(os.environ.get("BENCH_SAMPLES", "20" if quick else "100"))
    with LocalControlPlane(build(log=sys.stdout), log=sys.stdout) as cp:
        results: dict[str, float] = asyncio.run(measure_floor(cp, scale))
    with LocalControlPlane(build(log=sys.stdout), log=sys.stdout) as cp:
        results |= asyncio.run(measure(cp, scale, samples))
    results["convergence_ratio"] = results["convergence_s"] / results["floor_s"]
    results["convergence_controlplane_cpu_ratio"] = \
        results["convergence_controlplane_cpu_s"] / results["floor_controlplane_cpu_s"]
    if memory_scale:
        with LocalControlPlane(build(log=sys.stdout), log=sys.stdout) as cp:
            role = yaml.safe_load((REPO / "config/rbac/role.yaml").read_text())
            cp.grant(USER, role["rules"])
            results |= asyncio.run(measure_memory(cp, memory_scale))
    return results


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
