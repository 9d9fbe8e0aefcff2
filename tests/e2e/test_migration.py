"""Replacing the upstream Go adapter in place: its policies (annotation only, no label, every
section present, upstream's own SW-DEPLOY list) and its status entries are adopted with at most
one write per policy (the label; the spec too where upstream's differs), none deleted or made
again, and each NimbusPolicy's status entries keep their order."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from reconciler.builder import desired_policies
from reconciler.controller import ControllerConfig
from reconciler.intents import SOFTWARE_DEPLOYMENT_TOOLS
from reconciler.model import to_dict
from reconciler.names import MANAGED_BY_KEY, MANAGED_BY_VALUE
from reconciler.parse import parse_nimbus_policy
from tests.controlplane.launcher import LocalControlPlane
from tests.e2e.conftest import RECONCILER_USER, RunningReconciler, eventually, writes_by
from tests.e2e.nimbus import create_nimbus_policy, kubearmor_policies, nimbus_policies, rule

# upstream's list names /usr/local/bin/curl twice (INTENTS.md); ours writes it once
UPSTREAM_SOFTWARE_DEPLOYMENT_TOOLS = [*SOFTWARE_DEPLOYMENT_TOOLS[:-2], "/usr/local/bin/curl",
                                      *SOFTWARE_DEPLOYMENT_TOOLS[-2:]]


def as_upstream_leaves_it(policy: dict[str, Any]) -> dict[str, Any]:
    """The upstream adapter's object for one of our policies: annotation, no label."""
    obj = json.loads(json.dumps(policy))
    del obj["metadata"]["labels"]
    if obj["metadata"]["name"].endswith("swdeploymenttools"):
        obj["spec"]["process"]["matchPaths"] = [{"path": p} for p in UPSTREAM_SOFTWARE_DEPLOYMENT_TOOLS]
    return obj


async def test_the_upstream_adapters_policies_are_adopted_in_place(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        reconciler_kubeconfig: Path) -> None:
    specs = {"web": [rule("dnsManipulation"), rule("escapeToHost")],
             "db": [rule("swDeploymentTools", "Audit"), rule("unAuthorizedSaTokenAccess")],
             "jobs": [rule("preventExecutionFromTempOrLogsFolders")]}
    upstream: dict[str, dict[str, Any]] = {}
    statuses: dict[str, list[str]] = {}
    for name, rules in specs.items():
        np = await create_nimbus_policy(api, namespace, name, rules)
        parsed, _ = parse_nimbus_policy(np)
        assert parsed is not None
        built = [to_dict(p) for p in desired_policies(parsed)[0]]
        for policy in built:
            obj = as_upstream_leaves_it(policy)
            (await api.post(kubearmor_policies(namespace), json=obj)).raise_for_status()
            upstream[obj["metadata"]["name"]] = obj
        # upstream's entries, in its own order, after another adapter's
        entries = ["NetworkPolicy/" + name] + [f"KubeArmorPolicy/{p['metadata']['name']}"
                                               for p in reversed(built)]
        statuses[name] = entries
        (await api.patch(f"{nimbus_policies(namespace)}/{name}/status", content=json.dumps(
            {"status": {"status": "Created", "numberOfAdapterPolicies": len(entries),
                        "adapterPolicies": entries}}),
            headers={"Content-Type": "application/merge-patch+json"})).raise_for_status()
    before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in
              (await api.get(kubearmor_policies(namespace))).json()["items"]}

    mark = len(control_plane.audit_events())
    running = RunningReconciler(reconciler_kubeconfig, ControllerConfig(namespaces=(namespace,)))
    await running.start()
    try:
        async def adopted() -> bool:
            items = (await api.get(kubearmor_policies(namespace))).json()["items"]
            return len(items) == len(upstream) and all(
                (p["metadata"].get("labels") or {}).get(MANAGED_BY_KEY) == MANAGED_BY_VALUE
                for p in items)
        await eventually(adopted, what="every upstream policy labelled")
        writes = writes_by(control_plane, RECONCILER_USER, since=mark)
        by_verb: dict[str, list[str]] = {}
        for write in writes:
            by_verb.setdefault(write["verb"], []).append(write["objectRef"].get("name", ""))
        print(f"{len(upstream)} upstream policies adopted with {len(writes)} writes: "
              f"{ {verb: len(names) for verb, names in by_verb.items()} }")
        assert set(by_verb) == {"patch"}, by_verb  # no create, no delete, no status write
        assert sorted(by_verb["patch"]) == sorted(upstream)  # one each
        after = (await api.get(kubearmor_policies(namespace))).json()["items"]
        assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in after} == before
        for name in specs:
            status = (await api.get(f"{nimbus_policies(namespace)}/{name}")).json()["status"]
            assert status["adapterPolicies"] == statuses[name]
            assert status["numberOfAdapterPolicies"] == len(statuses[name])
        # and from then on, nothing: a restart writes nothing
        mark = len(control_plane.audit_events())
        await running.restart()
        controller = running.controller
        assert controller is not None
        for key in controller.nimbus_policies.list_keys():
            controller.queue.add(key)
        await eventually(lambda: running.metric("controller_runtime_reconcile_total",
                                                controller="nimbuspolicy", result="success") >= 6,
                         what="reconciles after the restart")
        assert writes_by(control_plane, RECONCILER_USER, since=mark) == []
    finally:
        await running.stop()
