"""Faults the real API server will not make on demand, from the fault proxy between the
reconciler and the real kube-apiserver: refusals before the first LIST, during pagination,
mid-watch and during writes; streams cut, closed at once, silent, or ended with 410."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import logging
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import kr8s.asyncio
import pytest
import yaml
from prometheus_client import CollectorRegistry

from reconciler.controller import Controller, ControllerConfig
from reconciler.kube import KUBEARMOR_POLICIES, NIMBUS_POLICIES, ApiError, KubeClient
from reconciler.leaderelection import LeaderElectionConfig, LeaderElector
from reconciler.metrics import Metrics
from tests.controlplane.launcher import LocalControlPlane
from tests.e2e.conftest import RECONCILER_USER, REPO, RunningReconciler, eventually
from tests.e2e.nimbus import (
    create_binding,
    create_nimbus_policy,
    has_policies,
    kubearmor_policies,
    policies,
    policy_names,
    rule,
)
from tests.faultproxy import (
    CloseWatch,
    Delay,
    ErrorEvent,
    FaultProxy,
    Lost,
    Reset,
    Rule,
    Stall,
    Status,
    Trickle,
)

pytestmark = pytest.mark.faults


@pytest.fixture
def proxy(control_plane: LocalControlPlane, reconciler_kubeconfig: Path) -> Iterator[FaultProxy]:
    """A proxy presenting the reconciler's identity (bound to config/rbac) upstream."""
    with FaultProxy.for_control_plane(control_plane, as_user=RECONCILER_USER) as running:
        yield running


@contextlib.asynccontextmanager
async def through(proxy: FaultProxy, control_plane: LocalControlPlane, namespace: str,
                  synced: bool = True, **config: Any) -> AsyncIterator[RunningReconciler]:
    """The reconciler, in this event loop, talking to the API server through the proxy."""
    kubeconfig = control_plane.identity_kubeconfig(RECONCILER_USER, server=proxy.url)
    running = RunningReconciler(kubeconfig, ControllerConfig(namespaces=(namespace,), **config))
    await (running.start() if synced else running.start_unsynced())
    try:
        yield running
    finally:
        await running.stop()




def relists(reconciler: RunningReconciler, resource: str) -> float:
    return reconciler.metric("nimbus_kubearmor_relists_total", resource=resource)


async def test_lists_refused_at_start_up_then_ready_within_seconds(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        proxy: FaultProxy) -> None:
    """An overloaded or restarting API server answers /version and discovery but refuses the
    LISTs: no watch may start from nothing, nothing is ready, nothing reconciles; once LISTs
    work again it is ready within seconds. One refusal of each kind: the two reflectors' first
    LISTs get the 503 and the reset, whichever asks again first the 429 (two of each only
    made the start-up backoff longer)."""
    await create_nimbus_policy(api, namespace, "early", [rule("dnsManipulation")])
    refusals = [Rule(Status(503, retry_after=1), kind="list", times=1),
                Rule(Reset(), kind="list", times=1),
                Rule(Status(429, retry_after=1), kind="list", times=1)]
    for refusal in refusals:
        proxy.add(refusal)
    async with through(proxy, control_plane, namespace, synced=False) as reconciler:
        controller = reconciler.controller
        assert controller is not None
        await eventually(lambda: all(r.hits == r.times for r in refusals[:-1]),
                         timeout=30, what="the LISTs refused")
        assert controller.readiness(), "ready without a LIST"
        # what it must not do: watch from "" (a store filled by synthetic ADDED events, with no
        # LIST ever completing: never ready), or reconcile from a half-filled cache
        assert not [e for e in proxy.requests(kind="watch") if "resourceVersion=&" in e.query
                    or e.query.endswith("resourceVersion=")]
        assert await policy_names(api, namespace) == set()
        await eventually(lambda: refusals[-1].hits == 1, timeout=10, what="the last refusal")
        allowed = time.monotonic()
        await eventually(lambda: not controller.readiness(), timeout=10, interval=0.02,
                         what="ready once LISTs work")
        print(f"ready {time.monotonic() - allowed:.2f}s after the LISTs worked again")
        assert time.monotonic() - allowed < 5
        await eventually(lambda: has_policies(api, namespace, "early-dnsmanipulation"), what="convergence")
        watches = proxy.requests(kind="watch")
        assert watches and all("resourceVersion=" in e.query and "resourceVersion=&" not in e.query
                               for e in watches)


async def test_faults_during_pagination(api: httpx.AsyncClient, namespace: str,
                                        control_plane: LocalControlPlane,
                                        proxy: FaultProxy) -> None:
    """A connection reset on a later page lists again; a 410 on an expired continue token
    pages through a new LIST from the first page (never everything in one request: 25,000
    policies would be a 46 MB body, ~300 MB parsed)."""
    binding = await create_binding(api, namespace, "paged", ["dnsManipulation"])
    for i in range(11):
        await create_nimbus_policy(api, namespace, f"np-{i:02d}", [rule("dnsManipulation")],
                                   owner=binding)
        (await api.post(kubearmor_policies(namespace), json={
            "apiVersion": "security.kubearmor.com/v1", "kind": "KubeArmorPolicy",
            "metadata": {"name": f"users-{i:02d}"},
            "spec": {"selector": {"matchLabels": {}}, "file": {"matchPaths": [{"path": "/x"}]}}})
         ).raise_for_status()

    def continued(request: Any) -> bool:
        return "continue" in request.query

    reset = proxy.add(Rule(Reset(), kind="list", path="/nimbuspolicies", when=continued, times=1))
    expired = proxy.add(Rule(Status(410, reason="Expired", message=(
        "The provided continue parameter is too old to display a consistent list result.")),
        kind="list", path="/kubearmorpolicies", when=continued, times=1))
    async with through(proxy, control_plane, namespace, page_size=5) as reconciler:
        assert reset.hits == 1 and expired.hits == 1
        ksp_lists = proxy.requests(kind="list", path="/kubearmorpolicies")
        assert all("limit=5" in e.query for e in ksp_lists), [e.query for e in ksp_lists]
        # page 1, the refused page 2, then the new LIST's 3 pages of the 11 users' policies
        assert [("continue" in e.query) for e in ksp_lists] == [False, True, False, True, True]
        assert [e.status for e in ksp_lists] == [200, 410, 200, 200, 200]
        np_lists = proxy.requests(kind="list", path="/nimbuspolicies")
        assert [("continue" in e.query) for e in np_lists] == [False, True, False, True, True]
        await eventually(lambda: has_policies(api, namespace, *(f"np-{i:02d}-dnsmanipulation"
                                                       for i in range(11))),
                         timeout=30, what="every NimbusPolicy's policy")
        controller = reconciler.controller
        assert controller is not None
        await eventually(lambda: len(controller.kubearmor_policies) == 22, what="all cached")


async def test_a_watch_closed_at_once_is_reopened_after_a_backoff_not_at_once(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        proxy: FaultProxy) -> None:
    """The open watch ends as the server ends it (after timeoutSeconds: 2 s here), and every
    later one is closed at once. (Cutting the open one instead would be one more failure: a
    longer backoff before each close, 0.8 s more to wait per close.)"""
    await create_nimbus_policy(api, namespace, "web", [rule("dnsManipulation")])
    async with through(proxy, control_plane, namespace, watch_timeout=(2, 2)) as reconciler:
        await eventually(lambda: has_policies(api, namespace, "web-dnsmanipulation"), what="convergence")
        lists_before = relists(reconciler, "kubearmorpolicies")
        closing = proxy.add(Rule(CloseWatch(), kind="watch", path="/kubearmorpolicies"))

        def closed() -> list[float]:
            return [e.at for e in proxy.requests(rule=closing)]
        await eventually(lambda: len(closed()) >= 2, timeout=30, what="two closed watches")
        gaps = [b - a for a, b in itertools.pairwise(closed())]
        print(f"reopened after {[round(g, 2) for g in gaps]} s")
        # client-go's short-watch guard: a backoff each time (0.8 s doubling), not a hot loop
        assert all(gap >= 0.75 for gap in gaps), gaps
        # counted once the reconciler has read the end of the stream, after the proxy closed it
        await eventually(lambda: reconciler.metric(
            "nimbus_kubearmor_watch_restarts_total", resource="kubearmorpolicies",
            reason="closed-at-once") >= 2, what="both closes counted")
        proxy.remove(closing)
        controller = reconciler.controller
        assert controller is not None
        await eventually(lambda: not controller.readiness(), timeout=30, what="watching again")
        assert relists(reconciler, "kubearmorpolicies") == lists_before  # the position held
        (await api.delete(f"{kubearmor_policies(namespace)}/web-dnsmanipulation")).raise_for_status()
        await eventually(lambda: has_policies(api, namespace, "web-dnsmanipulation"), what="repair")


async def test_streams_cut_or_expired_mid_watch_lose_nothing(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        proxy: FaultProxy) -> None:
    await create_nimbus_policy(api, namespace, "a", [rule("dnsManipulation")])
    async with through(proxy, control_plane, namespace) as reconciler:
        await eventually(lambda: has_policies(api, namespace, "a-dnsmanipulation"), what="convergence")
        controller = reconciler.controller
        assert controller is not None
        before = {r: relists(reconciler, r) for r in ("kubearmorpolicies", "nimbuspolicies")}

        # every stream cut at once; changes made while they are down arrive all the same,
        # from the resourceVersion each had reached: no LIST of everything
        assert proxy.reset_open(kind="watch") == 2
        (await api.delete(f"{kubearmor_policies(namespace)}/a-dnsmanipulation")).raise_for_status()
        await create_nimbus_policy(api, namespace, "b", [rule("pkgMgrs")])
        await eventually(lambda: has_policies(api, namespace, "a-dnsmanipulation", "b-pkgmgrs"),
                         what="what changed during the cut")
        assert {r: relists(reconciler, r) for r in before} == before

        # 410 in the stream: the position is gone; exactly one relist, then watching again
        await eventually(lambda: not controller.readiness(), timeout=30, what="watching again")
        assert proxy.end_open(Status(410, reason="Expired", message="too old resource version"),
                              path="/kubearmorpolicies") == 1
        await eventually(lambda: relists(reconciler, "kubearmorpolicies")
                         == before["kubearmorpolicies"] + 1, timeout=20, what="one relist")
        await eventually(lambda: not controller.readiness(), timeout=30, what="watching again")
        assert relists(reconciler, "kubearmorpolicies") == before["kubearmorpolicies"] + 1
        assert relists(reconciler, "nimbuspolicies") == before["nimbuspolicies"]


async def test_a_silent_watch_is_noticed(api: httpx.AsyncClient, namespace: str,
                                         control_plane: LocalControlPlane,
                                         proxy: FaultProxy) -> None:
    """A stalled connection says nothing: the read timeout (2 s here, 90 s by default: longer
    than the server's bookmark period) notices it, and the watch is opened again. The first
    watch after the LIST is the silent one (cutting an open one to get there was one more
    failure: a longer backoff after the silence)."""
    silent = proxy.add(Rule(Stall(), kind="watch", path="/nimbuspolicies", times=1))
    async with through(proxy, control_plane, namespace, watch_read_timeout=2.0) as reconciler:
        await eventually(lambda: reconciler.metric("nimbus_kubearmor_watch_restarts_total",
                                                   resource="nimbuspolicies", reason="Timeout") >= 1,
                         timeout=20, what="the silence noticed")
        assert silent.hits == 1
        await create_nimbus_policy(api, namespace, "c", [rule("pkgMgrs")])
        await eventually(lambda: has_policies(api, namespace, "c-pkgmgrs"), timeout=30,
                         what="a change after the silence")


async def test_a_watch_ended_by_the_server_resumes_from_its_last_bookmark(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        proxy: FaultProxy) -> None:
    """The server ends every watch after timeoutSeconds (here 2 s), with a BOOKMARK first;
    the next watch starts from the bookmark's resourceVersion, and no LIST is made."""
    async with through(proxy, control_plane, namespace, watch_timeout=(2, 2)) as reconciler:
        await eventually(lambda: len(proxy.requests(kind="watch", path="/kubearmorpolicies")) >= 3,
                         timeout=20, what="watches ended by the server and reopened")
        queries = [e.query for e in proxy.requests(kind="watch", path="/kubearmorpolicies")]
        versions = [int(q.split("resourceVersion=")[1].split("&")[0]) for q in queries]
        assert versions == sorted(versions) and "allowWatchBookmarks=true" in queries[0]
        assert relists(reconciler, "kubearmorpolicies") == 1
        await create_nimbus_policy(api, namespace, "late", [rule("dnsManipulation")])
        await eventually(lambda: has_policies(api, namespace, "late-dnsmanipulation"), what="convergence")


async def test_refused_and_broken_writes_are_retried_with_backoff_and_retry_after(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        proxy: FaultProxy) -> None:
    def creates() -> list[tuple[float, int | None]]:
        return [(e.at, e.status) for e in proxy.requests(kind="write", method="POST",
                                                          path="/kubearmorpolicies")]

    async with through(proxy, control_plane, namespace):
        # a failed create does not stop the others of the same reconcile
        proxy.add(Rule(Status(500), kind="write", method="POST", path="/kubearmorpolicies",
                       times=1))
        await create_nimbus_policy(api, namespace, "three", [rule("escapeToHost")])
        await eventually(lambda: _status_lists(api, namespace, "three", 3), timeout=30,
                         what="all three policies")
        assert [status for _, status in creates()][:3] == [500, 201, 201]
        # 429 with Retry-After, then 503s, then success; a reset status write is retried too
        mark = len(creates())
        proxy.add(Rule(Status(429, retry_after=1), kind="write", method="POST",
                       path="/kubearmorpolicies", times=1))
        proxy.add(Rule(Status(503), kind="write", method="POST", path="/kubearmorpolicies",
                       times=2))
        broken = proxy.add(Rule(Reset(), kind="write", method="PATCH", path="/status", times=1))
        await create_nimbus_policy(api, namespace, "one", [rule("dnsManipulation")])
        await eventually(lambda: _status_lists(api, namespace, "one", 1), timeout=30,
                         what="the policy once the server takes it, and the status")
        posts = creates()[mark:]
        assert [status for _, status in posts] == [429, 503, 503, 201] and broken.hits == 1
        times = [at for at, _ in posts]
        print(f"creates after {[round(b - a, 3) for a, b in itertools.pairwise(times)]} s")
        # Retry-After honoured (1 s: a hundred times the per-key backoff's first steps)
        assert times[1] - times[0] >= 1.0
        # then the per-key backoff (5 ms doubling: the third failure waits 10 ms, the fourth 20)
        assert times[2] - times[1] >= 0.01 and times[3] - times[2] >= 0.02


async def test_an_expired_watch_relists_at_once_but_never_in_a_hot_loop(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        proxy: FaultProxy) -> None:
    async with through(proxy, control_plane, namespace) as reconciler:
        gone = proxy.add(Rule(ErrorEvent(Status(410, reason="Expired", message="too old")),
                              kind="watch", path="/kubearmorpolicies", times=3))
        proxy.reset_open(kind="watch", path="/kubearmorpolicies")
        await eventually(lambda: relists(reconciler, "kubearmorpolicies") == 4, timeout=30,
                         what="three relists")
        lists = [e.at for e in proxy.requests(kind="list", path="/kubearmorpolicies")]
        gaps = [round(b - a, 2) for a, b in itertools.pairwise(lists)]
        print(f"relisted after {gaps} s")
        # a 410 relists at once, but one straight after a relist waits for a backoff: never two
        # relists in a row without one
        assert gone.hits == 3 and lists[3] - lists[1] >= 0.75


async def _status_lists(api: httpx.AsyncClient, namespace: str, name: str, count: int) -> bool:
    response = await api.get(f"/apis/intent.security.nimbus.com/v1alpha1/namespaces/{namespace}"
                             f"/nimbuspolicies/{name}")
    status = response.json().get("status") or {}
    return len(status.get("adapterPolicies") or []) == count


async def test_a_standbys_lease_watch_closed_at_once_is_not_a_hot_loop(
        namespace: str, control_plane: LocalControlPlane, proxy: FaultProxy) -> None:
    rbac = yaml.safe_load((REPO / "config/rbac/leader_election_role.yaml").read_text())["rules"]
    control_plane.grant_in_namespace(RECONCILER_USER, namespace, rbac)
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with control_plane.client() as admin:
        admin.post(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases", json={
            "metadata": {"name": "held"}, "spec": {
                "holderIdentity": "someone-else", "leaseDurationSeconds": 60,
                "acquireTime": now, "renewTime": now}}).raise_for_status()
    closing = proxy.add(Rule(CloseWatch(), kind="watch", path="/leases"))
    api = await kr8s.asyncio.api(kubeconfig=str(
        control_plane.identity_kubeconfig(RECONCILER_USER, server=proxy.url)))
    elector = LeaderElector(KubeClient(api), LeaderElectionConfig(
        namespace=namespace, name="held", identity="standby", retry_period=0.5),
        Metrics(CollectorRegistry()))
    # a standby's life for 1.2 s (a window of time, by its nature), with --leader-elect-retry-
    # period=0.5s (the default 2 s needed 3 s for the same count)
    with anyio.move_on_after(1.2):
        await elector.acquire()
    assert not elector.is_leader and elector.healthy
    # reopened after the retry period (0.5 s) each time, not in a loop
    assert 1 <= closing.hits <= 3, closing.hits


async def test_a_write_left_without_an_answer_may_still_land(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        proxy: FaultProxy) -> None:
    """A create that timed out on our side is applied by the server later: the client knows
    such a write may still land (the manager then keeps the Lease until it expires)."""
    proxy.add(Rule(Delay(1.0, lands_anyway=True), kind="write", method="POST",
                   path="/kubearmorpolicies", times=1))
    kr8s_api = await kr8s.asyncio.api(kubeconfig=str(
        control_plane.identity_kubeconfig(RECONCILER_USER, server=proxy.url)))
    client = KubeClient(kr8s_api, request_timeout=0.5)
    metrics = Metrics(CollectorRegistry())
    controller = Controller(client, metrics, ControllerConfig(namespaces=(namespace,)))
    assert not client.writes_may_still_land()
    async with anyio.create_task_group() as running:
        running.start_soon(controller.run)
        await create_nimbus_policy(api, namespace, "late", [rule("dnsManipulation")])
        await eventually(lambda: metrics.registry.get_sample_value(
            "nimbus_kubearmor_api_errors_total", {"verb": "create", "code": "0"}),
            what="a create without an answer")
        assert client.writes_may_still_land()
        assert await controller.stop(1.0)  # every reconcile finished: not the reason here
        running.cancel_scope.cancel()
    assert client.writes_may_still_land()
    await eventually(lambda: has_policies(api, namespace, "late-dnsmanipulation"),
                     what="the unanswered create, landing all the same")


async def test_an_answer_trickling_in_is_given_up_at_the_request_timeout(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        proxy: FaultProxy) -> None:
    """An answer passed on a byte every 50 ms: each read is quick, the whole would take over a
    minute. The request fails as a timeout once its request timeout has passed, as client-go's
    does, not when the last byte comes; and a write given up that way may still land."""
    await create_nimbus_policy(api, namespace, "np", [rule("dnsManipulation")])
    kr8s_api = await kr8s.asyncio.api(kubeconfig=str(
        control_plane.identity_kubeconfig(RECONCILER_USER, server=proxy.url)))
    client = KubeClient(kr8s_api, request_timeout=1.0)
    trickle = proxy.add(Rule(Trickle(every=0.05), kind="get", path=r"/nimbuspolicies/np$",
                             times=1))
    started = time.monotonic()
    with pytest.raises(ApiError) as error:
        await client.get(NIMBUS_POLICIES, namespace, "np")
    elapsed = time.monotonic() - started
    assert (error.value.status, error.value.reason) == (0, "Timeout") and error.value.transient
    assert trickle.hits == 1 and 1.0 <= elapsed < 10, elapsed
    # the next one, untouched (with the usual timeout: a GET through the proxy on a loaded
    # machine may take longer than this client's second)
    answer = await KubeClient(kr8s_api).get(NIMBUS_POLICIES, namespace, "np")
    assert answer is not None and answer["metadata"]["name"] == "np"
    proxy.add(Rule(Trickle(every=0.05), kind="write", method="POST", path="/kubearmorpolicies",
                   times=1))
    assert not client.writes_may_still_land()
    with pytest.raises(ApiError, match="Timeout"):
        await client.create(KUBEARMOR_POLICIES, namespace, {
            "apiVersion": "security.kubearmor.com/v1", "kind": "KubeArmorPolicy",
            "metadata": {"name": "p"}, "spec": {"selector": {"matchLabels": {}},
                                               "file": {"matchPaths": [{"path": "/x"}]}}},
            "nimbus-kubearmor")
    assert client.writes_may_still_land()
    await eventually(lambda: has_policies(api, namespace, "p"), what="the create, landed")


@pytest.mark.parametrize(("answer", "may_have_landed"), [
    (Lost(), True),  # a gateway's 504 after the API server applied it
    (Lost(Status(500, message="etcdserver: request timed out")), True),
    (Lost(Status(503, message="upstream connect error or disconnect/reset before headers")), True),
    (Status(429, retry_after=1), False),  # refused before any handler ran
    (Status(403, message="denied by an admission policy"), False),
    # etcd refusing an object past its request limit (as kube-apiserver v1.35 words it): stored
    # nowhere (this proxy does not pass it on either)
    (Status(500, "", "etcdserver: request is too large"), False),
], ids=["504", "500", "503", "429", "403", "500-too-large"])
@pytest.mark.anyio  # at collection, for the anyio plugin to parametrize its backend with these
async def test_a_write_answered_5xx_may_have_landed(
        namespace: str, control_plane: LocalControlPlane, proxy: FaultProxy,
        answer: Lost | Status, may_have_landed: bool) -> None:
    """A create the proxy passes on (the policy is created) and answers with a 5xx: the client
    knows it may have landed (the manager then keeps the Lease until it expires). A 4xx is a
    refusal: nothing was written."""
    proxy.add(Rule(answer, kind="write", method="POST", path="/kubearmorpolicies"))
    api = await kr8s.asyncio.api(kubeconfig=str(
        control_plane.identity_kubeconfig(RECONCILER_USER, server=proxy.url)))
    client = KubeClient(api)
    policy = {"apiVersion": "security.kubearmor.com/v1", "kind": "KubeArmorPolicy",
              "metadata": {"name": "answered", "namespace": namespace},
              "spec": {"selector": {"matchLabels": {"app": "x"}},
                       "file": {"matchPaths": [{"path": "/etc/resolv.conf", "readOnly": True}]},
                       "action": "Block"}}
    with pytest.raises(ApiError) as refused:
        await client.create(KUBEARMOR_POLICIES, namespace, policy, "test")
    expected = answer.status.code if isinstance(answer, Lost) else answer.code
    assert refused.value.status == expected
    assert client.writes_may_still_land() is may_have_landed
    async with control_plane.async_client() as admin:
        assert await has_policies(admin, namespace, "answered") is may_have_landed


async def test_a_status_too_large_to_store_is_reported_as_refused(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        proxy: FaultProxy) -> None:
    """A NimbusPolicy at the size limit has no room for the status we write: kube-apiserver
    answers our status patch 500 "etcdserver: request is too large" (measured on v1.35 with
    one of 32,085 rules, 1,572,683 bytes; the proxy answers so here rather than a test making
    one, which takes a search for the size at each release). It is a refusal, not a failure
    that may have landed: a WriteRefused Event says it where the user looks, and the Lease
    would be released at shutdown. Before, it was retried with nothing said but warnings in
    the log, and counted as a write that may still land."""
    proxy.add(Rule(Status(500, "", "etcdserver: request is too large"), kind="write",
                   method="PATCH", path=r"/nimbuspolicies/big/status"))
    async with through(proxy, control_plane, namespace) as running:
        big = await create_nimbus_policy(api, namespace, "big", [rule("dnsManipulation")])

        async def refused_event() -> dict[str, Any] | None:
            response = await api.get(f"/api/v1/namespaces/{namespace}/events")
            return next((e for e in response.json()["items"]
                         if e["involvedObject"]["uid"] == big["metadata"]["uid"]
                         and e["reason"] == "WriteRefused"), None)
        event = await eventually(refused_event, what="a WriteRefused Event")
        assert "nimbuspolicies/status" in event["message"]
        assert "request is too large" in event["message"]
        assert running.controller is not None
        assert not running.controller.client.writes_may_still_land()


async def test_a_repair_that_meets_a_newer_version_is_refused_then_made_on_it(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        proxy: FaultProxy) -> None:
    """Our repair carries the resourceVersion it read; someone edits the policy again while it
    is on its way: 409 Conflict, and the repair is made again on the version the watch brings."""
    url = f"{kubearmor_policies(namespace)}/web-dnsmanipulation"
    merge = {"Content-Type": "application/merge-patch+json"}
    async with through(proxy, control_plane, namespace):
        await create_nimbus_policy(api, namespace, "web", [rule("dnsManipulation")])
        await eventually(lambda: has_policies(api, namespace, "web-dnsmanipulation"),
                         what="convergence")
        held = proxy.add(Rule(Stall(), kind="write", method="PATCH", path="/kubearmorpolicies/",
                              times=1))
        (await api.patch(url, content='{"spec": {"action": "Audit"}}', headers=merge)
         ).raise_for_status()
        await eventually(lambda: held.hits == 1, what="our repair on its way")
        (await api.patch(url, content='{"metadata": {"labels": {"team": "x"}}}', headers=merge)
         ).raise_for_status()
        assert isinstance(held.answer, Stall)
        held.answer.release()

        async def repaired() -> bool:
            policy = (await policies(api, namespace))["web-dnsmanipulation"]
            return policy["spec"]["action"] == "Block" and \
                policy["metadata"]["labels"].get("team") == "x"
        await eventually(repaired, what="the repair made on the newer version")
        answers = [e.status for e in proxy.requests(kind="write", method="PATCH",
                                                    path="/kubearmorpolicies/")]
        assert answers[0] == 409 and answers[-1] == 200, answers


async def test_a_status_conflict_is_quiet_while_retried_and_a_warning_when_it_persists(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        proxy: FaultProxy, caplog: pytest.LogCaptureFixture) -> None:
    """Every status write answered 409 (as if another controller always wrote first), twelve
    times: three attempts a reconcile, four reconciles. The first three failures are retried
    quietly (the first still says, at info, the policy it created), the fourth is a warning,
    the fifth converges; none is reported as a refusal."""
    caplog.set_level(logging.DEBUG, logger="reconciler")
    key = f"{namespace}/web"
    conflicts = proxy.add(Rule(Status(409, "Conflict", "the object has been modified"),
                               kind="write", method="PATCH", path=r"/nimbuspolicies/web/status",
                               times=12))
    # (await_core_status 0: the status written in the reconcile that creates the policy, as
    # when the core has written one already; without a core, it would wait for one a second)
    async with through(proxy, control_plane, namespace, await_core_status=0) as running:
        await create_nimbus_policy(api, namespace, "web", [rule("dnsManipulation")])
        await eventually(lambda: [r for r in caplog.records if r.getMessage() == "reconciled"
                                  and getattr(r, "nimbuspolicy", None) == key],
                         what="convergence after the conflicts")
        assert conflicts.hits == 12
        assert running.metric("nimbus_kubearmor_write_conflicts_total",
                              resource="nimbuspolicies/status") == 12
        assert running.metric("nimbus_kubearmor_problems_total", kind="WriteRefused") == 0
    failures = [r for r in caplog.records if getattr(r, "nimbuspolicy", None) == key
                and getattr(r, "errors", None)]
    assert [(r.levelno, r.retries) for r in failures] == [
        (logging.INFO, 1), (logging.DEBUG, 2), (logging.DEBUG, 3), (logging.WARNING, 4)]
    assert failures[0].policies_created == ["web-dnsmanipulation"]
    assert all("409 Conflict" in e for r in failures for e in r.errors)
    attempts = [r for r in caplog.records if "another adapter's" in r.getMessage()]
    assert len(attempts) == 8 and {r.levelno for r in attempts} == {logging.DEBUG}
