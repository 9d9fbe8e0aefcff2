"""NimbusPolicies at the API server's object-size limit (31,500 rules, 1.54 MB: etcd refuses
past about 32,000; tests/bigpolicy.py), with the reconciler leader-elected in the test's event
loop as `python -m reconciler --leader-elect` runs it (the manager, its probes, the Lease renewed
beside the controller, 4 workers).

Four at once (one for each worker), and small ones created once they are stored; then a relist
of them all in one page, as after a restart. What must hold throughout: the event loop
never stalls over 50 ms (tests/looplag.py: no ready task waits longer, in the loop's CPU time), the
Lease is renewed every retry period (from the API server's audit log), the small ones converge,
each big one is reported as bad input with its rule count in MAX_EVENTS Events, and what the
controller keeps for each is small. `make bench` (bigpolicy) has one alone and more of them back
to back, against a normal one."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry

from reconciler.controller import Controller, ControllerConfig
from reconciler.events import MAX_EVENTS
from reconciler.limits import MAX_PROBLEMS, MAX_RULES, RulesCut
from reconciler.metrics import Metrics
from tests.bigpolicy import (
    RETRY_PERIOD,
    RULES,
    AuditTail,
    LeadingReconciler,
    RenewalClock,
    big_body,
    body,
    create_binding,
    kept_for,
    nimbus_policies,
    post,
    rule,
    started_process,
)
from tests.controlplane.launcher import LocalControlPlane
from tests.e2e.conftest import RECONCILER_USER, REPO, eventually
from tests.e2e.nimbus import has_policies
from tests.looplag import LoopLag

MAX_STALL = 0.050
T = TypeVar("T")


@pytest.fixture
async def leader(control_plane: LocalControlPlane, reconciler_kubeconfig: Path,
                 namespace: str) -> AsyncIterator[LeadingReconciler]:
    lease_rules = yaml.safe_load((REPO / "config/rbac/leader_election_role.yaml").read_text())
    control_plane.grant_in_namespace(RECONCILER_USER, namespace, lease_rules["rules"])
    running = LeadingReconciler(reconciler_kubeconfig, namespace)
    task = asyncio.create_task(running.run())
    try:
        await eventually(running.leading, 30, "the reconciler to lead and sync")
        yield running
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def as_started() -> Iterator[None]:
    """The test process's objects frozen as the reconciler's are once started (bigpolicy.py)."""
    with started_process():
        yield


async def while_leading(leader: LeadingReconciler, condition: Awaitable[T]) -> T:
    """`condition`'s value; fails at once if the reconciler lost its Lease (and so exited)."""
    assert not leader.manager.leadership_lost, "leader election lost: the reconciler exited"
    return await condition


async def capped_events(api: httpx.AsyncClient, namespace: str, name: str
                        ) -> list[dict[str, Any]] | None:
    """The NimbusPolicy's Events, once there are as many as the cap allows."""
    response = await api.get(f"/api/v1/namespaces/{namespace}/events",
                             params={"fieldSelector": f"involvedObject.name={name}"})
    response.raise_for_status()
    events: list[dict[str, Any]] = response.json()["items"]
    return events if len(events) >= MAX_EVENTS else None


async def statuses_written(audit: AuditTail, *names: str) -> bool:
    return set(names) <= await anyio.to_thread.run_sync(audit.status_writes)


async def adapter_policies(api: httpx.AsyncClient, namespace: str, name: str) -> list[str]:
    response = await api.get(f"{nimbus_policies(namespace)}/{name}")
    return (response.json().get("status") or {}).get("adapterPolicies")  # type: ignore[no-any-return]


async def test_nimbus_policies_at_the_size_limit(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        leader: LeadingReconciler, as_started: None) -> None:
    owner = await create_binding(api, namespace)
    bodies = {f"big-{i}": big_body(f"big-{i}", owner) for i in range(4)}
    small = [f"small-{i}" for i in range(3)]
    relister = Controller(leader.controller.client, Metrics(CollectorRegistry()),
                          ControllerConfig(namespaces=(namespace,)))
    assert leader.manager.elector is not None
    renewals = RenewalClock(leader.manager.elector)
    lag = LoopLag()
    audit = AuditTail(control_plane, RECONCILER_USER, namespace)
    started = time.monotonic()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(lag.run)
        # four at once, one for each worker; small ones once they are stored (and being
        # reconciled), which converge meanwhile
        async with anyio.create_task_group() as posts:
            for content in bodies.values():
                posts.start_soon(post, api, namespace, content)
        for name in small:
            await post(api, namespace, body(name, owner, [rule("dnsManipulation")]))
        small_posted = time.monotonic()
        await eventually(lambda: while_leading(leader, has_policies(
            api, namespace, *(f"{n}-dnsmanipulation" for n in small))),
                         60, "the small NimbusPolicies to converge")
        small_converged = time.monotonic() - small_posted
        await eventually(lambda: while_leading(leader, statuses_written(audit, *bodies)), 120,
                         "every status", interval=0.2)
        # Events are posted after the status: as many as the cap allows, for so many problems
        events = {name: await eventually(lambda name=name: capped_events(api, namespace, name),
                                         30, f"{name}'s Events") for name in bodies}
        elapsed = time.monotonic() - started
        # a relist, as after a restart: all of them in one page, read item by item
        listed = time.monotonic()
        await relister.reflectors[0].list_once()  # the NimbusPolicies
        relisted = time.monotonic() - listed
        ended = time.monotonic()
        tasks.cancel_scope.cancel()

    statuses = {name: await adapter_policies(api, namespace, name) for name in bodies}
    updates = audit.lease_updates()
    lateness = renewals.lateness()
    kept = {name: kept_for(leader.controller, f"{namespace}/{name}") for name in bodies}
    print(f"\n{len(bodies)} NimbusPolicies of {RULES} rules reconciled in {elapsed:.1f}s, "
          f"relisted in {relisted:.1f}s; small ones converged {small_converged:.1f}s after they "
          f"were created; "
          f"{lag.summary()}; {len(renewals.attempts)} Lease renewals, the latest "
          f"{max(lateness, default=0) * 1000:.0f} ms late; kept per key "
          f"{max(kept.values()) / 1024:.0f} KiB")

    assert lag.longest_stall <= MAX_STALL, lag.summary()
    # renewed every retry period throughout, from start to end, at the first attempt each
    # time, none begun later than half a period after it was due (the API server's time to
    # answer is not counted)
    assert not leader.manager.leadership_lost and leader.manager.elector.is_leader
    assert renewals.failed() == 0 and updates and set(updates) == {200}, updates
    assert renewals.began[0] - started < 2 * RETRY_PERIOD
    assert ended - renewals.began[-1] < 2 * RETRY_PERIOD
    assert max(lateness) < RETRY_PERIOD / 2, [f"{late:.2f}" for late in lateness]
    for name in bodies:
        assert len(events[name]) == MAX_EVENTS, (name, len(events[name]))
        report = [e for e in events[name] if e["reason"] == "TooLarge"]
        assert len(report) == 1 and report[0]["message"].startswith(
            f"spec.rules: {RULES} rules; only the first {MAX_RULES} are read"), \
            [e["message"] for e in events[name]][:3]
        # the escapeToHost rule at the end is not read: only the first rule's policy exists
        assert statuses[name] == [f"KubeArmorPolicy/{name}-dnsmanipulation"], statuses[name]
        cached = relister.nimbus_policies.get(f"{namespace}/{name}")
        assert cached is not None and cached.rules_cut == RulesCut(MAX_RULES, RULES)
    assert len(relister.nimbus_policies) == len(bodies) + len(small)
    assert max(kept.values()) < 256 * 1024, kept
    state = leader.controller.states.get(f"{namespace}/big-0")
    assert state.desired is not None and len(state.desired[1].problems) <= MAX_PROBLEMS + 1
