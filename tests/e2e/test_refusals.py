"""The real API server saying no: an admission policy refusing our writes (403), a namespace
being deleted (403 NamespaceTerminating), RBAC refusing the first LISTs."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from reconciler.controller import Controller, ControllerConfig
from tests.controlplane.launcher import LocalControlPlane
from tests.e2e.conftest import RECONCILER_USER, REPO, RunningReconciler, eventually
from tests.e2e.nimbus import (
    create_nimbus_policy,
    has_policies,
    kubearmor_policies,
    nimbus_policies,
    policy_names,
    rule,
)
from tests.e2e.refusals import admission_denies, ksp_probe, make_namespace

KSP_GROUP = "security.kubearmor.com"


@pytest.fixture
def other_namespace(control_plane: LocalControlPlane) -> Iterator[str]:
    yield make_namespace(control_plane)



def creates_of(control_plane: LocalControlPlane, namespace: str, name: str,
               since: int = 0) -> list[dict[str, Any]]:
    """The reconciler's create requests for KubeArmorPolicy `name`, from the audit log."""
    return [e for e in control_plane.audit_events()[since:]
            if e["user"].get("username") == RECONCILER_USER and e["verb"] == "create"
            and e["stage"] == "ResponseComplete"
            and e["objectRef"].get("resource") == "kubearmorpolicies"
            and e["objectRef"].get("namespace") == namespace
            and e["objectRef"].get("name", (e.get("requestObject") or {}).get("name")) in (name, None)]


@pytest.fixture
async def two_namespace_reconciler(reconciler_kubeconfig: Path, namespace: str,
                                   other_namespace: str) -> AsyncIterator[RunningReconciler]:
    running = RunningReconciler(reconciler_kubeconfig, ControllerConfig(
        namespaces=(namespace, other_namespace), workers=4))
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def test_writes_refused_in_one_namespace_cost_one_request_each_and_nothing_elsewhere(
        api: httpx.AsyncClient, namespace: str, other_namespace: str,
        control_plane: LocalControlPlane, two_namespace_reconciler: RunningReconciler) -> None:
    reconciler = two_namespace_reconciler
    await create_nimbus_policy(api, other_namespace, "fine", [rule("dnsManipulation")])
    await eventually(lambda: has_policies(api, other_namespace, "fine-dnsmanipulation"), what="convergence")
    mark = len(control_plane.audit_events())
    async with admission_denies(control_plane, namespace=namespace, group=KSP_GROUP,
                                resource="kubearmorpolicies", operations=("CREATE",),
                                probe=ksp_probe(namespace)) as refusal:
        refused = await create_nimbus_policy(api, namespace, "refused", [rule("dnsManipulation")])

        async def refusals() -> float:
            return reconciler.metric("nimbus_kubearmor_api_errors_total", verb="create", code="403")
        await eventually(lambda: _at_least(refusals, 3), what="a few refused attempts")

        # drift elsewhere is repaired as fast as ever while the refusals go on
        latencies = []
        for _ in range(3):
            (await api.delete(f"{kubearmor_policies(other_namespace)}/fine-dnsmanipulation")
             ).raise_for_status()
            started = time.monotonic()
            await eventually(lambda: has_policies(api, other_namespace, "fine-dnsmanipulation"),
                             interval=0.01, what="the repair in the other namespace")
            latencies.append(time.monotonic() - started)
        print(f"drift repaired in {[round(s * 1000) for s in latencies]} ms during refusals")
        assert max(latencies) < 1.0

        # what the user sees: a Warning Event on the NimbusPolicy, naming the policy and why
        async def refused_event() -> dict[str, Any] | None:
            response = await api.get(f"/api/v1/namespaces/{namespace}/events")
            return next((e for e in response.json()["items"]
                         if e["involvedObject"]["uid"] == refused["metadata"]["uid"]
                         and e["reason"] == "WriteRefused"), None)
        event = await eventually(refused_event, what="a WriteRefused Event")
        assert "refused-dnsmanipulation" in event["message"] and refusal in event["message"]

        # one request per attempt (kr8s alone would have re-authenticated and sent each
        # refused create four times), and no watch restarted (it would also have replaced its
        # one HTTP client, breaking every stream)
        attempts = await refusals()
        sent = creates_of(control_plane, namespace, "refused-dnsmanipulation", since=mark)
        assert len(sent) in (attempts, attempts + 1), (len(sent), attempts)  # + one in flight
        assert all(e["responseStatus"]["code"] == 403 for e in sent)
        restarts = [s for s in reconciler.metrics.registry.collect()
                    if s.name == "nimbus_kubearmor_watch_restarts"]
        assert sum(sample.value for family in restarts for sample in family.samples
                   if sample.name.endswith("_total")) == 0
    # lifted: the policy is created on the next retry
    await eventually(lambda: has_policies(api, namespace, "refused-dnsmanipulation"), timeout=30,
                     what="the policy once the admission policy is gone")



async def _at_least(value: Any, n: float) -> bool:
    return bool(await value() >= n)


async def test_a_namespace_being_deleted_is_waited_out_not_fought(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        reconciler: RunningReconciler, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="reconciler")
    await create_nimbus_policy(api, namespace, "doomed", [rule("dnsManipulation"),
                                                          rule("escapeToHost")])
    await eventually(lambda: _count(api, namespace, 4), what="convergence")
    controller = reconciler.controller
    assert controller is not None

    def delete_probe(client: httpx.AsyncClient) -> Awaitable[httpx.Response]:
        return client.delete(f"{nimbus_policies(namespace)}/doomed", params={"dryRun": "All"})

    # The NimbusPolicy cannot be deleted (as with a slow finalizer elsewhere), so the namespace
    # stays Terminating with it inside while the namespace controller deletes our policies.
    mark = len(control_plane.audit_events())
    async with admission_denies(control_plane, namespace=namespace,
                                group="intent.security.nimbus.com", resource="nimbuspolicies",
                                operations=("DELETE",), probe=delete_probe):
        with control_plane.client() as client:
            client.delete(f"/api/v1/namespaces/{namespace}").raise_for_status()
        await eventually(lambda: _count(api, namespace, 0), timeout=60,
                         what="the namespace controller to delete our policies")
        await eventually(lambda: any("namespace is being deleted" in r.getMessage()
                                     for r in caplog.records), what="the refusal to be seen")
        # later looks at it (a resync, say) write nothing
        before = reconciler.metric("controller_runtime_reconcile_total",
                                   controller="nimbuspolicy", result="success")
        for n in range(1, 4):
            controller.queue.add(f"{namespace}/doomed")
            await eventually(lambda n=n: reconciler.metric(  # type: ignore[misc]
                "controller_runtime_reconcile_total", controller="nimbuspolicy",
                result="success") >= before + n, what="a reconcile")
        creates = [e for e in control_plane.audit_events()[mark:]
                   if e["user"].get("username") == RECONCILER_USER and e["verb"] == "create"]
        # one refused write in all (kr8s alone would also have sent it four times), no retry
        assert len(creates) == 1, [(e["objectRef"], e["responseStatus"]) for e in creates]
        assert creates[0]["responseStatus"]["code"] == 403
        assert reconciler.metric("controller_runtime_reconcile_errors_total",
                                 controller="nimbuspolicy") == 0
        assert not [r for r in caplog.records if "someone else" in r.getMessage()]
    # the namespace controller finishes; nothing of the NimbusPolicy is remembered
    await eventually(lambda: controller.nimbus_policies.get(f"{namespace}/doomed") is None,
                     timeout=60, what="the NimbusPolicy to be deleted")
    await eventually(lambda: controller.states.sizes()["states"] == 0, what="its state forgotten")


async def _count(api: httpx.AsyncClient, namespace: str, n: int) -> bool:
    return len(await policy_names(api, namespace)) == n


async def test_not_ready_until_every_cache_has_listed_then_ready_within_seconds(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane) -> None:
    """Deployed before its RBAC (kubectl apply ordering): the first LISTs are refused."""
    user = f"late-rbac-{uuid.uuid4().hex[:6]}"
    rules = yaml.safe_load((REPO / "config" / "rbac" / "role.yaml").read_text())["rules"]
    without_list = [r if "kubearmorpolicies" not in r["resources"] else
                    {**r, "verbs": [v for v in r["verbs"] if v not in ("list", "watch")]}
                    for r in rules]
    control_plane.grant(user, without_list)
    await create_nimbus_policy(api, namespace, "early", [rule("dnsManipulation")])
    running = RunningReconciler(control_plane.identity_kubeconfig(user),
                                ControllerConfig(namespaces=(namespace,)))
    await running.start_unsynced()
    try:
        controller = running.controller
        assert isinstance(controller, Controller)
        await eventually(lambda: running.metric("nimbus_kubearmor_watch_restarts_total",
                                                resource="kubearmorpolicies", reason="403") >= 3,
                         what="LISTs refused a few times")
        assert controller.readiness() and not controller.queue.processing
        assert await policy_names(api, namespace) == set()  # no worker ran
        control_plane.grant(user, rules)
        granted = time.monotonic()
        await eventually(lambda: not controller.readiness(), timeout=10, interval=0.02,
                         what="ready once the LISTs are allowed")
        print(f"ready {time.monotonic() - granted:.2f}s after the grant")
        assert time.monotonic() - granted < 5
        await eventually(lambda: has_policies(api, namespace, "early-dnsmanipulation"), what="convergence")
    finally:
        await running.stop()


async def test_a_revoked_token_is_replaced_from_the_rotated_file_without_breaking_watches(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane) -> None:
    """In a pod the kubelet rotates the token file; once the old token stops working (here:
    the Secret it was bound to is deleted) the API server answers 401. The reconciler reads the
    credentials again once and carries on: the watches opened with the old token stay open."""
    rules = yaml.safe_load((REPO / "config" / "rbac" / "role.yaml").read_text())["rules"]
    account = f"rotating-{uuid.uuid4().hex[:6]}"
    kubeconfig = control_plane.service_account_kubeconfig(namespace, account, rules,
                                                           bound_secret=f"{account}-1")
    old_token = yaml.safe_load(kubeconfig.read_text())["users"][0]["user"]["token"]
    running = RunningReconciler(kubeconfig, ControllerConfig(namespaces=(namespace,)))
    await running.start()
    try:
        await create_nimbus_policy(api, namespace, "before", [rule("dnsManipulation")])
        await eventually(lambda: has_policies(api, namespace, "before-dnsmanipulation"), what="convergence")
        control_plane.rotate_service_account_token(kubeconfig, bound_secret=f"{account}-2")
        with control_plane.client() as client:
            client.delete(f"/api/v1/namespaces/{namespace}/secrets/{account}-1").raise_for_status()
        # the API server caches a token's successful authentication for 10 s
        mark = len(control_plane.audit_events())
        async with httpx.AsyncClient(base_url=control_plane.server, verify=False) as tokens:
            await eventually(lambda: _refused(tokens, old_token), timeout=20, interval=0.5,
                             what="the old token to be refused")
        await create_nimbus_policy(api, namespace, "after", [rule("dnsManipulation")])
        await eventually(lambda: has_policies(api, namespace, "after-dnsmanipulation"), what="convergence")
        user = f"system:serviceaccount:{namespace}:{account}"
        # (a refused authentication is audited without a user, at stage ResponseStarted)
        answers = [e["responseStatus"]["code"] for e in control_plane.audit_events()[mark:]
                   if e["user"].get("username") in (user, None) and e["verb"] == "create"
                   and e["objectRef"].get("namespace") == namespace]
        assert answers[:2] == [401, 201], answers  # refused once, then sent with the new token
        restarts = sum(s.value for f in running.metrics.registry.collect()
                       if f.name == "nimbus_kubearmor_watch_restarts" for s in f.samples
                       if s.name.endswith("_total"))
        assert restarts == 0
        (await api.delete(f"{kubearmor_policies(namespace)}/before-dnsmanipulation")
         ).raise_for_status()
        await eventually(lambda: has_policies(api, namespace, "before-dnsmanipulation"),
                         what="a repair, seen through a watch opened with the old token")
    finally:
        await running.stop()


async def _refused(client: httpx.AsyncClient, token: str) -> bool:
    response = await client.get("/api/v1/namespaces/default",
                                headers={"Authorization": f"Bearer {token}"})
    return response.status_code == 401
