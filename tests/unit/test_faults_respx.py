"""Faults a real API server will not produce on demand, with respx standing in for it: a watch
stream cut midway, a stream gone silent, an in-stream 410, 500s, timeouts, 409 and 429."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import kr8s.asyncio
import pytest
import respx
from prometheus_client import CollectorRegistry

from reconciler.cached import CachedNimbusPolicy, CachedPolicy
from reconciler.clock import FakeClock
from reconciler.controller import Controller, ControllerConfig
from reconciler.kube import KUBEARMOR_POLICIES, KubeClient
from reconciler.metrics import Metrics
from reconciler.reflector import Backoff, Reflector
from reconciler.store import Change, Store
from tests.waiting import eventually

pytestmark = pytest.mark.faults
SERVER = "http://127.0.0.1:9"  # never contacted: respx answers every request
KSP_PATH = "/apis/security.kubearmor.com/v1/kubearmorpolicies"
NS_KSP_PATH = "/apis/security.kubearmor.com/v1/namespaces/ns/kubearmorpolicies"
NP_PATH = "/apis/intent.security.nimbus.com/v1alpha1/namespaces/ns/nimbuspolicies"


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[tuple[respx.MockRouter, KubeClient]]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": SERVER}}],
        "users": [{"name": "fake", "user": {"token": "t"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}))
    with respx.mock(base_url=SERVER, assert_all_called=False) as router:
        router.get(url__regex=r"/version/?$").respond(
            json={"gitVersion": "v1.35.4", "major": "1", "minor": "35"})
        router.patch(f"{NP_PATH}/np/status", name="status").respond(
            json=bound_nimbus_policy([]))
        api = await kr8s.asyncio.api(kubeconfig=str(kubeconfig))
        yield router, KubeClient(api)


def ksp(name: str, rv: int, owner: str = "np", uid: str = "np-uid") -> dict[str, Any]:
    return {"apiVersion": "security.kubearmor.com/v1", "kind": "KubeArmorPolicy",
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}",
                         "resourceVersion": str(rv),
                         "labels": {"app.kubernetes.io/managed-by": "nimbus-kubearmor"},
                         "ownerReferences": [{"apiVersion": "intent.security.nimbus.com/v1alpha1",
                                              "kind": "NimbusPolicy", "name": owner, "uid": uid,
                                              "controller": True, "blockOwnerDeletion": True}]},
            "spec": {}}


def listing(rv: int, *items: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json={"metadata": {"resourceVersion": str(rv)}, "items": list(items)})


def stream(*events: dict[str, Any], then: BaseException | None = None,
           hang: bool = False) -> httpx.Response:
    async def body() -> AsyncIterator[bytes]:
        for event in events:
            yield (json.dumps(event) + "\n").encode()
        if then is not None:
            raise then
        if hang:
            await asyncio.sleep(3600)
    return httpx.Response(200, content=body())


class Server:
    """LIST and WATCH answered in turn from the given responses, requests recorded."""

    def __init__(self, router: respx.MockRouter, lists: list[httpx.Response],
                 watches: list[httpx.Response]) -> None:
        self.lists, self.watches = iter(lists), iter(watches)
        self.list_requests: list[httpx.Request] = []
        self.watch_requests: list[httpx.Request] = []
        router.get(KSP_PATH).mock(side_effect=self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        if request.url.params.get("watch") == "true":
            self.watch_requests.append(request)
            return next(self.watches)
        self.list_requests.append(request)
        return next(self.lists)


class CountingBackoff(Backoff):
    def __init__(self, delay: float = 0.0) -> None:
        super().__init__(FakeClock(), jitter=0)
        self.delay = delay
        self.calls = 0

    def next_delay(self) -> float:
        self.calls += 1
        return self.delay


@contextlib.asynccontextmanager
async def running(reflector: Reflector) -> AsyncIterator[None]:
    task = asyncio.create_task(reflector.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def reflector_for(client: KubeClient, backoff: Backoff, changes: list[tuple[Change, str]],
                  read_timeout: float = 90.0) -> tuple[Reflector, Metrics]:
    metrics = Metrics(CollectorRegistry())

    def handler(change: Change, old: Any, new: Any, from_list: bool) -> None:
        changes.append((change, (new or old).name))

    return Reflector(client, KUBEARMOR_POLICIES, None, Store(), CachedPolicy.from_json, handler,
                     metrics, backoff=backoff, read_timeout=read_timeout), metrics


def restarts(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value(
        "nimbus_kubearmor_watch_restarts_total",
        {"resource": "kubearmorpolicies", "reason": reason}) or 0.0


async def test_watch_cut_midway_resumes_and_loses_nothing(fake: Any) -> None:
    router, client = fake
    server = Server(router, [listing(10, ksp("a", 10))], [
        stream({"type": "ADDED", "object": ksp("b", 11)},
               then=httpx.RemoteProtocolError("peer closed connection")),
        stream({"type": "ADDED", "object": ksp("c", 15)}, hang=True),  # made while cut off
    ])
    changes: list[tuple[Change, str]] = []
    backoff = CountingBackoff()
    reflector, metrics = reflector_for(client, backoff, changes)
    async with running(reflector):
        await eventually(lambda: len(reflector.store) == 3, 5, "the watch to resume")
    # resumed from the last resourceVersion seen: no LIST of everything
    assert len(server.list_requests) == 1 and backoff.calls == 1
    assert server.watch_requests[1].url.params["resourceVersion"] == "11"
    assert changes == [(Change.ADDED, "a"), (Change.ADDED, "b"), (Change.ADDED, "c")]
    assert restarts(metrics, "RemoteProtocolError") == 1


async def test_silent_stream_is_noticed(fake: Any) -> None:
    router, client = fake
    server = Server(router, [listing(10, ksp("a", 10))],
                    [stream(hang=True), stream({"type": "ADDED", "object": ksp("b", 11)}, hang=True)])
    changes: list[tuple[Change, str]] = []
    reflector, metrics = reflector_for(client, CountingBackoff(), changes, read_timeout=0.2)
    async with running(reflector):
        await eventually(lambda: len(reflector.store) == 2, 5, "a new watch after the silence")
    assert len(server.list_requests) == 1 and len(server.watch_requests) == 2
    assert restarts(metrics, "Timeout") == 1


async def test_resuming_from_an_expired_version_relists_once(fake: Any) -> None:
    router, client = fake
    server = Server(router, [listing(10, ksp("a", 10)), listing(30, ksp("a", 10), ksp("z", 29))], [
        stream(then=httpx.ConnectError("connection refused")),
        httpx.Response(410, json={"kind": "Status", "code": 410, "reason": "Expired",
                                  "message": "too old resource version"}),
        stream(hang=True)])
    reflector, metrics = reflector_for(client, CountingBackoff(), [])
    async with running(reflector):
        await eventually(lambda: reflector.store.get("ns/z") is not None, 5, "the relist")
    assert len(server.list_requests) == 2 and len(server.watch_requests) == 3
    assert restarts(metrics, "gone") == 1


async def test_in_stream_410_relists_at_once_and_never_hot_loops(fake: Any) -> None:
    router, client = fake
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                        "message": "too old resource version: 5 (20)"}}
    server = Server(router, [listing(10), listing(20, ksp("x", 19)), listing(30, ksp("x", 19))],
                    [stream(gone), stream(gone), stream(hang=True)])
    backoff = CountingBackoff()
    reflector, metrics = reflector_for(client, backoff, [])
    async with running(reflector):
        await eventually(lambda: len(server.list_requests) == 3 and reflector.watching, 5, "two relists")
    # the first 410 relisted without waiting; the 410 straight after that relist waited
    assert backoff.calls == 1
    assert restarts(metrics, "gone") == 2
    assert reflector.store.get("ns/x") is not None


async def test_bookmark_only_moves_the_resource_version(fake: Any) -> None:
    router, client = fake
    bookmark = {"type": "BOOKMARK", "object": {"kind": "KubeArmorPolicy",
                                               "metadata": {"resourceVersion": "50"}}}
    # the first watch ends as a server timeout ends it: cleanly
    server = Server(router, [listing(10, ksp("a", 10))], [stream(bookmark), stream(hang=True)])
    changes: list[tuple[Change, str]] = []
    reflector, _ = reflector_for(client, CountingBackoff(), changes)
    async with running(reflector):
        await eventually(lambda: len(server.watch_requests) == 2, 5, "the second watch")
    assert server.watch_requests[0].url.params["resourceVersion"] == "10"
    assert server.watch_requests[0].url.params["allowWatchBookmarks"] == "true"
    assert server.watch_requests[1].url.params["resourceVersion"] == "50"
    assert len(server.list_requests) == 1 and changes == [(Change.ADDED, "a")]


# --- writes -------------------------------------------------------------------------------------

def bound_nimbus_policy(rules: list[str]) -> dict[str, Any]:
    return {"apiVersion": "intent.security.nimbus.com/v1alpha1", "kind": "NimbusPolicy",
            "metadata": {"name": "np", "namespace": "ns", "uid": "np-uid", "generation": 1,
                         "resourceVersion": "5",
                         "ownerReferences": [{"apiVersion": "intent.security.nimbus.com/v1alpha1",
                                              "kind": "SecurityIntentBinding", "name": "np",
                                              "uid": "b", "controller": True}]},
            "spec": {"selector": {"matchLabels": {"app": "x"}},
                     "rules": [{"id": r, "rule": {"action": "Block"}} for r in rules]}}


def controller_with(client: KubeClient, nimbus_policy: dict[str, Any],
                    *policies: dict[str, Any]) -> tuple[Controller, FakeClock]:
    clock = FakeClock()
    controller = Controller(client, Metrics(CollectorRegistry()),
                            ControllerConfig(namespaces=("ns",)), clock=clock)
    controller.nimbus_policies.upsert(CachedNimbusPolicy.from_json(nimbus_policy))
    for policy in policies:
        controller.kubearmor_policies.upsert(CachedPolicy.from_json(policy))
    return controller, clock


def created_reply(request: httpx.Request) -> httpx.Response:
    body = json.loads(request.content)
    body["metadata"] |= {"uid": "u-" + body["metadata"]["name"], "resourceVersion": "7"}
    return httpx.Response(201, json=body)


async def test_a_failed_write_does_not_stop_the_others_and_is_retried_with_backoff(fake: Any) -> None:
    router, client = fake

    def create(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content)["metadata"]["name"] == "np-escapetohost-disallowchroot":
            return httpx.Response(500, json={"kind": "Status", "code": 500, "message": "etcd down"})
        return created_reply(request)

    creates = router.post(NS_KSP_PATH).mock(side_effect=create)
    status = router.routes["status"]
    controller, clock = controller_with(client, bound_nimbus_policy(["escapeToHost", "pkgMgrs"]))
    controller.queue.add("ns/np")
    key = controller.queue.get_nowait()
    assert key is not None
    outcome = await controller.process(key)
    controller.queue.done(key)
    assert creates.call_count == 4 and outcome.failed
    assert sorted(outcome.created) == ["np-escapetohost-disallowcapabilities",
                                       "np-escapetohost-swdeploymenttools", "np-pkgmgrs"]
    written = json.loads(status.calls[0].request.content)["status"]["adapterPolicies"]
    assert "KubeArmorPolicy/np-escapetohost-disallowchroot" not in written and len(written) == 3
    # retried after the backoff, not at once
    assert controller.queue.get_nowait() is None and controller.queue.num_requeues("ns/np") == 1
    clock.advance(0.005)
    assert controller.queue.get_nowait() == "ns/np"


async def test_timeouts_and_conflicts_requeue_with_growing_backoff(fake: Any) -> None:
    router, client = fake
    stale = ksp("np-dnsmanipulation", 3)
    stale["spec"] = {"action": "Audit"}
    patches = router.patch(f"{NS_KSP_PATH}/np-dnsmanipulation").mock(side_effect=[
        httpx.ReadTimeout("no answer"),
        httpx.Response(503, json={"kind": "Status", "code": 503, "reason": "ServiceUnavailable",
                                  "message": "etcdserver: leader changed"}),
        httpx.Response(409, json={"kind": "Status", "code": 409, "reason": "Conflict",
                                  "message": "the object has been modified"}),
        httpx.Response(200, json=ksp("np-dnsmanipulation", 9)),
    ])
    # after the conflict the watch brings the newer version (here: put into the cache by hand)
    # and the next try patches that one; nothing is read any other way
    fresh = ksp("np-dnsmanipulation", 8)
    fresh["spec"] = {"action": "Audit"}
    controller, clock = controller_with(client, bound_nimbus_policy(["dnsManipulation"]), stale)
    controller.queue.add("ns/np")
    for backoff in (None, 0.005, 0.01):  # 5 ms doubling: never a tight loop
        if backoff is not None:
            clock.advance(backoff - 1e-6)
            assert controller.queue.get_nowait() is None
            clock.advance(2e-6)
        key = controller.queue.get_nowait()
        assert key == "ns/np"
        outcome = await controller.process(key)
        controller.queue.done(key)
        assert outcome.failed
    assert [e.reason for e in outcome.errors] == ["Conflict"]
    controller.kubearmor_policies.upsert(CachedPolicy.from_json(fresh))
    clock.advance(0.02)
    key = controller.queue.get_nowait()
    assert key == "ns/np"
    outcome = await controller.process(key)
    assert not outcome.failed and outcome.updated[0].startswith("np-dnsmanipulation (spec")
    assert patches.call_count == 4
    assert json.loads(patches.calls[3].request.content)[0]["value"] == "8"
    assert json.loads(patches.calls[0].request.content)[0] == {
        "op": "replace", "path": "/metadata/resourceVersion", "value": "3"}


async def test_429_retry_after_is_honoured(fake: Any) -> None:
    router, client = fake
    router.post(NS_KSP_PATH).respond(429, headers={"Retry-After": "7"}, json={
        "kind": "Status", "code": 429, "reason": "TooManyRequests", "message": "slow down"})
    controller, clock = controller_with(client, bound_nimbus_policy(["dnsManipulation"]))
    controller.queue.add("ns/np")
    key = controller.queue.get_nowait()
    assert key is not None
    await controller.process(key)
    controller.queue.done(key)
    clock.advance(6.9)
    assert controller.queue.get_nowait() is None
    clock.advance(0.2)
    assert controller.queue.get_nowait() == "ns/np"
