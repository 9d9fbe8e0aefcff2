"""config/ builds with kustomize, passes server-side dry run where its APIs exist, grants exactly
what the reconciler uses, and its ServiceMonitor scrapes the metrics Service. (The dashboard and
alerts are checked against a live reconciler by test_prometheus.py.)"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.controlplane.launcher import LocalControlPlane
from tests.e2e.conftest import RECONCILER_USER
from tests.prometheus.rules import job_patterns, rule_groups
from tests.prometheus.servicemonitor import service_monitor_problems

REPO = Path(__file__).resolve().parents[2]
SYSTEM = "nimbus-kubearmor-system"
PROMETHEUS_KINDS = {"ServiceMonitor", "PrometheusRule"}  # the Prometheus operator's CRDs


def kustomize(control_plane: LocalControlPlane, path: str) -> list[dict[str, Any]]:
    built = subprocess.run([str(control_plane.assets.binary("kubectl")), "kustomize",
                            str(REPO / path)], capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(built) if d]


def api_path(control_plane: LocalControlPlane, obj: dict[str, Any]) -> str:
    group_version = obj["apiVersion"]
    base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    with control_plane.client() as client:
        resources = client.get(base).json()["resources"]
    resource = next(r for r in resources if r["kind"] == obj["kind"] and "/" not in r["name"])
    namespace = obj["metadata"].get("namespace")
    scope = f"/namespaces/{namespace}" if resource["namespaced"] else ""
    return f"{base}{scope}/{resource['name']}"


def test_default_builds_and_passes_server_side_dry_run(control_plane: LocalControlPlane) -> None:
    documents = kustomize(control_plane, "config/default")
    kinds = sorted(d["kind"] for d in documents)
    assert kinds == sorted(["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                            "Role", "RoleBinding", "Deployment", "Service", "ServiceMonitor",
                            "PrometheusRule",
                            # secure /metrics: the reviews it makes, and the role to read it
                            "ClusterRole", "ClusterRoleBinding", "ClusterRole"])
    for document in documents:
        if document["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert document["metadata"]["namespace"] == SYSTEM, document["kind"]
    with control_plane.client() as client:
        namespace = next(d for d in documents if d["kind"] == "Namespace")
        assert client.post("/api/v1/namespaces", json=namespace).status_code in (201, 409)
        for document in documents:
            if document["kind"] in PROMETHEUS_KINDS | {"Namespace"}:
                continue
            response = client.post(api_path(control_plane, document), params={"dryRun": "All"},
                                   json=document)
            assert response.status_code == 201, (document["kind"], response.text)


def test_samples_and_crds_pass_server_side_dry_run(control_plane: LocalControlPlane) -> None:
    with control_plane.client() as client:
        assert client.post("/api/v1/namespaces", json={"metadata": {"name": "shop"}}
                           ).status_code in (201, 409)
        for path in ("config/samples", "config/crd"):
            for document in kustomize(control_plane, path):
                if document["kind"] == "CustomResourceDefinition":  # installed: dry-run an update
                    url = ("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                           + document["metadata"]["name"])
                    current = client.get(url).json()
                    document["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                    response = client.put(url, params={"dryRun": "All"}, json=document)
                    assert response.status_code == 200, response.text
                    continue
                response = client.post(api_path(control_plane, document),
                                       params={"dryRun": "All"}, json=document)
                assert response.status_code == 201, (document["kind"], response.text)
        for policy in yaml.safe_load_all((REPO / "config/samples/nimbuspolicies.yaml").read_text()):
            response = client.post(api_path(control_plane, policy), params={"dryRun": "All"},
                                   json=policy)
            assert response.status_code == 201, response.text


def test_rbac_is_least_privilege(control_plane: LocalControlPlane,
                                 reconciler_kubeconfig: Path) -> None:
    rules = [r for d in kustomize(control_plane, "config/rbac") if d["kind"] in ("ClusterRole", "Role")
             for r in d["rules"]]
    for rule in rules:
        assert "*" not in rule["verbs"] + rule.get("resources", []) + rule.get("apiGroups", []) \
            + rule.get("nonResourceURLs", []), rule
        assert not {"secrets", "configmaps", "pods"} & set(rule.get("resources", [])), rule
    verbs = {(g, r): set(rule["verbs"]) for rule in rules for g in rule.get("apiGroups", [])
             for r in rule.get("resources", [])}
    # get: only to retry a status write another adapter's got ahead of (privilege.KEPT)
    assert verbs[("intent.security.nimbus.com", "nimbuspolicies")] == {"get", "list", "watch"}
    assert verbs[("intent.security.nimbus.com", "nimbuspolicies/status")] == {"patch"}
    assert verbs[("authentication.k8s.io", "tokenreviews")] == {"create"}
    assert verbs[("authorization.k8s.io", "subjectaccessreviews")] == {"create"}
    with control_plane.client_as(RECONCILER_USER) as client:
        assert client.get("/api/v1/secrets").status_code == 403
        assert client.get("/api/v1/namespaces/default/secrets").status_code == 403
        assert client.delete("/apis/intent.security.nimbus.com/v1alpha1/namespaces/default/"
                             "nimbuspolicies/x").status_code == 403
        assert client.post("/apis/intent.security.nimbus.com/v1alpha1/namespaces/default/"
                           "nimbuspolicies", json={}).status_code == 403
        assert client.get("/apis/security.kubearmor.com/v1/kubearmorpolicies").status_code == 200


def test_deployment_is_hardened(control_plane: LocalControlPlane) -> None:
    (deployment,) = [d for d in kustomize(control_plane, "config/default")
                     if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["spec"]["replicas"] == 2 and "--leader-elect" in container["args"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False,
                                            "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]} == {
        "POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    assert container["resources"]["limits"]["memory"] and container["resources"]["requests"]["cpu"]


def test_service_monitor_scrapes_the_metrics_service(control_plane: LocalControlPlane) -> None:
    documents = kustomize(control_plane, "config/default")
    assert service_monitor_problems(documents, job_patterns(rule_groups())) == []
    (monitor,) = [d for d in documents if d["kind"] == "ServiceMonitor"]
    assert monitor["spec"]["endpoints"][0]["tlsConfig"] == {"insecureSkipVerify": True}


def test_a_mounted_metrics_certificate(control_plane: LocalControlPlane, tmp_path: Path) -> None:
    """config/'s commented patches, uncommented as its comments say: the reconciler serves the
    Secret's certificate and the ServiceMonitor verifies it with that Secret's CA."""
    config = tmp_path / "config"
    shutil.copytree(REPO / "config", config)
    for path in ("default/kustomization.yaml", "prometheus/kustomization.yaml"):
        text = (config / path).read_text()
        assert "#patches:" in text, path
        (config / path).write_text(re.sub(r"^#(patches:|[- ] )", r"\1", text, flags=re.M))
    built = subprocess.run([str(control_plane.assets.binary("kubectl")), "kustomize",
                            str(config / "default")], capture_output=True, text=True, check=True)
    documents = [d for d in yaml.safe_load_all(built.stdout) if d]
    assert service_monitor_problems(documents, job_patterns(rule_groups())) == []
    (monitor,) = [d for d in documents if d["kind"] == "ServiceMonitor"]
    tls = monitor["spec"]["endpoints"][0]["tlsConfig"]
    assert tls["insecureSkipVerify"] is False
    assert tls["serverName"] == f"nimbus-kubearmor-metrics.{SYSTEM}.svc"
    (deployment,) = [d for d in documents if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "--metrics-cert-path=/tmp/k8s-metrics-server/metrics-certs" in container["args"]
    with control_plane.client() as client:
        response = client.post(api_path(control_plane, deployment), params={"dryRun": "All"},
                               json=deployment)
        assert response.status_code == 201, response.text
