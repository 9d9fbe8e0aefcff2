"""NimbusPolicies at the API server's object-size limit (31,500 rules, 1.54 MB; tests/bigpolicy.py)
against a normal one, in the same run: the reconciler leader-elected in this process's event
loop as `--leader-elect` runs it (this process's objects frozen as the reconciler freezes its own
once started), 4 workers, a ticker measuring the loop (tests/looplag.py).

- normal: one NimbusPolicy of 3 rules created; seconds until its status is written (the API
  server's audit log says when), and the loop meanwhile: the baseline.
- one: the same for one at the size limit.
- at_once: four at once (one for each worker).
- back_to_back: BENCH_BIGPOLICY_COUNT more (default 4), each created once the one before is.
- relist: every NimbusPolicy of the namespace listed again, as after a restart (one page).
For each: seconds; the loop's longest stall (its own CPU time within a late wake-up, ms) and
longest gap (wall, ms). And the Lease's latest renewal (ms later than its retry period), the
memory kept for a big one (KiB). --quick: normal, one and relist only.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import yaml
from prometheus_client import CollectorRegistry

from reconciler.controller import Controller, ControllerConfig
from reconciler.metrics import Metrics
from tests.bigpolicy import (
    AuditTail,
    LeadingReconciler,
    RenewalClock,
    big_body,
    body,
    create_binding,
    kept_for,
    post,
    rule,
    started_process,
)
from tests.controlplane.assets import build
from tests.controlplane.launcher import LocalControlPlane
from tests.looplag import LoopLag
from tests.waiting import eventually

REPO = Path(__file__).resolve().parents[2]
USER = "nimbus-kubearmor-bench-bigpolicy"
NAMESPACE = "bigpolicy"


class Run:
    def __init__(self, cp: LocalControlPlane, leader: LeadingReconciler,
                 owner: dict[str, Any]) -> None:
        self.cp = cp
        self.leader = leader
        self.owner = owner
        self.api = cp.async_client(timeout=120)
        self.lag = LoopLag()
        self.audit = AuditTail(cp, USER, NAMESPACE)
        self.figures: dict[str, float] = {}

    async def written(self, names: list[str]) -> bool:
        assert not self.leader.manager.leadership_lost, "leader election lost"
        return set(names) <= await anyio.to_thread.run_sync(self.audit.status_writes)

    async def measured(self) -> None:
        """Start measuring afresh, once what this process did before (building the bodies,
        say) is out of the loop's way."""
        await anyio.sleep(0.05)
        self.lag.reset()

    async def phase(self, label: str, bodies: dict[str, bytes], *, at_once: bool) -> None:
        """Create `bodies` (at once, or each once the one before is created) and wait for every
        status; the figures of that stretch."""
        await self.measured()
        started = time.monotonic()
        if at_once:
            async with anyio.create_task_group() as posts:
                for content in bodies.values():
                    posts.start_soon(post, self.api, NAMESPACE, content)
        else:
            for content in bodies.values():
                await post(self.api, NAMESPACE, content)
        await eventually(lambda: self.written(list(bodies)), 600, f"{label}: the statuses",
                         interval=0.2)
        self.record(label, time.monotonic() - started)

    def record(self, label: str, seconds: float) -> None:
        self.figures |= {f"bigpolicy_{label}_s": seconds,
                         f"bigpolicy_{label}_stall_ms": self.lag.longest_stall * 1000,
                         f"bigpolicy_{label}_gap_ms": self.lag.longest_gap * 1000}
        print(f"   {label}: {seconds:.1f}s, {self.lag.summary()}", flush=True)

    async def relist(self) -> None:
        relister = Controller(self.leader.controller.client, Metrics(CollectorRegistry()),
                              ControllerConfig(namespaces=(NAMESPACE,)))
        await self.measured()
        started = time.monotonic()
        await relister.reflectors[0].list_once()  # the NimbusPolicies
        self.record("relist", time.monotonic() - started)


async def measure(cp: LocalControlPlane, quick: bool) -> dict[str, float]:
    count = int(os.environ.get("BENCH_BIGPOLICY_COUNT", "4"))
    rbac = REPO / "config" / "rbac"
    cp.grant(USER, yaml.safe_load((rbac / "role.yaml").read_text())["rules"])
    with cp.client() as client:
        client.post("/api/v1/namespaces", json={"metadata": {"name": NAMESPACE}}
                    ).raise_for_status()
    cp.grant_in_namespace(USER, NAMESPACE, yaml.safe_load(
        (rbac / "leader_election_role.yaml").read_text())["rules"])
    leader = LeadingReconciler(cp.identity_kubeconfig(USER), NAMESPACE)
    task = asyncio.create_task(leader.run())
    try:
        await eventually(leader.leading, 60, "the reconciler to lead and sync")
        async with cp.async_client() as api:
            owner = await create_binding(api, NAMESPACE)
        run = Run(cp, leader, owner)
        assert leader.manager.elector is not None
        renewals = RenewalClock(leader.manager.elector)
        normal = {"normal": body("normal", owner, [
            rule("swDeploymentTools"), rule("dnsManipulation"), rule("escapeToHost")])}
        one = {"big-0": big_body("big-0", owner)}
        at_once = {} if quick else {f"at-once-{i}": big_body(f"at-once-{i}", owner)
                                    for i in range(4)}
        back_to_back = {} if quick else {f"after-{i}": big_body(f"after-{i}", owner)
                                         for i in range(count)}
        with started_process():
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(run.lag.run)
                await run.phase("normal", normal, at_once=False)
                await run.phase("one", one, at_once=False)
                if not quick:
                    await run.phase("at_once", at_once, at_once=True)
                    await run.phase("back_to_back", back_to_back, at_once=False)
                await run.relist()
                tasks.cancel_scope.cancel()
        run.figures["bigpolicy_lease_latest_renewal_ms"] = max(renewals.lateness(),
                                                               default=0.0) * 1000
        run.figures["bigpolicy_lease_failed_renewals"] = renewals.failed()
        run.figures["bigpolicy_kept_kib"] = kept_for(leader.controller,
                                                     f"{NAMESPACE}/big-0") / 1024
        run.figures["bigpolicy_kept_normal_kib"] = kept_for(leader.controller,
                                                            f"{NAMESPACE}/normal") / 1024
        assert not leader.manager.leadership_lost
        await run.api.aclose()
        return run.figures
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def run(quick: bool = False) -> dict[str, float]:
    with LocalControlPlane(build(log=sys.stdout), log=sys.stdout) as cp:
        return asyncio.run(measure(cp, quick))


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
