"""The reflector's decisions, without a server: how each failure is classified, and a LIST answer
no real API server gives (no resourceVersion, as a broken proxy or aggregated API might send)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import pytest
from prometheus_client import CollectorRegistry

from reconciler.cached import CachedPolicy
from reconciler.clock import FakeClock
from reconciler.controller import Controller, ControllerConfig, Outcome
from reconciler.kube import KUBEARMOR_POLICIES, ApiError
from reconciler.metrics import Metrics
from reconciler.reflector import (
    Backoff,
    Reflector,
    Source,
    Step,
    WatchClosedAtOnce,
    next_step,
)
from reconciler.store import Store
from tests.waiting import eventually


@pytest.mark.parametrize(("failure", "listed", "gone_recently", "step"), [
    (ApiError(410, "Expired", "too old"), True, False, Step.RELIST),
    (ApiError(410, "Expired", "too old"), True, True, Step.RELIST_AFTER_BACKOFF),
    (ApiError(0, "ReadTimeout", "silent"), True, False, Step.REWATCH_AFTER_BACKOFF),
    (httpx.RemoteProtocolError("reset"), True, False, Step.REWATCH_AFTER_BACKOFF),
    (ApiError(429, "TooManyRequests", "slow down"), True, False, Step.REWATCH_AFTER_BACKOFF),
    (ApiError(503, "ServiceUnavailable", "busy"), True, False, Step.REWATCH_AFTER_BACKOFF),
    (WatchClosedAtOnce("closed"), True, False, Step.REWATCH_AFTER_BACKOFF),
    (ApiError(403, "Forbidden", "rbac"), True, False, Step.RELIST_AFTER_BACKOFF),
    (ApiError(404, "NotFound", "no such CRD"), True, False, Step.RELIST_AFTER_BACKOFF),
    # nothing listed yet: there is no position to watch from, whatever failed
    (ApiError(503, "ServiceUnavailable", "busy"), False, False, Step.RELIST_AFTER_BACKOFF),
    (httpx.ConnectError("refused"), False, False, Step.RELIST_AFTER_BACKOFF),
])
def test_every_failure_has_one_next_step(failure: BaseException, listed: bool,
                                         gone_recently: bool, step: Step) -> None:
    assert next_step(failure, listed=listed, gone_recently=gone_recently) is step


class Client:
    """Answers LISTs from a list of pages; records the watches asked for."""

    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self.pages = pages
        self.watches: list[str] = []

    async def list(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.pages.pop(0)

    @contextlib.asynccontextmanager
    async def watch(self, *args: Any, resource_version: str, **kwargs: Any
                    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        self.watches.append(resource_version)
        raise ApiError(0, "Stop", "the test is over")
        yield  # pragma: no cover


async def test_a_list_answer_without_a_resource_version_is_listed_again() -> None:
    item = {"metadata": {"name": "p", "namespace": "ns", "uid": "u", "resourceVersion": "5"}}
    client = Client([{"metadata": {}, "items": [item]},
                     {"metadata": {"resourceVersion": "7"}, "items": [item]}])
    clock = FakeClock()
    reflector: Reflector[CachedPolicy] = Reflector(
        client, KUBEARMOR_POLICIES, "ns", Store(), CachedPolicy.from_json,  # type: ignore[arg-type]
        lambda *_: None, Metrics(CollectorRegistry()), clock=clock,
        startup=Backoff(clock, initial=0.0, jitter=0))
    async with anyio.create_task_group() as running:
        running.start_soon(reflector.run)
        await eventually(lambda: client.watches, 5, "a watch")
        running.cancel_scope.cancel()
    assert client.watches == ["7"]  # listed again first, never a watch from ""
    assert reflector.synced.is_set() and not client.pages


def ksp(name: str, uid: str, version: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": uid,
                         "resourceVersion": str(version)},
            "spec": {"action": "Block"}}


class Lists:
    """Answers each LIST from the snapshot that `serve()` holds when the request is made,
    in pages of `limit`; records (limit, continue) of each request. `expire`: how many
    continue tokens to answer with 410 Expired (the snapshot compacted away)."""

    def __init__(self, version: int, items: list[dict[str, Any]]) -> None:
        self.snapshot = (version, items)
        self.requests: list[tuple[int | None, str | None]] = []
        self.expire = 0
        self.on_continue: list[tuple[int, list[dict[str, Any]]]] = []  # snapshots to switch to

    def expect_streams(self, count: int) -> None:
        """The controller sizes a real client's connection pool to its watches: none here."""

    async def list(self, resource: Any, namespace: Any, *, limit: int | None = None,
                   continue_token: str | None = None, **_: Any) -> dict[str, Any]:
        self.requests.append((limit, continue_token))
        if continue_token is not None and self.expire:
            self.expire -= 1
            if self.on_continue:
                self.snapshot = self.on_continue.pop(0)
            raise ApiError(410, "Expired", "The provided continue parameter is too old")
        version, items = self.snapshot
        start = int(continue_token or 0)
        end = len(items) if limit is None else start + limit
        page: dict[str, Any] = {"metadata": {"resourceVersion": str(version)},
                                "items": [dict(i) for i in items[start:end]]}
        if end < len(items):
            page["metadata"]["continue"] = str(end)
        return page


def policies_reflector(client: Any, store: Store[CachedPolicy], lock: anyio.Lock | None = None,
                       changes: list[tuple[Any, ...]] | None = None) -> Reflector[CachedPolicy]:
    def handler(change: Any, old: Any, new: Any, source: Any) -> None:
        if changes is not None:
            changes.append((change.value, (new or old).name, source))
    return Reflector(client, KUBEARMOR_POLICIES, "ns", store, CachedPolicy.from_json, handler,
                     Metrics(CollectorRegistry()), page_size=2, page_lock=lock)


async def test_a_relist_drops_a_policy_its_list_did_not_name_though_stored_while_it_waited() -> None:
    """Issue 17, defect 1, as found: a relist records what the store holds, then waits for
    the page lock another reflector holds; meanwhile our create is answered (101) and stored,
    and someone deletes that policy (102). The LIST, served at 102, does not name it: it must
    not stay in the cache (the reconcile would take it as present and never recreate it)."""
    client = Lists(100, [ksp("kept", "k", 90)])
    store: Store[CachedPolicy] = Store()
    lock = anyio.Lock()
    changes: list[tuple[Any, ...]] = []
    reflector = policies_reflector(client, store, lock, changes)
    await reflector.list_once()
    async with anyio.create_task_group() as running:
        await lock.acquire()  # another reflector's page
        running.start_soon(reflector.list_once)
        await anyio.wait_all_tasks_blocked()  # the relist waits for the lock
        store.upsert(CachedPolicy.from_json(ksp("ours", "u", 101)))  # our create's answer
        client.snapshot = (102, [ksp("kept", "k", 90)])  # someone deleted it at 102
        lock.release()
    assert store.get("ns/ours") is None, "a policy deleted before the LIST stays cached"
    assert store.get("ns/kept") is not None
    assert ("deleted", "ours", Source.RELIST) in changes  # its NimbusPolicy is looked at again


async def test_an_event_older_than_our_delete_does_not_bring_the_policy_back() -> None:
    """Issue 17, defect 2: our DELETE is answered (a Status, no resourceVersion) and the
    policy leaves the cache; a MODIFIED event from before the deletion is still in the stream.
    It must not put the policy back (a reconcile would delete it once more)."""
    client = Lists(5, [ksp("p", "u", 5)])
    controller = Controller(client, Metrics(CollectorRegistry()),  # type: ignore[arg-type]
                            ControllerConfig(namespaces=("ns",)))
    reflector = controller.reflectors[1]
    reflector.client = client
    await reflector.list_once()
    policy = controller.kubearmor_policies.get("ns/p")
    assert policy is not None

    async def delete(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"kind": "Status", "apiVersion": "v1", "status": "Success",
                "details": {"name": "p", "uid": "u"}}
    client.delete = delete  # type: ignore[attr-defined]
    await controller._delete(policy, Outcome("ns/np"))
    assert controller.kubearmor_policies.get("ns/p") is None
    reflector._apply({"type": "MODIFIED", "object": ksp("p", "u", 6)})  # someone's, before
    assert controller.kubearmor_policies.get("ns/p") is None, "an older event brought it back"
    reflector._apply({"type": "DELETED", "object": ksp("p", "u", 7)})
    assert controller.kubearmor_policies.get("ns/p") is None


async def test_an_expired_continue_token_pages_through_a_new_list_from_the_start() -> None:
    """A relist whose continue token expired (etcd compacted the snapshot it paged through)
    lists again page by page, never in one request, and keeps nothing only the expired
    snapshot named."""
    client = Lists(100, [ksp("a", "a", 90), ksp("gone", "g", 95), ksp("b", "b", 96)])
    client.expire = 1
    client.on_continue = [(120, [ksp("a", "a", 90), ksp("b", "b", 96), ksp("c", "c", 110),
                                 ksp("d", "d", 111)])]
    store: Store[CachedPolicy] = Store()
    reflector = policies_reflector(client, store)
    assert await reflector.list_once() == "120"
    assert client.requests == [(2, None), (2, "2"), (2, None), (2, "2")]
    assert sorted(store.keys_in("ns")) == ["ns/a", "ns/b", "ns/c", "ns/d"]


async def test_a_second_expired_continue_token_fails_the_list() -> None:
    """Once per LIST: a server that expires every continue token gets the run loop's relist
    (after a backoff when 410s come in a row), not a hot loop of first pages."""
    client = Lists(100, [ksp("a", "a", 90), ksp("b", "b", 95), ksp("c", "c", 96)])
    client.expire = 2
    reflector = policies_reflector(client, Store())
    with pytest.raises(ApiError) as failure:
        await reflector.list_once()
    assert failure.value.gone
    assert client.requests == [(2, None), (2, "2"), (2, None), (2, "2")]


async def test_each_change_says_whether_the_first_list_a_relist_or_the_watch_found_it() -> None:
    """The first LIST's objects are a backlog; a relist's and the watch's changes are news (the
    controller takes only the watch's creations for NimbusPolicies made just now)."""
    client = Lists(100, [ksp("a", "ua", 90)])
    changes: list[tuple[Any, ...]] = []
    reflector = policies_reflector(client, Store(), changes=changes)
    await reflector.list_once()
    client.snapshot = (110, [ksp("a", "ua", 105), ksp("b", "ub", 106)])
    await reflector.list_once()
    reflector._apply({"type": "ADDED", "object": ksp("c", "uc", 111)})
    reflector._apply({"type": "DELETED", "object": ksp("b", "ub", 112)})
    assert changes == [("added", "a", Source.FIRST_LIST), ("updated", "a", Source.RELIST),
                       ("added", "b", Source.RELIST), ("added", "c", Source.WATCH),
                       ("deleted", "b", Source.WATCH)]
