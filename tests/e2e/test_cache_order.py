"""The cache's resourceVersion order on the real API server, with the fault proxy making the
interleavings of issue 17 happen on demand: a relist whose LIST is served after our create's
answer and someone's deletion of that policy (defect 1), and a watch event from before our own
DELETE delivered after its answer (defect 2)."""

from __future__ import annotations

import httpx
import pytest

from reconciler.reflector import Backoff
from tests.controlplane.launcher import LocalControlPlane
from tests.e2e.conftest import eventually
from tests.e2e.nimbus import (
    create_nimbus_policy,
    kubearmor_policies,
    nimbus_policies,
    policies,
    rule,
)
from tests.e2e.test_faults_proxy import proxy, relists, through  # noqa: F401 (proxy: a fixture)
from tests.faultproxy import ErrorEvent, FaultProxy, ResetAfter, Rule, Stall, Status

pytestmark = pytest.mark.faults
MERGE = {"Content-Type": "application/merge-patch+json"}


async def status_lists(api: httpx.AsyncClient, namespace: str, name: str, count: int) -> bool:
    status = (await api.get(f"{nimbus_policies(namespace)}/{name}")).json().get("status") or {}
    return len(status.get("adapterPolicies") or []) == count


async def test_a_policy_deleted_while_a_relist_waits_for_its_list_is_recreated(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        proxy: FaultProxy) -> None:  # noqa: F811
    """The watch of policies ends with 410; the relist's LIST is held. Meanwhile a NimbusPolicy
    comes, we create its policy and the answer goes into the cache; someone deletes the policy.
    The LIST, served now, does not name it: the cache must drop it and the policy be created
    again (not taken as present, listed in the status, enforcing nothing)."""
    name = "web-dnsmanipulation"
    async with through(proxy, control_plane, namespace) as reconciler:
        controller = reconciler.controller
        assert controller is not None
        held = proxy.add(Rule(Stall(), kind="list", path="/kubearmorpolicies", times=1))
        proxy.add(Rule(ErrorEvent(Status(410, reason="Expired", message="too old")),
                       kind="watch", path="/kubearmorpolicies", times=1))
        proxy.reset_open(kind="watch", path="/kubearmorpolicies")
        await eventually(lambda: held.hits == 1, timeout=30, what="the relist's LIST held")

        await create_nimbus_policy(api, namespace, "web", [rule("dnsManipulation")])
        cached = await eventually(lambda: controller.kubearmor_policies.get(f"{namespace}/{name}"),
                                  what="our create's answer in the cache")
        (await api.delete(f"{kubearmor_policies(namespace)}/{name}")).raise_for_status()
        held.release()

        await eventually(lambda: relists(reconciler, "kubearmorpolicies") == 2,
                         what="the relist done")

        async def recreated() -> bool:
            policy = (await policies(api, namespace)).get(name)
            return policy is not None and policy["metadata"]["uid"] != cached.uid
        await eventually(recreated, timeout=20, what="the deleted policy created again")
        # (the status, left to a core for a second first: there is none here)
        await eventually(lambda: status_lists(api, namespace, "web", 1), what="the status")
        status = (await api.get(f"{nimbus_policies(namespace)}/web")).json()["status"]
        assert status["adapterPolicies"] == [f"KubeArmorPolicy/{name}"]


async def test_an_event_from_before_our_delete_does_not_bring_the_policy_back(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        proxy: FaultProxy) -> None:  # noqa: F811
    """The watch of policies is down (503s) while someone labels one of our policies and its
    rule is taken out of the NimbusPolicy: we delete the policy, and the answer takes it out
    of the cache. The watch comes back with the label's MODIFIED event only (then cut), the
    DELETED event in the next one: the MODIFIED must not put the policy back in the cache (a
    second DELETE of it), and the tombstone goes once the DELETED event has come."""
    name = "web-dnsmanipulation"
    url = f"{kubearmor_policies(namespace)}/{name}"
    async with through(proxy, control_plane, namespace) as reconciler:
        controller = reconciler.controller
        assert controller is not None
        await create_nimbus_policy(api, namespace, "web", [rule("dnsManipulation"),
                                                           rule("escapeToHost")])
        await eventually(lambda: status_lists(api, namespace, "web", 4), what="convergence")
        newest = max(int(p["metadata"]["resourceVersion"])
                     for p in (await policies(api, namespace)).values())
        watch = controller.reflectors[1]
        assert watch.resource.plural == "kubearmorpolicies"
        watch.backoff = Backoff(watch.clock, initial=0.2, maximum=0.4, jitter=0)  # a quicker test
        await eventually(lambda: int(watch.resource_version or 0) >= newest,
                         what="the watch caught up with our creates")

        down = proxy.add(Rule(Status(503), kind="watch", path="/kubearmorpolicies"))
        proxy.reset_open(kind="watch", path="/kubearmorpolicies")
        await eventually(lambda: down.hits >= 1, timeout=30, what="the watch refused")
        (await api.patch(url, content='{"metadata": {"labels": {"team": "x"}}}', headers=MERGE)
         ).raise_for_status()
        (await api.patch(f"{nimbus_policies(namespace)}/web", headers=MERGE,
                         content='{"spec": {"rules": [{"id": "escapeToHost", "rule": '
                                 '{"action": "Block"}}]}}')).raise_for_status()

        def deletes() -> list[int | None]:
            return [e.status for e in proxy.requests(kind="write", method="DELETE", path=name)
                    if e.done]
        await eventually(lambda: deletes() == [200], what="our DELETE answered")
        assert controller.kubearmor_policies.get(f"{namespace}/{name}") is None
        assert controller.kubearmor_policies.tombstones == 1

        cut = proxy.add(Rule(ResetAfter(events=1), kind="watch", path="/kubearmorpolicies",
                             times=1))
        proxy.remove(down)

        def after_the_cut() -> list[int]:
            watches = proxy.requests(kind="watch", path="/kubearmorpolicies")
            cut_at = next(i for i, e in enumerate(watches) if e.rule is cut)
            return [e.events for e in watches[cut_at + 1:]]
        await eventually(lambda: cut.hits == 1, timeout=60, what="the watch back, then cut")
        await eventually(lambda: [e.events for e in proxy.requests(rule=cut) if e.done] == [1],
                         what="the label's MODIFIED event delivered, then the stream cut")
        await eventually(lambda: any(after_the_cut()), timeout=60,
                         what="the next watch's DELETED event")
        await eventually(lambda: controller.kubearmor_policies.tombstones == 0,
                         what="the tombstone gone once the watch passed the deletion")
        assert controller.kubearmor_policies.get(f"{namespace}/{name}") is None
        assert deletes() == [200], "the older MODIFIED event brought the policy back"
