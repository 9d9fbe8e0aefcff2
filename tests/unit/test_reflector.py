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
from reconciler.kube import KUBEARMOR_POLICIES, ApiError
from reconciler.metrics import Metrics
from reconciler.reflector import Backoff, Reflector, Step, WatchClosedAtOnce, next_step
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
