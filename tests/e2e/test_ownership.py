"""Ownership is the controller ownerReference, not a label: every KubeArmorPolicy in scope is
watched, so a user's object holding a name we need, and a policy of ours that lost its label,
stay in sight. And what the controller remembers per NimbusPolicy goes with it."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx

from reconciler.controller import ControllerConfig
from tests.controlplane.launcher import LocalControlPlane
from tests.e2e.conftest import RECONCILER_USER, RunningReconciler, eventually, writes_by
from tests.e2e.nimbus import (
    create_binding,
    create_nimbus_policy,
    kubearmor_policies,
    nimbus_policies,
    policies,
    rule,
)
from tests.e2e.refusals import make_namespace

MANAGED_BY = "app.kubernetes.io/managed-by"



async def events_of(api: httpx.AsyncClient, namespace: str, uid: str) -> list[dict[str, Any]]:
    response = await api.get(f"/api/v1/namespaces/{namespace}/events")
    return [e for e in response.json()["items"] if e["involvedObject"]["uid"] == uid]


async def test_a_users_policy_holding_our_name_is_reported_and_replaced_once_it_goes(
        api: httpx.AsyncClient, namespace: str, reconciler: RunningReconciler) -> None:
    users = {"apiVersion": "security.kubearmor.com/v1", "kind": "KubeArmorPolicy",
             "metadata": {"name": "web-dnsmanipulation", "labels": {"team": "payments"}},
             "spec": {"selector": {"matchLabels": {"app": "web"}}, "action": "Audit",
                      "file": {"matchPaths": [{"path": "/etc/hosts"}]}}}
    (await api.post(kubearmor_policies(namespace), json=users)).raise_for_status()
    before = (await policies(api, namespace))["web-dnsmanipulation"]
    web = await create_nimbus_policy(api, namespace, "web", [rule("dnsManipulation"),
                                                             rule("pkgMgrs")])
    await eventually(lambda: _names(api, namespace, {"web-dnsmanipulation", "web-pkgmgrs"}),
                     what="our other policy")

    async def name_taken() -> list[dict[str, Any]]:
        return [e for e in await events_of(api, namespace, web["metadata"]["uid"])
                if e["reason"] == "NameTaken"]
    (event,) = await eventually(name_taken, what="a NameTaken Event on the NimbusPolicy")
    assert "web-dnsmanipulation" in event["message"] and "metadata.name" in event["message"]
    assert reconciler.metric("nimbus_kubearmor_problems_total", kind="NameTaken") == 1
    assert (await policies(api, namespace))["web-dnsmanipulation"] == before  # left alone
    await eventually(lambda: _status(api, namespace, "web", ["KubeArmorPolicy/web-pkgmgrs"]),
                     what="the status to list only what exists")

    # the user deletes theirs: ours takes its place at once, not at the next relist
    (await api.delete(f"{kubearmor_policies(namespace)}/web-dnsmanipulation")).raise_for_status()
    started = time.monotonic()

    async def ours() -> bool:
        policy = (await policies(api, namespace)).get("web-dnsmanipulation")
        return policy is not None and \
            policy["metadata"]["ownerReferences"][0]["uid"] == web["metadata"]["uid"]
    await eventually(ours, timeout=5, interval=0.02, what="our policy in its place")
    print(f"created {1000 * (time.monotonic() - started):.0f} ms after the user's was deleted")
    await eventually(lambda: _status(api, namespace, "web", ["KubeArmorPolicy/web-pkgmgrs",
                                                             "KubeArmorPolicy/web-dnsmanipulation"]),
                     what="the status to list both")
    controller = reconciler.controller
    assert controller is not None and controller.states.sizes()["claims"] == 0


async def _names(api: httpx.AsyncClient, namespace: str, names: set[str]) -> bool:
    return set(await policies(api, namespace)) == names


async def _status(api: httpx.AsyncClient, namespace: str, name: str, entries: list[str]) -> bool:
    response = await api.get(f"{nimbus_policies(namespace)}/{name}")
    status = response.json().get("status") or {}
    return sorted(status.get("adapterPolicies") or []) == sorted(entries)


async def test_a_policy_that_lost_our_label_is_still_deleted_with_its_rule(
        api: httpx.AsyncClient, namespace: str, reconciler: RunningReconciler) -> None:
    await create_nimbus_policy(api, namespace, "np", [rule("dnsManipulation"), rule("pkgMgrs")])
    await eventually(lambda: _names(api, namespace, {"np-dnsmanipulation", "np-pkgmgrs"}),
                     what="convergence")
    # while the reconciler is down: our label removed from a policy, then its rule removed
    await reconciler.stop()
    (await api.patch(f"{kubearmor_policies(namespace)}/np-pkgmgrs",
                     content=f'{{"metadata": {{"labels": {{"{MANAGED_BY}": null}}}}}}',
                     headers={"Content-Type": "application/merge-patch+json"})).raise_for_status()
    (await api.patch(f"{nimbus_policies(namespace)}/np",
                     content='{"spec": {"rules": [{"id": "dnsManipulation", "rule": '
                             '{"action": "Block"}}]}}',
                     headers={"Content-Type": "application/merge-patch+json"})).raise_for_status()
    await reconciler.start()
    await eventually(lambda: _names(api, namespace, {"np-dnsmanipulation"}),
                     what="the unlabelled policy of the removed rule to be deleted")
    await eventually(lambda: _status(api, namespace, "np", ["KubeArmorPolicy/np-dnsmanipulation"]),
                     what="the status")


async def test_per_key_state_goes_with_its_nimbus_policy(
        api: httpx.AsyncClient, namespace: str, reconciler: RunningReconciler) -> None:
    """600 NimbusPolicies created and deleted at once, many of them deleted while their
    reconcile is under way: afterwards nothing is remembered of any of them."""
    controller = reconciler.controller
    assert controller is not None
    start = controller.states.sizes()
    binding = await create_binding(api, namespace, "many", ["dnsManipulation"])
    limit = asyncio.Semaphore(24)
    count = 600

    async def create_and_delete(i: int) -> None:
        async with limit:
            # every eighth has a bad rule too (its problems are remembered as reported), every
            # tenth needs a name a user's object holds (remembered as a claim)
            rules = [rule("dnsManipulation")] + ([rule("noSuchIntent")] if i % 8 == 0 else [])
            if i % 10 == 0:
                (await api.post(kubearmor_policies(namespace), json={
                    "apiVersion": "security.kubearmor.com/v1", "kind": "KubeArmorPolicy",
                    "metadata": {"name": f"np-{i}-dnsmanipulation"},
                    "spec": {"selector": {"matchLabels": {}},
                             "file": {"matchPaths": [{"path": "/x"}]}}})).raise_for_status()
            await create_nimbus_policy(api, namespace, f"np-{i}", rules, owner=binding)
        await asyncio.sleep(0.02 * (i % 10))  # some are deleted at once, some a little later
        async with limit:
            (await api.delete(f"{nimbus_policies(namespace)}/np-{i}")).raise_for_status()

    largest = dict.fromkeys(start, 0)

    async def sample() -> None:
        while True:
            for name, size in controller.states.sizes().items():
                largest[name] = max(largest[name], size)
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    await asyncio.gather(*(create_and_delete(i) for i in range(count)))
    sampler.cancel()
    print(f"per-key state at its largest: {largest}")
    # it did grow: reconciles ran while their NimbusPolicies were being deleted
    assert largest["states"] >= 50 and largest["claims"] >= 5, largest

    def settled() -> bool:
        figures = {"nimbuspolicies": len(controller.nimbus_policies),
                   "processing": len(controller.queue.processing), "queued": len(controller.queue),
                   "delayed": controller.queue.delayed}
        settled.last = figures  # type: ignore[attr-defined]
        return not any(figures.values())
    try:
        await eventually(settled, timeout=120, what="every NimbusPolicy gone and the queue idle")
    finally:
        print(f"queue and cache at the end: {settled.last}")  # type: ignore[attr-defined]
    assert controller.states.sizes() == start
    assert len(controller.newcomers) == 0  # each forgotten as its deletion came
    reconciles = sum(reconciler.metric("controller_runtime_reconcile_total",
                                       controller="nimbuspolicy", result=r)
                     for r in ("success", "error"))
    assert reconciles >= count and reconciler.metric(
        "nimbus_kubearmor_policy_writes_total", verb="create", resource="kubearmorpolicies") > 0


async def test_a_policy_in_another_namespace_naming_our_uid_is_not_ours(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        reconciler_kubeconfig: Path) -> None:
    """An ownerReference names an owner in its own namespace only: a policy elsewhere whose
    controller reference carries our NimbusPolicy's uid must neither stand in for ours nor be
    patched or deleted by us. (The garbage collector may delete it meanwhile, its owner being
    absent from its namespace: that we never wrote to it is read from the audit log.)"""
    elsewhere = make_namespace(control_plane)
    mark = len(control_plane.audit_events())
    running = RunningReconciler(reconciler_kubeconfig, ControllerConfig(
        namespaces=(namespace, elsewhere)))
    await running.start()
    try:
        web = await create_nimbus_policy(api, namespace, "web", [rule("dnsManipulation")])
        await eventually(lambda: _names(api, namespace, {"web-dnsmanipulation"}), what="ours")
        mine = (await policies(api, namespace))["web-dnsmanipulation"]
        impostor = json.loads(json.dumps(mine))
        impostor["metadata"] = {"name": "web-dnsmanipulation",
                                "ownerReferences": mine["metadata"]["ownerReferences"]}
        impostor["spec"]["action"] = "Audit"
        (await api.post(kubearmor_policies(elsewhere), json=impostor)).raise_for_status()
        # ours deleted: recreated in its namespace, whatever the other one says
        (await api.delete(f"{kubearmor_policies(namespace)}/web-dnsmanipulation")
         ).raise_for_status()
        await eventually(lambda: _names(api, namespace, {"web-dnsmanipulation"}),
                         what="ours recreated")
        recreated = (await policies(api, namespace))["web-dnsmanipulation"]
        assert recreated["metadata"]["ownerReferences"][0]["uid"] == web["metadata"]["uid"]
        other = (await policies(api, elsewhere)).get("web-dnsmanipulation")
        if other is not None:  # not collected yet
            assert other["spec"]["action"] == "Audit"  # never patched
            assert "labels" not in other["metadata"]
        assert [e["requestURI"] for e in writes_by(control_plane, RECONCILER_USER, mark)
                if (e.get("objectRef") or {}).get("namespace") == elsewhere] == []
    finally:
        await running.stop()
