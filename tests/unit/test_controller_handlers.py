"""The NimbusPolicy event handler: which events bring a reconcile, with a clock of our own."""

from __future__ import annotations

import copy
from typing import Any

from prometheus_client import CollectorRegistry

from reconciler.cached import CachedNimbusPolicy
from reconciler.clock import FakeClock
from reconciler.controller import Controller, ControllerConfig
from reconciler.metrics import Metrics
from reconciler.reflector import Source
from reconciler.store import Change


class NoClient:
    def expect_streams(self, count: int) -> None:
        """Nothing is requested: the handlers are called by hand."""


def nimbus_policy(version: str, status: dict[str, Any] | None = None) -> CachedNimbusPolicy:
    obj: dict[str, Any] = {
        "apiVersion": "intent.security.nimbus.com/v1alpha1", "kind": "NimbusPolicy",
        "metadata": {"name": "np", "namespace": "ns", "uid": "u1", "generation": 1,
                     "resourceVersion": version,
                     "ownerReferences": [{"apiVersion": "intent.security.nimbus.com/v1alpha1",
                                          "kind": "SecurityIntentBinding", "name": "np",
                                          "uid": "b", "controller": True}]},
        "spec": {"selector": {"matchLabels": {}}, "rules": [{"id": "dnsManipulation"}]}}
    if status is not None:
        obj["status"] = copy.deepcopy(status)
    return CachedNimbusPolicy.from_json(obj)


def controller(clock: FakeClock) -> Controller:
    return Controller(NoClient(), Metrics(CollectorRegistry()),  # type: ignore[arg-type]
                      ControllerConfig(namespaces=("ns",), await_core_status=1.0), clock=clock)


async def taken(ctl: Controller) -> None:
    """The key taken from the queue and done with, as a worker would."""
    key = await ctl.queue.get()
    ctl.queue.done(key)
    assert len(ctl.queue) == 0


async def test_the_first_status_brings_a_reconcile_while_a_newcomer_waits_for_it() -> None:
    clock = FakeClock()
    ctl = controller(clock)
    bare, stamped = nimbus_policy("1"), nimbus_policy("2", {"status": "Created"})
    ctl.on_nimbus_policy(Change.ADDED, None, bare, Source.WATCH)
    assert ctl.newcomers.wait("ns/np") == 1.0
    await taken(ctl)
    clock.advance(0.5)
    ctl.on_nimbus_policy(Change.UPDATED, bare, stamped, Source.WATCH)  # the core's, awaited
    assert len(ctl.queue) == 1


async def test_our_own_first_status_after_the_wait_brings_no_reconcile() -> None:
    """Once the wait is over the first status is ours (no core): its echo, which may come
    before its answer, must not cut short the backoff of a reconcile that failed."""
    clock = FakeClock()
    ctl = controller(clock)
    bare, ours = nimbus_policy("1"), nimbus_policy("3", {"status": "Created"})
    ctl.on_nimbus_policy(Change.ADDED, None, bare, Source.WATCH)
    await taken(ctl)
    clock.advance(1.0)
    ctl.on_nimbus_policy(Change.UPDATED, bare, ours, Source.WATCH)
    later = nimbus_policy("4", {"status": "Created", "lastUpdated": "x"})
    ctl.on_nimbus_policy(Change.UPDATED, ours, later, Source.WATCH)  # nor any status-only one
    assert len(ctl.queue) == 0
