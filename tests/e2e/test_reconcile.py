"""The controller converges and stays converged, on the real local control plane."""

from __future__ import annotations

import json
from typing import Any

import httpx

from reconciler.builder import desired_policies
from reconciler.intents import CATALOGUE
from reconciler.model import to_dict
from reconciler.parse import parse_nimbus_policy
from tests.controlplane.launcher import LocalControlPlane
from tests.e2e.conftest import RECONCILER_USER, RunningReconciler, eventually, writes_by
from tests.e2e.nimbus import (
    create_nimbus_policy,
    kubearmor_policies,
    nimbus_policies,
    policies,
    rule,
)

MANAGED_BY = "app.kubernetes.io/managed-by"



async def get_nimbus_policy(api: httpx.AsyncClient, namespace: str, name: str) -> dict[str, Any]:
    response = await api.get(f"{nimbus_policies(namespace)}/{name}")
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


async def policy_names_become(api: httpx.AsyncClient, namespace: str, names: set[str]) -> None:
    async def matches() -> bool:
        return set(await policies(api, namespace)) == names
    await eventually(matches, what=f"exactly the policies {sorted(names)}")


async def status_lists(api: httpx.AsyncClient, namespace: str, name: str,
                       entries: list[str]) -> dict[str, Any]:
    async def right() -> dict[str, Any] | None:
        status = (await get_nimbus_policy(api, namespace, name)).get("status") or {}
        ok = sorted(status.get("adapterPolicies") or []) == sorted(entries) and \
            status.get("numberOfAdapterPolicies") == len(entries) and status.get("status")
        return status if ok else None
    return await eventually(right, what=f"{name}'s status to list {entries}")


async def patch(api: httpx.AsyncClient, url: str, body: Any, kind: str = "merge") -> None:
    content_type = {"merge": "application/merge-patch+json",
                    "json": "application/json-patch+json"}[kind]
    response = await api.patch(url, content=json.dumps(body), headers={"Content-Type": content_type})
    response.raise_for_status()


def expected(nimbus_policy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    parsed, _ = parse_nimbus_policy(nimbus_policy)
    assert parsed is not None
    built, _ = desired_policies(parsed)
    return {p.name: to_dict(p) for p in built}


def ours(policy: dict[str, Any]) -> dict[str, Any]:
    """The part of a stored policy the reconciler owns."""
    metadata = policy["metadata"]
    return {"spec": policy["spec"], "owner": metadata.get("ownerReferences"),
            "label": (metadata.get("labels") or {}).get(MANAGED_BY),
            "annotation": (metadata.get("annotations") or {}).get(MANAGED_BY)}


async def test_every_intent_produces_exactly_its_policies_and_status(
        api: httpx.AsyncClient, namespace: str, reconciler: RunningReconciler) -> None:
    rules = [rule(intent, "Audit" if i % 2 else "Block") for i, intent in enumerate(CATALOGUE)]
    created = await create(api, namespace, "shop", rules)
    want = expected(created)
    assert len(want) == 8
    await policy_names_become(api, namespace, set(want))
    stored = await policies(api, namespace)
    for name, policy in want.items():
        assert ours(stored[name]) == ours(policy), name
        assert stored[name]["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    await status_lists(api, namespace, "shop", [f"KubeArmorPolicy/{n}" for n in want])


async def create(api: httpx.AsyncClient, namespace: str, name: str, rules: list[dict[str, Any]],
                 **kwargs: Any) -> dict[str, Any]:
    return await create_nimbus_policy(api, namespace, name, rules, **kwargs)


async def test_hand_edits_and_deletes_are_repaired(
        api: httpx.AsyncClient, namespace: str, reconciler: RunningReconciler) -> None:
    nimbus_policy = await create(api, namespace, "web", [rule("escapeToHost"), rule("dnsManipulation")])
    want = expected(nimbus_policy)
    await policy_names_become(api, namespace, set(want))
    url = kubearmor_policies(namespace)

    async def repaired(name: str) -> bool:
        current = (await policies(api, namespace)).get(name)
        return current is not None and ours(current) == ours(want[name])

    # deleted by hand: recreated (an escapeToHost sub-policy, which upstream could not repair)
    (await api.delete(f"{url}/web-escapetohost-disallowcapabilities")).raise_for_status()
    await eventually(lambda: repaired("web-escapetohost-disallowcapabilities"), what="recreation")
    # spec edited, and a section added: reverted, the added section removed
    await patch(api, f"{url}/web-dnsmanipulation", {"spec": {
        "action": "Audit", "syscalls": {"matchSyscalls": [{"syscall": ["ptrace"]}]}}})
    await eventually(lambda: repaired("web-dnsmanipulation"), what="the spec to be reverted")
    # our label removed (the object drops out of the label-selected watch): restored
    await patch(api, f"{url}/web-escapetohost-disallowchroot",
                {"metadata": {"labels": {MANAGED_BY: None, "team": "x"}}})
    await eventually(lambda: repaired("web-escapetohost-disallowchroot"), what="the label")
    # our annotation changed, someone else's annotation added: ours restored, theirs kept
    await patch(api, f"{url}/web-escapetohost-swdeploymenttools",
                {"metadata": {"annotations": {MANAGED_BY: "someone", "note": "keep me"}}})
    await eventually(lambda: repaired("web-escapetohost-swdeploymenttools"), what="the annotation")
    final = await policies(api, namespace)
    assert final["web-escapetohost-swdeploymenttools"]["metadata"]["annotations"]["note"] == "keep me"
    assert final["web-escapetohost-disallowchroot"]["metadata"]["labels"]["team"] == "x"
    # the controller ownerReference removed: restored
    await patch(api, f"{url}/web-dnsmanipulation",
                [{"op": "remove", "path": "/metadata/ownerReferences"}], kind="json")
    await eventually(lambda: repaired("web-dnsmanipulation"), what="the ownerReference")
    assert reconciler.metric("nimbus_kubearmor_drift_corrections_total", field="spec") >= 1
    assert reconciler.metric("nimbus_kubearmor_drift_corrections_total", field="owner") >= 1


async def test_rules_removed_and_added(api: httpx.AsyncClient, namespace: str,
                                       reconciler: RunningReconciler) -> None:
    await create(api, namespace, "np", [rule("escapeToHost"), rule("pkgMgrs")])
    escape = {"np-escapetohost-disallowchroot", "np-escapetohost-disallowcapabilities",
              "np-escapetohost-swdeploymenttools"}
    await policy_names_become(api, namespace, escape | {"np-pkgmgrs"})
    url = f"{nimbus_policies(namespace)}/np"
    await patch(api, url, [{"op": "remove", "path": "/spec/rules/0"}], kind="json")
    await policy_names_become(api, namespace, {"np-pkgmgrs"})
    await status_lists(api, namespace, "np", ["KubeArmorPolicy/np-pkgmgrs"])
    await patch(api, url, [{"op": "add", "path": "/spec/rules/-", "value": rule("dnsManipulation")}],
                kind="json")
    await policy_names_become(api, namespace, {"np-pkgmgrs", "np-dnsmanipulation"})
    await status_lists(api, namespace, "np", ["KubeArmorPolicy/np-pkgmgrs",
                                              "KubeArmorPolicy/np-dnsmanipulation"])
    # escapeToHost's exclude_caps edited: only that sub-policy changes
    await patch(api, url, [{"op": "add", "path": "/spec/rules/-", "value": rule(
        "escapeToHost", exclude_caps=["sys_admin"])}], kind="json")
    await policy_names_become(api, namespace, escape | {"np-pkgmgrs", "np-dnsmanipulation"})
    caps = (await policies(api, namespace))["np-escapetohost-disallowcapabilities"]
    assert "sys_admin" not in json.dumps(caps["spec"])


async def test_deleting_the_nimbus_policy_garbage_collects_its_policies(
        api: httpx.AsyncClient, namespace: str, reconciler: RunningReconciler) -> None:
    await create(api, namespace, "gone", [rule("escapeToHost")])
    await eventually(lambda: _count(api, namespace, 3), what="three policies")
    (await api.delete(f"{nimbus_policies(namespace)}/gone")).raise_for_status()
    await eventually(lambda: _count(api, namespace, 0), timeout=60,
                     what="the garbage collector to delete the policies")


async def _count(api: httpx.AsyncClient, namespace: str, n: int) -> bool:
    return len(await policies(api, namespace)) == n


async def test_orphans_get_nothing_and_other_adapters_status_survives(
        api: httpx.AsyncClient, namespace: str, reconciler: RunningReconciler) -> None:
    await create(api, namespace, "orphan", [rule("dnsManipulation")], owner=None)
    shared = await create(api, namespace, "shared", [rule("dnsManipulation")])
    # another adapter (the Kubernetes one) writes its entry first
    await patch(api, f"{nimbus_policies(namespace)}/shared/status", {"status": {
        "status": "Created", "numberOfAdapterPolicies": 1,
        "adapterPolicies": ["NetworkPolicy/shared-dnsmanipulation"]}})
    status = await status_lists(api, namespace, "shared", [
        "NetworkPolicy/shared-dnsmanipulation", "KubeArmorPolicy/shared-dnsmanipulation"])
    assert status["adapterPolicies"][0] == "NetworkPolicy/shared-dnsmanipulation"
    assert set(await policies(api, namespace)) == {"shared-dnsmanipulation"}
    orphan = await get_nimbus_policy(api, namespace, "orphan")
    assert "status" not in orphan
    # the reconciler's later status writes keep it too: remove a rule
    await patch(api, f"{nimbus_policies(namespace)}/shared",
                {"spec": {"rules": [rule("pkgMgrs")]}})
    await status_lists(api, namespace, "shared", ["NetworkPolicy/shared-dnsmanipulation",
                                                  "KubeArmorPolicy/shared-pkgmgrs"])
    assert shared["metadata"]["uid"]


async def test_a_bad_rule_is_reported_and_nothing_else_is_affected(
        api: httpx.AsyncClient, namespace: str, reconciler: RunningReconciler) -> None:
    bad = await create(api, namespace, "bad", [rule("dnsManipulation"), rule("noSuchIntent"),
                                               rule("pkgMgrs", "Deny")])
    await create(api, namespace, "good", [rule("swDeploymentTools")])
    await policy_names_become(api, namespace, {"bad-dnsmanipulation", "good-swdeploymenttools"})

    async def events() -> list[dict[str, Any]]:
        response = await api.get(f"/api/v1/namespaces/{namespace}/events")
        found = [e for e in response.json()["items"]
                 if e["involvedObject"]["uid"] == bad["metadata"]["uid"]]
        return found if len(found) == 2 else []

    found = sorted(await eventually(events, what="two Events on the bad NimbusPolicy"),
                   key=lambda e: e["reason"])
    assert [(e["reason"], e["type"]) for e in found] == [("UnknownAction", "Warning"),
                                                         ("UnknownIntent", "Warning")]
    assert "spec.rules[2].rule.action" in found[0]["message"] and "Deny" in found[0]["message"]
    assert "spec.rules[1].id" in found[1]["message"] and "noSuchIntent" in found[1]["message"]
    assert reconciler.metric("nimbus_kubearmor_problems_total", kind="UnknownIntent") == 1
    await status_lists(api, namespace, "bad", ["KubeArmorPolicy/bad-dnsmanipulation"])
    # reported once per generation: a restart reads the Events and posts nothing again
    await reconciler.restart()
    await status_lists(api, namespace, "good", ["KubeArmorPolicy/good-swdeploymenttools"])
    assert len(await events()) == 2


async def test_zero_writes_in_steady_state_and_after_restart(
        api: httpx.AsyncClient, namespace: str, reconciler: RunningReconciler,
        control_plane: LocalControlPlane) -> None:
    for i in range(5):
        await create(api, namespace, f"np{i}", [rule("escapeToHost"), rule("dnsManipulation")])
    for i in range(5):
        await status_lists(api, namespace, f"np{i}", [
            f"KubeArmorPolicy/np{i}-{s}" for s in ("escapetohost-disallowchroot",
                                                   "escapetohost-disallowcapabilities",
                                                   "escapetohost-swdeploymenttools",
                                                   "dnsmanipulation")])
    assert writes_by(control_plane, RECONCILER_USER), "the audit log must see the reconciler"
    mark = len(control_plane.audit_events())
    # a full resync of every NimbusPolicy, then a restart (fresh caches, initial list)
    controller = reconciler.controller
    assert controller is not None
    before = reconciler.metric("controller_runtime_reconcile_total", controller="nimbuspolicy",
                               result="success")
    for key in controller.nimbus_policies.list_keys():
        controller.queue.add(key)
    await eventually(lambda: _reconciled(reconciler, before + 5), what="the resync")
    await reconciler.restart()
    await eventually(lambda: _reconciled(reconciler, 5), what="the reconciles after restart")
    assert writes_by(control_plane, RECONCILER_USER, since=mark) == []


async def _reconciled(reconciler: RunningReconciler, n: float) -> bool:
    return reconciler.metric("controller_runtime_reconcile_total", controller="nimbuspolicy",
                             result="success") >= n


async def test_events_are_capped_per_generation_not_across_generations(
        api: httpx.AsyncClient, namespace: str, reconciler: RunningReconciler) -> None:
    bad = await create(api, namespace, "noisy", [rule(f"bad{i}") for i in range(11)])

    async def events(count: int) -> list[dict[str, Any]]:
        response = await api.get(f"/api/v1/namespaces/{namespace}/events")
        found = [e for e in response.json()["items"]
                 if e["involvedObject"]["uid"] == bad["metadata"]["uid"]]
        return found if len(found) == count else []

    first = await eventually(lambda: events(10), what="ten Events for eleven problems")
    assert sum("(and 1 more problems" in e["message"] for e in first) == 1
    # a new generation with a new problem is reported, whatever the last one posted
    await patch(api, f"{nimbus_policies(namespace)}/noisy",
                {"spec": {"rules": [rule("dnsManipulation"), rule("newlyBad")]}})
    found = await eventually(lambda: events(11), what="an Event for the new generation's problem")
    assert any("newlyBad" in e["message"] for e in found)
