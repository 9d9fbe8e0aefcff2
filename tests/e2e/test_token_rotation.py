"""In a pod: the in-cluster configuration (no kubeconfig: the service account the kubelet
mounts) and a bound token the kubelet rotates. The token file is read again about every
minute, as client-go does, so the rotated token is in use before the old one is revoked: the API
server refuses nothing, and the watches opened with the old token go on."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry

from reconciler.app import connect
from reconciler.clock import FakeClock
from reconciler.controller import Controller, ControllerConfig
from reconciler.metrics import Metrics
from reconciler.tokenfile import REREAD_AFTER
from tests.controlplane.launcher import LocalControlPlane, token_claims
from tests.e2e.conftest import REPO, eventually
from tests.e2e.nimbus import create_nimbus_policy, has_policies, kubearmor_policies, rule
from tests.kubelet import ServiceAccountVolume

PROBE = "nimbus-kubearmor-e2e-token-probe"  # the User-Agent of the test's own requests


def credential(event: dict[str, Any]) -> str:
    """Which token a request was authenticated with (the API server audits its JTI)."""
    return str(((event["user"].get("extra") or {}).get(
        "authentication.kubernetes.io/credential-id") or [""])[0])


async def test_a_rotated_token_is_in_use_within_a_minute_so_revoking_the_old_one_refuses_nothing(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    rules = yaml.safe_load((REPO / "config" / "rbac" / "role.yaml").read_text())["rules"]
    account = f"pod-{uuid.uuid4().hex[:6]}"
    control_plane.service_account_kubeconfig(namespace, account, rules)  # the account, bound
    first = control_plane.service_account_token(namespace, account, bound_secret=f"{account}-1")
    volume = ServiceAccountVolume(tmp_path / "serviceaccount", token=first, namespace=namespace,
                                  ca_pem=control_plane.ca.cert_pem)
    # As in a pod: the Service's address in the environment, no kubeconfig anywhere.
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(control_plane.apiserver_port))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    clock = FakeClock()
    client = await connect(None, serviceaccount=str(volume.directory), clock=clock)
    assert client.token_file is not None and client.token_file.path == volume.token_path
    metrics = Metrics(CollectorRegistry())
    controller = Controller(client, metrics, ControllerConfig(namespaces=(namespace,)))
    running = asyncio.create_task(controller.run())
    try:
        await asyncio.wait_for(controller.wait_synced(), 30)
        mark = len(control_plane.audit_events())
        await create_nimbus_policy(api, namespace, "first", [rule("dnsManipulation")])
        await eventually(lambda: has_policies(api, namespace, "first-dnsmanipulation"),
                         what="convergence")

        # The kubelet rotates the token; until a minute has passed the one read is used.
        second = control_plane.service_account_token(namespace, account,
                                                     bound_secret=f"{account}-2")
        volume.rotate(second)
        await create_nimbus_policy(api, namespace, "rotated", [rule("dnsManipulation")])
        await eventually(lambda: has_policies(api, namespace, "rotated-dnsmanipulation"),
                         what="convergence")
        clock.advance(REREAD_AFTER)

        # The old token is revoked (its Secret deleted) and refused once the API server's 10 s
        # cache of its last success has passed.
        with control_plane.client() as admin:
            admin.delete(f"/api/v1/namespaces/{namespace}/secrets/{account}-1").raise_for_status()
        async with httpx.AsyncClient(base_url=control_plane.server, verify=False,
                                     headers={"User-Agent": PROBE}) as probe:
            await eventually(lambda: _refused(probe, first), timeout=20, interval=0.5,
                             what="the old token to be refused")

        await create_nimbus_policy(api, namespace, "revoked", [rule("dnsManipulation")])
        await eventually(lambda: has_policies(api, namespace, "revoked-dnsmanipulation"),
                         what="convergence with the old token revoked")
        (await api.delete(f"{kubearmor_policies(namespace)}/first-dnsmanipulation")
         ).raise_for_status()
        await eventually(lambda: has_policies(api, namespace, "first-dnsmanipulation"),
                         what="a repair, seen through a watch opened with the old token")

        events = control_plane.audit_events()[mark:]
        refused = [(e["verb"], e["requestURI"]) for e in events
                   if e["responseStatus"].get("code") == 401 and e.get("userAgent") != PROBE]
        assert refused == []
        user = f"system:serviceaccount:{namespace}:{account}"
        creates = [(e["objectRef"]["name"], credential(e)) for e in events
                   if e["user"].get("username") == user and e["verb"] == "create"
                   and e["stage"] == "ResponseComplete"
                   and e["objectRef"].get("resource") == "kubearmorpolicies"]
        jti = {token: f"JTI={token_claims(token)['jti']}" for token in (first, second)}
        assert creates == [("first-dnsmanipulation", jti[first]),
                           ("rotated-dnsmanipulation", jti[first]),  # not yet a minute
                           ("revoked-dnsmanipulation", jti[second]),
                           ("first-dnsmanipulation", jti[second])], creates  # the repair
        restarts = sum(s.value for f in metrics.registry.collect()
                       if f.name == "nimbus_kubearmor_watch_restarts" for s in f.samples
                       if s.name.endswith("_total"))
        assert restarts == 0
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running


async def _refused(client: httpx.AsyncClient, token: str) -> bool:
    response = await client.get("/api/v1/namespaces/default",
                                headers={"Authorization": f"Bearer {token}"})
    return response.status_code == 401
