"""The NimbusPolicy status write on the real API server, made on a copy of the NimbusPolicy that
others have written since it was read (a controller whose watch has not delivered their writes
yet: here one that listed and is not watching, so the copy stays exactly as old as the test
makes it). And what a reconcile writes is logged even when a later step of it fails."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import kr8s.asyncio
import pytest
from prometheus_client import CollectorRegistry

from reconciler.controller import Controller, ControllerConfig
from reconciler.kube import KubeClient
from reconciler.metrics import Metrics
from reconciler.problems import ProblemKind
from tests.controlplane.launcher import LocalControlPlane
from tests.e2e.conftest import RECONCILER_USER, RunningReconciler, eventually
from tests.e2e.nimbus import create_nimbus_policy, has_policies, nimbus_policies, rule
from tests.e2e.refusals import admission_denies, webhook_denies


@pytest.fixture
async def listed(reconciler_kubeconfig: Path, namespace: str
                 ) -> AsyncIterator[tuple[Controller, Metrics]]:
    """A controller of `namespace` as the reconciler's identity, not running: `list()` fills
    its caches once (as --once does), and they stay as listed."""
    api = await kr8s.asyncio.api(kubeconfig=str(reconciler_kubeconfig))
    metrics = Metrics(CollectorRegistry())
    yield Controller(KubeClient(api), metrics, ControllerConfig(namespaces=(namespace,))), metrics


async def list_into(controller: Controller) -> None:
    for reflector in controller.reflectors:
        await reflector.list_once()


async def status_of(api: httpx.AsyncClient, namespace: str, name: str) -> dict[str, Any]:
    response = await api.get(f"{nimbus_policies(namespace)}/{name}")
    response.raise_for_status()
    return response.json().get("status") or {}  # type: ignore[no-any-return]


async def write_status(api: httpx.AsyncClient, namespace: str, name: str,
                       status: dict[str, Any]) -> None:
    """As the Nimbus core and upstream's adapters write it: the whole status, PUT with the
    resourceVersion just read."""
    url = f"{nimbus_policies(namespace)}/{name}"
    obj = (await api.get(url)).json()
    obj["status"] = status
    (await api.put(f"{url}/status", json=obj)).raise_for_status()


def status_writes(control_plane: LocalControlPlane, namespace: str, since: int) -> list[int]:
    """The answers to the reconciler's status writes in `namespace`, in order."""
    return [e["responseStatus"]["code"] for e in control_plane.audit_events()[since:]
            if e["user"].get("username") == RECONCILER_USER and e["verb"] == "patch"
            and e.get("objectRef", {}).get("subresource") == "status"
            and e["objectRef"].get("namespace") == namespace]


def stamp(seconds: int) -> str:
    return (dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=seconds)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


async def test_the_cores_fields_written_since_our_read_do_not_refuse_our_status_write(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        listed: tuple[Controller, Metrics]) -> None:
    controller, metrics = listed
    await create_nimbus_policy(api, namespace, "np", [rule("dnsManipulation")])
    await write_status(api, namespace, "np", {"status": "Created", "lastUpdated": stamp(1),
                                              "numberOfAdapterPolicies": 1,
                                              "adapterPolicies": ["NetworkPolicy/np-dns"]})
    await list_into(controller)
    # the core stamps the status again: a new resourceVersion, adapterPolicies unchanged
    await write_status(api, namespace, "np", {"status": "Created", "lastUpdated": stamp(2),
                                              "numberOfAdapterPolicies": 1,
                                              "adapterPolicies": ["NetworkPolicy/np-dns"]})
    mark = len(control_plane.audit_events())
    outcome = await controller.reconcile(f"{namespace}/np")
    assert not outcome.failed and outcome.status_written, outcome.errors
    assert status_writes(control_plane, namespace, mark) == [200]  # one write, accepted
    assert await status_of(api, namespace, "np") == {
        "status": "Created", "lastUpdated": stamp(2), "numberOfAdapterPolicies": 2,
        "adapterPolicies": ["NetworkPolicy/np-dns", "KubeArmorPolicy/np-dnsmanipulation"]}
    assert metrics.registry.get_sample_value("nimbus_kubearmor_write_conflicts_total",
                                             {"resource": "nimbuspolicies/status"}) == 0


async def test_another_adapters_entry_written_since_our_read_is_kept(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        listed: tuple[Controller, Metrics], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="reconciler")
    controller, metrics = listed
    await create_nimbus_policy(api, namespace, "np", [rule("dnsManipulation")])
    await write_status(api, namespace, "np", {"status": "Created", "numberOfAdapterPolicies": 0})
    await list_into(controller)  # no adapterPolicies yet: the patch tests that they are absent
    await write_status(api, namespace, "np", {"status": "Created", "numberOfAdapterPolicies": 1,
                                              "adapterPolicies": ["ClusterPolicy/np-dns"]})
    mark = len(control_plane.audit_events())
    outcome = await controller.reconcile(f"{namespace}/np")
    assert not outcome.failed and outcome.status_written, outcome.errors
    # refused (the test of adapterPolicies failed), read again, made again on what it read
    assert status_writes(control_plane, namespace, mark) == [422, 200]
    assert await status_of(api, namespace, "np") == {
        "status": "Created", "numberOfAdapterPolicies": 2,
        "adapterPolicies": ["ClusterPolicy/np-dns", "KubeArmorPolicy/np-dnsmanipulation"]}
    assert metrics.registry.get_sample_value("nimbus_kubearmor_write_conflicts_total",
                                             {"resource": "nimbuspolicies/status"}) == 1
    # retried, so quiet: a debug line, no warning, no Event about a refusal
    assert any(r.levelno == logging.DEBUG and "another adapter" in r.getMessage()
               for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not outcome.problems


async def test_a_status_the_core_wrote_since_we_read_none_is_kept(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        listed: tuple[Controller, Metrics]) -> None:
    controller, _ = listed
    await create_nimbus_policy(api, namespace, "np", [rule("dnsManipulation")])
    await list_into(controller)  # no status at all: the patch would add the whole of it
    await write_status(api, namespace, "np", {"status": "Pending", "lastUpdated": stamp(3),
                                              "numberOfAdapterPolicies": 1,
                                              "adapterPolicies": ["NetworkPolicy/np-dns"]})
    mark = len(control_plane.audit_events())
    outcome = await controller.reconcile(f"{namespace}/np")
    assert not outcome.failed, outcome.errors
    assert status_writes(control_plane, namespace, mark) == [422, 200]
    assert await status_of(api, namespace, "np") == {  # the core's status.status kept
        "status": "Pending", "lastUpdated": stamp(3), "numberOfAdapterPolicies": 2,
        "adapterPolicies": ["NetworkPolicy/np-dns", "KubeArmorPolicy/np-dnsmanipulation"]}
    # with none written by anyone, ours writes status.status (the schema requires it)
    await create_nimbus_policy(api, namespace, "bare", [rule("dnsManipulation")])
    await list_into(controller)
    outcome = await controller.reconcile(f"{namespace}/bare")
    assert not outcome.failed, outcome.errors
    assert await status_of(api, namespace, "bare") == {
        "status": "Created", "numberOfAdapterPolicies": 1,
        "adapterPolicies": ["KubeArmorPolicy/bare-dnsmanipulation"]}


async def test_a_nimbus_policy_made_again_since_our_read_gets_no_status_of_the_first(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        listed: tuple[Controller, Metrics]) -> None:
    """Deleted and made again under its name (the Nimbus core does so when a binding is
    replaced) between our read and our status write: the policies we made belong to the first
    one (the garbage collector takes them), so its successor's status must not list them."""
    controller, _ = listed
    first = await create_nimbus_policy(api, namespace, "np", [rule("dnsManipulation")])
    await list_into(controller)  # no status: the patch would add the whole of it
    (await api.delete(f"{nimbus_policies(namespace)}/np")).raise_for_status()
    binding = (await api.get(f"/apis/intent.security.nimbus.com/v1alpha1/namespaces/{namespace}"
                             "/securityintentbindings/np")).json()
    second = await create_nimbus_policy(api, namespace, "np", [rule("dnsManipulation")],
                                        owner=binding)
    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    mark = len(control_plane.audit_events())
    outcome = await controller.reconcile(f"{namespace}/np")
    assert not outcome.failed and not outcome.status_written, outcome.errors
    assert status_writes(control_plane, namespace, mark) == [422]  # refused, read, let be
    assert await status_of(api, namespace, "np") == {}  # its own reconcile writes it


def status_probe(namespace: str, name: str
                 ) -> Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]:
    """A dry-run status write of NimbusPolicy `name` that the schema accepts (an orphan, say,
    which the reconciler leaves alone), to probe an admission policy or webhook with."""
    def probe(client: httpx.AsyncClient) -> Awaitable[httpx.Response]:
        return client.patch(f"{nimbus_policies(namespace)}/{name}/status",
                            params={"dryRun": "All"},
                            content=json.dumps({"status": {"status": "Created",
                                                           "numberOfAdapterPolicies": 0}}),
                            headers={"Content-Type": "application/merge-patch+json"})
    return probe


async def test_a_webhook_refusing_the_status_write_with_422_is_a_refusal_not_a_conflict(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        listed: tuple[Controller, Metrics]) -> None:
    """A webhook's 422 Invalid comes without details, as a failed `test` does: it is reported
    where the user looks, and not retried at once on a fresh read nor counted as a conflict."""
    controller, metrics = listed
    await create_nimbus_policy(api, namespace, "probe", [rule("dnsManipulation")], owner=None)
    await create_nimbus_policy(api, namespace, "np", [rule("dnsManipulation")])
    await list_into(controller)
    frozen = "status writes are frozen"
    async with webhook_denies(control_plane, namespace=namespace,
                              group="intent.security.nimbus.com",
                              resource="nimbuspolicies/status", operations=("UPDATE",),
                              status={"code": 422, "reason": "Invalid", "message": frozen},
                              probe=status_probe(namespace, "probe")):
        mark = len(control_plane.audit_events())
        outcome = await controller.reconcile(f"{namespace}/np")
        events = control_plane.audit_events()[mark:]
    assert outcome.failed and [e.status for e in outcome.errors] == [422]
    assert status_writes(control_plane, namespace, mark) == [422]  # once, not three times
    assert not [e for e in events if e["user"].get("username") == RECONCILER_USER
                and e["verb"] == "get"], "read again as if another adapter had written"
    refusals = [p for p in outcome.problems if p.kind is ProblemKind.WRITE_REFUSED]
    assert refusals and frozen in refusals[0].message
    assert metrics.registry.get_sample_value("nimbus_kubearmor_write_conflicts_total",
                                             {"resource": "nimbuspolicies/status"}) == 0


@pytest.fixture
async def not_awaiting_the_core(reconciler_kubeconfig: Path, namespace: str
                                ) -> AsyncIterator[RunningReconciler]:
    """A reconciler that writes a new NimbusPolicy's status in the reconcile that creates its
    policies, as it does when the core has written one already: without a core here."""
    running = RunningReconciler(reconciler_kubeconfig, ControllerConfig(
        namespaces=(namespace,), await_core_status=0))
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def test_policies_created_are_logged_when_the_status_write_then_fails(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        not_awaiting_the_core: RunningReconciler, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="reconciler")
    # an orphan (the reconciler leaves it alone) to probe the admission policy with
    await create_nimbus_policy(api, namespace, "probe", [rule("dnsManipulation")], owner=None)
    async with admission_denies(control_plane, namespace=namespace,
                                group="intent.security.nimbus.com",
                                resource="nimbuspolicies/status", operations=("UPDATE",),
                                probe=status_probe(namespace, "probe")):
        await create_nimbus_policy(api, namespace, "np", [rule("dnsManipulation"),
                                                          rule("unAuthorizedSaTokenAccess")])
        await eventually(lambda: has_policies(api, namespace, "np-dnsmanipulation",
                                              "np-unauthorizedsatokenaccess"),
                         what="the policies, created before the status write is refused")
        await eventually(lambda: [r for r in caplog.records
                                  if getattr(r, "nimbuspolicy", None) == f"{namespace}/np"
                                  and getattr(r, "errors", None)],
                         what="the failed reconcile's log line")
    failed = next(r for r in caplog.records if getattr(r, "nimbuspolicy", None) ==
                  f"{namespace}/np" and getattr(r, "errors", None))
    # the same line says what was done and what failed
    assert failed.levelno == logging.WARNING
    assert sorted(failed.policies_created) == ["np-dnsmanipulation",
                                               "np-unauthorizedsatokenaccess"]
    assert failed.status_written is False and "403" in failed.errors[0]
    # lifted: the retry writes the status, and says only that
    await eventually(lambda: status_of(api, namespace, "np"), what="the status")
    await eventually(lambda: [r for r in caplog.records if r.getMessage() == "reconciled"
                              and getattr(r, "nimbuspolicy", None) == f"{namespace}/np"
                              and r.status_written], what="the retry's log line")
    created = [name for r in caplog.records if getattr(r, "nimbuspolicy", None) ==
               f"{namespace}/np" for name in getattr(r, "policies_created", [])]
    assert sorted(created) == ["np-dnsmanipulation", "np-unauthorizedsatokenaccess"]  # once


async def test_what_was_written_is_logged_when_the_reconcile_then_crashes(
        api: httpx.AsyncClient, namespace: str, not_awaiting_the_core: RunningReconciler,
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in the step after the writes (here: reporting raises) loses nothing from the log."""
    caplog.set_level(logging.INFO, logger="reconciler")
    controller = not_awaiting_the_core.controller
    assert controller is not None

    async def broken(*args: Any) -> None:
        raise RuntimeError("a bug in reporting")

    monkeypatch.setattr(controller.reporter, "report", broken)
    await create_nimbus_policy(api, namespace, "np", [rule("dnsManipulation")])
    crashed = await eventually(lambda: [r for r in caplog.records
                                        if r.getMessage() == "reconcile crashed"],
                               what="the crash")
    assert crashed[0].policies_created == ["np-dnsmanipulation"]
    assert crashed[0].status_written is True and crashed[0].exc_info


def audit_time(event: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(event["requestReceivedTimestamp"])


async def test_a_new_nimbus_policys_first_status_is_left_to_the_core(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        reconciler_kubeconfig: Path) -> None:
    """The core makes a NimbusPolicy, then writes its status. Ours waits for that (a patch made
    before it, testing that there is no status, would be refused by it), and goes once the
    core's status comes on the watch: not at the end of the wait, made long here so that only
    the core's status can have set ours off. Our policies are not held back meanwhile."""
    running = RunningReconciler(reconciler_kubeconfig, ControllerConfig(
        namespaces=(namespace,), await_core_status=60))
    await running.start()
    try:
        mark = len(control_plane.audit_events())
        await create_nimbus_policy(api, namespace, "np", [rule("dnsManipulation")])
        await eventually(lambda: has_policies(api, namespace, "np-dnsmanipulation"),
                         what="the policy, made without waiting")
        controller = running.controller
        assert controller is not None
        await eventually(lambda: not controller.queue.processing and len(controller.queue) == 0
                         and controller.queue.delayed == 1,
                         what="the reconcile done, the status write left for later")
        assert status_writes(control_plane, namespace, mark) == []
        url = f"{nimbus_policies(namespace)}/np"
        obj = (await api.get(url)).json()  # the core's stamp: read, then PUT with its version
        status = obj.setdefault("status", {})
        status.update({"status": "Created", "lastUpdated": stamp(7)})
        status.setdefault("numberOfAdapterPolicies", 0)
        (await api.put(f"{url}/status", json=obj)).raise_for_status()
        wanted = {"status": "Created", "lastUpdated": stamp(7), "numberOfAdapterPolicies": 1,
                  "adapterPolicies": ["KubeArmorPolicy/np-dnsmanipulation"]}
        await eventually(lambda: _status_is(api, namespace, "np", wanted), timeout=20,
                         what="our entry added to the core's status")
        assert status_writes(control_plane, namespace, mark) == [200]  # once, never refused
    finally:
        await running.stop()


async def test_a_new_nimbus_policy_no_core_writes_to_still_gets_its_status(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        reconciler: RunningReconciler) -> None:
    """With no core at all (a NimbusPolicy made by hand), the status is ours to write, with
    status.status, once the wait for the core is over: not before, not never."""
    mark = len(control_plane.audit_events())
    await create_nimbus_policy(api, namespace, "np", [rule("dnsManipulation")])
    await eventually(lambda: _status_is(api, namespace, "np", {
        "status": "Created", "numberOfAdapterPolicies": 1,
        "adapterPolicies": ["KubeArmorPolicy/np-dnsmanipulation"]}), what="the status")
    writes = [e for e in control_plane.audit_events()[mark:]
              if e["verb"] in ("create", "patch") and e["stage"] == "ResponseComplete"
              and e.get("objectRef", {}).get("resource") in ("kubearmorpolicies",
                                                             "nimbuspolicies")]
    made = next(e for e in writes if e["user"].get("username") != RECONCILER_USER
                and e["verb"] == "create" and e["objectRef"]["resource"] == "nimbuspolicies")
    ours = [e for e in writes if e["user"].get("username") == RECONCILER_USER]
    assert [(e["verb"], e["objectRef"].get("subresource")) for e in ours] == [
        ("create", None), ("patch", "status")]
    # the wait starts when the watch brings the creation, after the creation itself
    waited = (audit_time(ours[1]) - audit_time(made)).total_seconds()
    assert waited >= reconciler.config.await_core_status - 0.01, waited  # (clock rounding)


async def _status_is(api: httpx.AsyncClient, namespace: str, name: str,
                     wanted: dict[str, Any]) -> bool:
    return await status_of(api, namespace, name) == wanted
