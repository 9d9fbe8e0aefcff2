"""config/rbac is least privilege, proven from the audit log: config/default's ServiceAccount,
(Cluster)Roles and bindings applied as they are, two replicas run as that ServiceAccount (a
TokenRequest token, through the fault proxy) with the Deployment's own args, and made to use
everything (privilege.exercise: a Lease created, held, watched, handed over; policies adopted
from the upstream adapter, created, repaired, deleted; bad input reported as Events; status
written; watches cut; /metrics scraped by a Prometheus bound to config/rbac's metrics-reader).
Then, from the audit log: every request the ServiceAccount made was allowed, by a rule of
config/rbac; every verb of every rule bound to it was used, or privilege.KEPT says why not."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from reconciler.builder import desired_policies
from reconciler.model import to_dict
from reconciler.parse import parse_nimbus_policy
from tests.controlplane.launcher import LocalControlPlane, token_kubeconfig_yaml
from tests.e2e.nimbus import create_nimbus_policy, kubearmor_policies, rule
from tests.e2e.privilege import KEPT, all_converged, exercise, grants, privilege_problems, requests_by
from tests.e2e.test_manifests import api_path, kustomize
from tests.e2e.test_migration import as_upstream_leaves_it
from tests.faultproxy import FaultProxy
from tests.process import ReconcilerProcess

SYSTEM = "nimbus-kubearmor-system"
ACCOUNT = (SYSTEM, "nimbus-kubearmor")
USERNAME = f"system:serviceaccount:{SYSTEM}:nimbus-kubearmor"
RBAC = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
BIND_FLAGS = ("--metrics-bind-address", "--health-probe-bind-address")
Obj = dict[str, Any]


@pytest.fixture
def config_rbac(control_plane: LocalControlPlane) -> Iterator[list[Obj]]:
    """config/default's ServiceAccount, (Cluster)Roles and bindings, applied; removed after
    (the Helm chart's test installs objects of the same names)."""
    documents = [d for d in kustomize(control_plane, "config/default") if d["kind"] in RBAC]
    with control_plane.client() as client:
        client.post("/api/v1/namespaces", json={"metadata": {"name": SYSTEM}})
        for document in documents:
            url = api_path(control_plane, document)
            response = client.post(url, json=document)
            if response.status_code == 409:  # left by an interrupted run: made anew
                client.delete(f"{url}/{document['metadata']['name']}").raise_for_status()
                response = client.post(url, json=document)
            assert response.status_code == 201, response.text
    yield documents
    with control_plane.client() as client:
        for document in reversed(documents):
            client.delete(f"{api_path(control_plane, document)}/{document['metadata']['name']}")


def prometheus_token(control_plane: LocalControlPlane, namespace: str) -> str:
    """A ServiceAccount's token, bound to config/rbac's metrics-reader as the README says."""
    with control_plane.client() as client:
        client.post(f"/api/v1/namespaces/{namespace}/serviceaccounts",
                    json={"metadata": {"name": "prometheus"}}).raise_for_status()
        client.post("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", json={
            "metadata": {"generateName": "prometheus-nimbus-kubearmor-metrics-"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "nimbus-kubearmor-metrics-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "prometheus",
                          "namespace": namespace}]}).raise_for_status()
    return control_plane.service_account_token(namespace, "prometheus")


async def upstream_policies(api: httpx.AsyncClient, namespace: str, name: str,
                            rules: list[Obj]) -> None:
    """A NimbusPolicy whose policies the upstream adapter made (to be adopted: patched)."""
    np = await create_nimbus_policy(api, namespace, name, rules)
    parsed, _ = parse_nimbus_policy(np)
    assert parsed is not None
    for policy in desired_policies(parsed)[0]:
        upstream = as_upstream_leaves_it(to_dict(policy))
        (await api.post(kubearmor_policies(namespace), json=upstream)).raise_for_status()


async def test_config_rbac_grants_exactly_what_the_reconciler_uses(
        api: httpx.AsyncClient, control_plane: LocalControlPlane, namespace: str,
        config_rbac: list[Obj], tmp_path: Path) -> None:
    await create_nimbus_policy(api, namespace, "web", [rule("escapeToHost"),
                                                        rule("dnsManipulation")])
    await create_nimbus_policy(api, namespace, "bad", [rule("pkgMgrs"), rule("noSuchIntent")])
    await upstream_policies(api, namespace, "legacy", [rule("unAuthorizedSaTokenAccess")])
    (deployment,) = [d for d in kustomize(control_plane, "config/default")
                     if d["kind"] == "Deployment"]
    args = [a for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
            if not a.startswith(BIND_FLAGS)] + [f"--namespace={namespace}"]
    token = control_plane.service_account_token(*ACCOUNT)
    scrape_token = prometheus_token(control_plane, namespace)
    mark = len(control_plane.audit_events())
    with FaultProxy.for_control_plane(control_plane) as proxy:
        kubeconfig = tmp_path / "serviceaccount.kubeconfig"
        kubeconfig.write_text(token_kubeconfig_yaml(proxy.url, control_plane.ca.cert_pem,
                                                    USERNAME, token, SYSTEM))
        replicas = [ReconcilerProcess(kubeconfig, None, *args, metrics_token=scrape_token,
                                      env={"POD_NAME": f"nimbus-kubearmor-{name}",
                                           "POD_NAMESPACE": SYSTEM})
                    for name in ("a", "b")]
        with replicas[0] as a, replicas[1] as b, control_plane.client() as client:
            exercise(a, b, control_plane, namespace, SYSTEM,
                     lambda: all_converged(client, namespace), "web", proxy)

    requests = requests_by(control_plane, USERNAME, mark)
    used = Counter(str(r) for r in requests)
    print(f"{len(requests)} requests by {USERNAME}:\n" + json.dumps(used, indent=1))
    granted = grants(config_rbac, ACCOUNT)
    assert {g.role for g in granted} == {
        "ClusterRole nimbus-kubearmor", "Role nimbus-kubearmor-leader-election",
        "ClusterRole nimbus-kubearmor-metrics-auth"}  # every role of config/rbac but the reader's
    assert privilege_problems(requests, granted, KEPT) == []
