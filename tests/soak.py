"""A seeded randomized soak: NimbusPolicies created, their rules changed (valid and invalid) and
deleted; generated policies deleted, edited, relabelled and disowned; users' policies taking
names we need; the reconciler SIGKILLed, SIGTERMed and restarted. Then quiet, and the whole
cluster checked against what the pure builder says (names, specs, owners, labels, status lists
and counts), and no write by the reconciler for a few seconds.

    python -m tests.soak [--steps N] [--seed S]     # its own control plane (make soak)

The seed is printed first: `--seed S` replays a run's choices (the timing of a real API server
and of a real process is not replayed, only what is done and in which order).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from reconciler.builder import desired_policies
from reconciler.intents import CATALOGUE, ESCAPE_CAPABILITIES
from reconciler.model import to_dict
from reconciler.names import MANAGED_BY_KEY, MANAGED_BY_VALUE
from reconciler.parse import parse_nimbus_policy
from tests.controlplane.launcher import LocalControlPlane
from tests.e2e.nimbus import create_binding, kubearmor_policies, nimbus_policies
from tests.process import ReconcilerProcess
from tests.waiting import eventually

REPO = Path(__file__).resolve().parents[1]
SOAK_USER = "nimbus-kubearmor-soak"
MERGE = {"Content-Type": "application/merge-patch+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}


def random_rules(rng: random.Random) -> list[dict[str, Any]]:
    intents = rng.sample(sorted(CATALOGUE), rng.randint(1, 3))
    if rng.random() < 0.15:
        intents.append("noSuchIntent")
    rules = []
    for intent in intents:
        action = rng.choice(["Block", "Block", "Audit", "Enforce"] + (["Deny"] if rng.random() < 0.1
                                                                     else []))
        params: dict[str, list[str]] = {}
        if intent == "escapeToHost" and rng.random() < 0.4:
            params["exclude_caps"] = rng.sample((*ESCAPE_CAPABILITIES, "no_such_cap"),
                                                rng.randint(1, 3))
        rules.append({"id": intent, "rule": {"action": action, "params": params}})
    return rules


def differences(nps: list[dict[str, Any]], kubearmor_policies: list[dict[str, Any]]) -> list[str]:
    """Everything a namespace's KubeArmorPolicies and NimbusPolicy statuses have that the pure
    builder says they should not (empty: right), given all of its NimbusPolicies and
    KubeArmorPolicies as the API server has them."""
    problems: list[str] = []
    ksps = {p["metadata"]["name"]: p for p in kubearmor_policies}

    def controlled(p: dict[str, Any]) -> bool:
        return any(r.get("controller") for r in p["metadata"].get("ownerReferences") or [])

    def labelled(p: dict[str, Any]) -> bool:
        return (p["metadata"].get("labels") or {}).get(MANAGED_BY_KEY) == MANAGED_BY_VALUE
    # Not ours: no controller and not our label (a user's, or ours both disowned and
    # relabelled). Orphans: no controller but our label, as `kubectl delete --cascade=orphan`
    # leaves them; adopted if a NimbusPolicy needs the name, else left alone (as a
    # ReplicaSet adopts only the orphans its selector matches).
    users = {n for n, p in ksps.items() if not controlled(p) and not labelled(p)}
    orphans = {n for n, p in ksps.items() if not controlled(p) and labelled(p)}
    expected: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for np in nps:
        parsed, _ = parse_nimbus_policy(np)
        assert parsed is not None
        policies, _ = desired_policies(parsed)
        ours = [to_dict(p) for p in policies if p.name not in users]
        for policy in ours:
            expected[policy["metadata"]["name"]] = (np, policy)
        entries = sorted(e for e in (np.get("status") or {}).get("adapterPolicies") or []
                         if e.startswith("KubeArmorPolicy/"))
        want = sorted(f"KubeArmorPolicy/{p['metadata']['name']}" for p in ours)
        status = np.get("status") or {}
        if entries != want or status.get("numberOfAdapterPolicies") != len(want):
            problems.append(f"{np['metadata']['name']}: status {entries} "
                            f"({status.get('numberOfAdapterPolicies')}), want {want}")
    for name, (np, policy) in expected.items():
        actual = ksps.get(name)
        if actual is None:
            problems.append(f"{name}: missing")
            continue
        meta = actual["metadata"]
        refs = meta.get("ownerReferences") or []
        if refs != policy["metadata"]["ownerReferences"] or \
                refs[0]["uid"] != np["metadata"]["uid"]:
            problems.append(f"{name}: owner {refs}")
        if actual["spec"] != policy["spec"]:
            problems.append(f"{name}: spec differs")
        if (meta.get("labels") or {}).get(MANAGED_BY_KEY) != MANAGED_BY_VALUE or \
                (meta.get("annotations") or {}).get(MANAGED_BY_KEY) != MANAGED_BY_VALUE:
            problems.append(f"{name}: label or annotation")
    for name in set(ksps) - set(expected) - users - orphans:
        problems.append(f"{name}: should not exist (owner "
                        f"{(ksps[name]['metadata'].get('ownerReferences') or [{}])[0].get('name')})")
    return problems


class Soak:
    def __init__(self, cp: LocalControlPlane, api: httpx.AsyncClient, namespace: str,
                 kubeconfig: Path, user: str, seed: int) -> None:
        self.cp, self.api, self.namespace, self.user = cp, api, namespace, user
        self.rng = random.Random(seed)
        self.reconciler = ReconcilerProcess(kubeconfig, namespace, "--log-level", "warning")
        self.owner: dict[str, Any] = {}
        self.counter = 0
        self.done: list[str] = []

    async def run(self, steps: int) -> None:
        self.owner = await create_binding(self.api, self.namespace, "soak", ["dnsManipulation"])
        self.reconciler.start()
        try:
            for _ in range(steps):
                await self.step()
            await self.converged()
            await self.quiet()
        finally:
            self.reconciler.close()

    # --- what happens ---------------------------------------------------------------------------

    async def step(self) -> None:
        actions = [(self.create, 5), (self.change_rules, 4), (self.delete_np, 2),
                   (self.delete_policy, 3), (self.edit_policy, 2), (self.relabel_policy, 2),
                   (self.disown_policy, 1), (self.take_a_name, 1), (self.give_a_name_back, 1),
                   (self.kill, 0.4), (self.terminate, 0.4)]
        action = self.rng.choices([a for a, _ in actions], [w for _, w in actions])[0]
        await action()
        self.done.append(action.__name__)

    async def nps(self) -> list[dict[str, Any]]:
        return list((await self.api.get(nimbus_policies(self.namespace))).json()["items"])

    async def ksps(self) -> list[dict[str, Any]]:
        return list((await self.api.get(kubearmor_policies(self.namespace))).json()["items"])

    async def create(self) -> None:
        self.counter += 1
        ref = {"apiVersion": self.owner["apiVersion"], "kind": self.owner["kind"],
               "name": self.owner["metadata"]["name"], "uid": self.owner["metadata"]["uid"],
               "controller": True, "blockOwnerDeletion": True}
        body = {"apiVersion": "intent.security.nimbus.com/v1alpha1", "kind": "NimbusPolicy",
                "metadata": {"name": f"np-{self.counter}", "ownerReferences": [ref]},
                "spec": {"selector": {"matchLabels": {"app": f"a{self.counter}"}},
                         "rules": random_rules(self.rng)}}
        (await self.api.post(nimbus_policies(self.namespace), json=body)).raise_for_status()

    async def pick(self, items: list[dict[str, Any]], ours: bool = False) -> dict[str, Any] | None:
        if ours:
            items = [i for i in items if i["metadata"].get("ownerReferences")]
        items.sort(key=lambda i: i["metadata"]["name"])
        return self.rng.choice(items) if items else None

    async def change_rules(self) -> None:
        np = await self.pick(await self.nps())
        if np is not None:
            await self.api.patch(f"{nimbus_policies(self.namespace)}/{np['metadata']['name']}",
                                 content=json.dumps({"spec": {"rules": random_rules(self.rng)}}),
                                 headers=MERGE)

    async def delete_np(self) -> None:
        np = await self.pick(await self.nps())
        if np is not None:
            await self.api.delete(f"{nimbus_policies(self.namespace)}/{np['metadata']['name']}")

    async def delete_policy(self) -> None:
        policy = await self.pick(await self.ksps(), ours=True)
        if policy is not None:
            await self.api.delete(f"{kubearmor_policies(self.namespace)}/{policy['metadata']['name']}")

    async def edit_policy(self) -> None:
        policy = await self.pick(await self.ksps(), ours=True)
        if policy is not None:
            await self.api.patch(f"{kubearmor_policies(self.namespace)}/{policy['metadata']['name']}",
                                 content='{"spec": {"action": "Audit", "message": "edited"}}',
                                 headers=MERGE)

    async def relabel_policy(self) -> None:
        policy = await self.pick(await self.ksps(), ours=True)
        if policy is not None:
            await self.api.patch(f"{kubearmor_policies(self.namespace)}/{policy['metadata']['name']}",
                                 content=json.dumps({"metadata": {"labels": {MANAGED_BY_KEY: None,
                                                                             "team": "x"}}}),
                                 headers=MERGE)

    async def disown_policy(self) -> None:
        policy = await self.pick(await self.ksps(), ours=True)
        if policy is not None:
            await self.api.patch(f"{kubearmor_policies(self.namespace)}/{policy['metadata']['name']}",
                                 content='[{"op": "remove", "path": "/metadata/ownerReferences"}]',
                                 headers=JSON_PATCH)

    async def take_a_name(self) -> None:
        """A user's own policy, with a name a NimbusPolicy needs (if it is free)."""
        np = await self.pick(await self.nps())
        if np is None:
            return
        parsed, _ = parse_nimbus_policy(np)
        wanted = [p.name for p in desired_policies(parsed)[0]] if parsed is not None else []
        if wanted:
            await self.api.post(kubearmor_policies(self.namespace), json={
                "apiVersion": "security.kubearmor.com/v1", "kind": "KubeArmorPolicy",
                "metadata": {"name": self.rng.choice(wanted), "labels": {"owner": "user"}},
                "spec": {"selector": {"matchLabels": {}}, "file": {"matchPaths": [{"path": "/u"}]}}})

    async def give_a_name_back(self) -> None:
        users = [p for p in await self.ksps() if not p["metadata"].get("ownerReferences")]
        policy = await self.pick(users)
        if policy is not None:
            await self.api.delete(f"{kubearmor_policies(self.namespace)}/{policy['metadata']['name']}")

    async def kill(self) -> None:
        await asyncio.to_thread(self.reconciler.stop, signal.SIGKILL)
        self.reconciler.start()

    async def terminate(self) -> None:
        # before its signal handling is set up, SIGTERM ends a process as it ends any other
        await eventually(self.reconciler.ready, 60, "the reconciler to be up", interval=0.1)
        assert await asyncio.to_thread(self.reconciler.stop, signal.SIGTERM) == 0
        self.reconciler.start()

    # --- what must hold afterwards --------------------------------------------------------------

    async def differences(self) -> list[str]:
        """Everything the cluster has that the pure builder says it should not (empty: right)."""
        return differences(await self.nps(), await self.ksps())

    async def converged(self, timeout: float = 90) -> None:
        last: list[str] = []

        async def right() -> bool:
            nonlocal last
            last = await self.differences()
            return not last
        try:
            await eventually(right, timeout, "the cluster to match the builder", interval=0.25)
        except AssertionError as error:
            raise AssertionError(f"{error}\n" + "\n".join(last[:30])) from None

    async def quiet(self, seconds: float = 3.0) -> None:
        """No write by the reconciler while nothing changes (a window of time, by its nature:
        it fails on the first write seen)."""
        mark = len(self.cp.audit_events())
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            writes = [e for e in self.cp.audit_events()[mark:]
                      if e["user"].get("username") == self.user
                      and e["verb"] in ("create", "update", "patch", "delete")]
            assert not writes, [(e["verb"], e["objectRef"]) for e in writes]
            await asyncio.sleep(0.25)


def grant(cp: LocalControlPlane, user: str) -> Path:
    role = yaml.safe_load((REPO / "config" / "rbac" / "role.yaml").read_text())
    cp.grant(user, role["rules"])
    return cp.identity_kubeconfig(user)


async def soak(cp: LocalControlPlane, kubeconfig: Path, user: str, namespace: str,
               steps: int, seed: int) -> list[str]:
    async with cp.async_client() as api:
        (await api.post("/api/v1/namespaces", json={"metadata": {"name": namespace}})
         ).raise_for_status()
        run = Soak(cp, api, namespace, kubeconfig, user, seed)
        await run.run(steps)
        return run.done


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak")
    parser.add_argument("--steps", type=int, default=int(os.environ.get("SOAK_STEPS", "1500")))
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"soak seed {seed} ({args.steps} steps): replay with --seed {seed}", flush=True)
    from tests.controlplane.assets import build
    with LocalControlPlane(build(log=sys.stdout), log=sys.stdout) as cp:
        started = time.monotonic()
        done = asyncio.run(soak(cp, grant(cp, SOAK_USER), SOAK_USER, "soak", args.steps, seed))
    counts = {name: done.count(name) for name in sorted(set(done))}
    print(f"converged and quiet after {len(done)} steps in {time.monotonic() - started:.0f}s: "
          f"{counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
