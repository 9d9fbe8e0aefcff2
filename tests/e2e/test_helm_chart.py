"""The Helm chart (config/helm/nimbus-kubearmor), with helm v3 built from the Go module proxy
(tests/tools/helm.py): it lints and its values schema refuses bad values; its defaults are
config/ (every object compared whole, but for labels and image); what it renders passes
server-side dry run; installed into the local control plane, its ServiceAccount (a token from the
TokenRequest API) is all two replicas of the reconciler, started with the installed Deployment's
own args, need to converge the samples, hand the Lease over and serve secure /metrics to a
token bound to its metrics-reader, cluster-wide (a ClusterRole) and with `namespaces` set (Roles
in those namespaces only), and the audit log shows that they used every rule it grants
(tests/e2e/privilege.py); and `helm uninstall` removes every object it created."""

from __future__ import annotations

import copy
import os
import ssl
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from reconciler.builder import desired_policies
from reconciler.model import to_dict
from reconciler.parse import parse_nimbus_policy
from tests.controlplane.launcher import (
    LocalControlPlane,
    token_kubeconfig_yaml,
    wait_for,
)
from tests.e2e.nimbus import GROUP, kubearmor_policies, nimbus_policies
from tests.e2e.privilege import KEPT, exercise, grants, privilege_problems, requests_by
from tests.e2e.test_manifests import api_path, kustomize
from tests.process import ReconcilerProcess
from tests.prometheus.rules import job_patterns, rule_groups
from tests.prometheus.servicemonitor import service_monitor_problems
from tests.tools import helm as helm_tool

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "config" / "helm" / "nimbus-kubearmor"
SAMPLES = REPO / "config" / "samples"
RELEASE = "nimbus-kubearmor"
SYSTEM = "nimbus-kubearmor-system"
INSTANCE = "app.kubernetes.io/instance"
# The Prometheus operator's kinds: their CRDs are not on the local control plane, so the API
# server cannot dry-run them; they are compared with config/prometheus/ instead.
PROMETHEUS_KINDS = {"ServiceMonitor", "PrometheusRule"}
BIND_FLAGS = ("--metrics-bind-address", "--health-probe-bind-address")
Obj = dict[str, Any]


def every_toggle(namespaces: list[str]) -> Obj:
    return {
        "image": {"repository": "registry.example/nimbus/reconciler", "tag": "1.2.3",
                  "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "pull-secret"}],
        "replicas": 3,
        "leaderElection": {"enabled": True},
        "namespaces": namespaces,
        "workers": 8,
        "logLevel": "debug",
        "logFormat": "text",
        "metricsPort": 9090,
        "probePort": 9091,
        "metricsSecure": True,
        "metricsCertSecret": "metrics-cert",
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                      "limits": {"cpu": "2", "memory": "512Mi"}},
        "serviceAccount": {"create": True, "annotations": {"example.com/team": "security"}},
        "serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prom"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "prom"}},
        "podAnnotations": {"example.com/owner": "security"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "security",
                         "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [{
                "key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
        "extraArgs": ["--resync-period=5m"],
    }


class Helm:
    """The helm binary, with its own empty home and the control plane's admin kubeconfig."""

    def __init__(self, binary: Path, kubeconfig: Path, home: Path) -> None:
        self.binary = binary
        self.home = home
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig),
                    **{f"HELM_{kind}_HOME": str(home / kind.lower())
                       for kind in ("CACHE", "CONFIG", "DATA")}}

    def __call__(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(self.binary), *map(str, args)], capture_output=True,
                                text=True, env=self.env, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"helm {' '.join(map(str, args))}: {result.stderr}")
        return result

    def values_file(self, values: Obj) -> Path:
        path = self.home / f"values-{uuid.uuid4().hex[:8]}.yaml"
        path.write_text(yaml.safe_dump(values))
        return path

    def template(self, values: Obj, namespace: str = SYSTEM) -> list[Obj]:
        out = self("template", RELEASE, CHART, "-n", namespace, "-f",
                   self.values_file(values)).stdout
        return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def helm(control_plane: LocalControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(helm_tool.build(log=sys.stderr), control_plane.kubeconfig,
                tmp_path_factory.mktemp("helm"))


def by_kind(documents: list[Obj]) -> dict[tuple[str, str, str], Obj]:
    return {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d
            for d in documents}


def only(documents: list[Obj], kind: str) -> Obj:
    (found,) = [d for d in documents if d["kind"] == kind]
    return found


def only_named(documents: list[Obj], kind: str, name: str) -> Obj:
    (found,) = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


# --- lint and values -----------------------------------------------------------------------------

def test_lint_and_the_values_schema(helm: Helm) -> None:
    for values in ({}, every_toggle(["team-a", "team-b"])):
        linted = helm("lint", "--strict", CHART, "-f", helm.values_file(values))
        assert "1 chart(s) linted, 0 chart(s) failed" in linted.stdout, linted.stdout
    for bad, field in ((["--set", "logFormat=xml"], "logFormat"),
                       (["--set", "replica=3"], "replica"),  # a typo, not silently ignored
                       (["--set", "namespaces={Not_A_Namespace}"], "namespaces"),
                       (["--set", "extraArgs={resync-period=5m}"], "extraArgs"),
                       # the Role names the Lease and its namespace; the reviews' ClusterRole
                       # follows metricsSecure: as extra flags they would be refused (403)
                       (["--set", "extraArgs={--leader-election-id=mine}"], "extraArgs"),
                       (["--set", "extraArgs={--leader-election-namespace=other}"], "extraArgs"),
                       (["--set", "extraArgs={--metrics-secure=false}"], "extraArgs"),
                       (["--set", "serviceAccount.create=false"], "serviceAccount.name"),
                       # two replicas reconciling at once
                       (["--set", "replicas=2", "--set", "leaderElection.enabled=false"],
                        "replicas"),
                       (["--set", "metricsSecure=false", "--set", "metricsCertSecret=certs"],
                        "metricsCertSecret"),
                       (["--set", "metricsCertSecret=Not_A_Secret"], "metricsCertSecret")):
        refused = helm("template", RELEASE, CHART, *bad, check=False)
        assert refused.returncode != 0 and field in refused.stderr, (bad, refused.stderr)
    for good in (["--set", "replicas=1", "--set", "leaderElection.enabled=false"],
                 ["--set", "replicas=0", "--set", "leaderElection.enabled=false"],
                 ["--set", "extraArgs={--resync-period=5m,--leader-elect-lease-duration=30s}"]):
        helm("template", RELEASE, CHART, *good)


# --- one source of truth with config/ ------------------------------------------------------------

def _without_instance_label(value: Any) -> Any:
    """The chart's selectors also match the release (app.kubernetes.io/instance), so that two
    releases never select each other's pods; config/'s select by name only."""
    if isinstance(value, dict):
        return {k: _without_instance_label(v) for k, v in value.items() if k != INSTANCE}
    if isinstance(value, list):
        return [_without_instance_label(v) for v in value]
    return value


def _comparable(obj: Obj) -> Obj:
    """The object less what legitimately differs: labels (helm's and the release's; config/'s
    must be among them, checked apart) and the image reference (a value)."""
    obj = _without_instance_label(copy.deepcopy(obj))
    obj["metadata"].pop("labels", None)
    template = obj.get("spec", {}).get("template")
    if template is not None:
        template["metadata"].pop("labels", None)
        for container in template["spec"]["containers"]:
            container["image"] = container["image"].rpartition(":")[0]
            container.pop("imagePullPolicy", None)
    return obj


def test_chart_defaults_are_config(helm: Helm, control_plane: LocalControlPlane) -> None:
    """RBAC rules, pod and container security contexts, probes, args, resources, env, ports,
    volumes, the Service and the Prometheus objects: every field of every object equal."""
    chart = by_kind(helm.template({"serviceMonitor": {"enabled": True},
                                   "prometheusRule": {"enabled": True}}))
    config = {key: obj for key, obj in by_kind(kustomize(control_plane, "config/default")).items()
              if key[0] != "Namespace"}  # `helm install --create-namespace` makes it
    assert sorted(chart) == sorted(config)
    for key, config_obj in config.items():
        chart_labels = chart[key]["metadata"]["labels"]
        assert config_obj["metadata"]["labels"].items() <= chart_labels.items(), key
        assert _comparable(chart[key]) == _comparable(config_obj), key
    deployment = config[("Deployment", SYSTEM, RELEASE)]
    chart_deployment = chart[("Deployment", SYSTEM, RELEASE)]
    assert deployment["spec"]["template"]["metadata"]["labels"].items() <= \
        chart_deployment["spec"]["template"]["metadata"]["labels"].items()
    (container,) = chart_deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"].rpartition(":")[0] == \
        deployment["spec"]["template"]["spec"]["containers"][0]["image"].rpartition(":")[0]

    # With `namespaces` set: config/'s rules in a Role in each, and nothing cluster-wide but
    # the reviews of secure /metrics and the role to read it (config/'s too).
    tenants = helm.template({"namespaces": ["team-a", "team-b"]})
    metrics_roles = {f"{RELEASE}-metrics-auth", f"{RELEASE}-metrics-reader"}
    assert {d["metadata"]["name"] for d in tenants if d["kind"] == "ClusterRole"} == metrics_roles
    for role in metrics_roles:
        assert only_named(tenants, "ClusterRole", role)["rules"] == \
            config[("ClusterRole", "", role)]["rules"]
    assert [d["roleRef"]["name"] for d in tenants if d["kind"] == "ClusterRoleBinding"] == \
        [f"{RELEASE}-metrics-auth"]
    cluster_rules = config[("ClusterRole", "", RELEASE)]["rules"]
    leader_rules = config[("Role", SYSTEM, f"{RELEASE}-leader-election")]["rules"]
    roles = {d["metadata"]["namespace"]: d["rules"] for d in tenants if d["kind"] == "Role"
             and d["metadata"]["name"] == RELEASE}
    assert roles == {"team-a": cluster_rules, "team-b": cluster_rules}
    assert [d["rules"] for d in tenants if d["kind"] == "Role"
            and d["metadata"]["name"] == f"{RELEASE}-leader-election"] == [leader_rules]
    bindings = [d for d in tenants if d["kind"] == "RoleBinding"]
    assert {(b["metadata"]["namespace"], b["roleRef"]["name"]) for b in bindings} == {
        ("team-a", RELEASE), ("team-b", RELEASE), (SYSTEM, f"{RELEASE}-leader-election")}
    assert all(b["subjects"] == [{"kind": "ServiceAccount", "name": RELEASE, "namespace": SYSTEM}]
               for b in bindings + [d for d in tenants if d["kind"] == "ClusterRoleBinding"])
    (container,) = only(tenants, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["args"][-2:] == ["--namespace=team-a", "--namespace=team-b"]


def test_plain_http_metrics(helm: Helm) -> None:
    """metricsSecure=false: what the reconciler served before, and nothing of secure /metrics."""
    documents = helm.template({"metricsSecure": False, "metricsPort": 8080,
                               "serviceMonitor": {"enabled": True}})
    assert "ClusterRole" in {d["kind"] for d in documents}  # the reconciler's own rules
    assert not [d for d in documents if "metrics" in d["metadata"]["name"]
                and d["kind"].startswith("ClusterRole")]
    (container,) = only(documents, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["args"][1:3] == ["--metrics-bind-address=:8080", "--metrics-secure=false"]
    assert container["ports"][0] == {"name": "http-metrics", "containerPort": 8080}
    assert only(documents, "ServiceMonitor")["spec"]["endpoints"] == [
        {"port": "http-metrics", "path": "/metrics", "interval": "30s"}]
    assert service_monitor_problems(documents, job_patterns(rule_groups())) == []


# --- server-side dry run -------------------------------------------------------------------------

def _create_namespace(client: httpx.Client, name: str) -> None:
    response = client.post("/api/v1/namespaces", json={"metadata": {"name": name}})
    assert response.status_code in (201, 409), response.text


@pytest.mark.parametrize("toggles", ["defaults", "every toggle"])
def test_rendered_objects_pass_server_side_dry_run(helm: Helm, control_plane: LocalControlPlane,
                                                   toggles: str) -> None:
    tenants = [f"tenant-{uuid.uuid4().hex[:6]}" for _ in range(2)]
    values = {} if toggles == "defaults" else every_toggle(tenants)
    documents = helm.template(values)
    with control_plane.client() as client:
        for name in (SYSTEM, *tenants):
            _create_namespace(client, name)
        for document in documents:
            if document["kind"] in PROMETHEUS_KINDS:
                continue
            response = client.post(api_path(control_plane, document), params={"dryRun": "All"},
                                   json=document)
            assert response.status_code == 201, (document["kind"], response.text)
        for name in tenants:
            client.delete(f"/api/v1/namespaces/{name}")
    kinds = {d["kind"] for d in documents}
    if toggles == "defaults":
        assert not kinds & PROMETHEUS_KINDS
        return
    # Every value lands where it should.
    assert kinds & PROMETHEUS_KINDS == PROMETHEUS_KINDS
    assert {d["metadata"]["name"] for d in documents if d["kind"] == "ClusterRole"} == {
        f"{RELEASE}-metrics-auth", f"{RELEASE}-metrics-reader"}  # and none of its rules
    deployment = only(documents, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert deployment["spec"]["replicas"] == 3
    assert container["image"] == "registry.example/nimbus/reconciler:1.2.3"
    assert container["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == values["imagePullSecrets"]
    assert container["args"] == [
        "--leader-elect", "--metrics-bind-address=:9090",
        "--metrics-cert-path=/tmp/k8s-metrics-server/metrics-certs",
        "--health-probe-bind-address=:9091",
        "--workers=8", "--log-level=debug", "--log-format=text",
        *(f"--namespace={t}" for t in tenants), "--resync-period=5m"]
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [
        ("https-metrics", 9090), ("http-probes", 9091)]
    assert {"name": "metrics-certs", "secret": {"secretName": "metrics-cert", "optional": False}} \
        in pod["volumes"]
    assert {"name": "metrics-certs", "mountPath": "/tmp/k8s-metrics-server/metrics-certs",
            "readOnly": True} in container["volumeMounts"]
    assert container["resources"] == values["resources"]
    assert deployment["spec"]["template"]["metadata"]["annotations"] == {
        "kubectl.kubernetes.io/default-container": "manager", **values["podAnnotations"]}
    for field in ("nodeSelector", "tolerations", "affinity"):
        assert pod[field] == values[field], field
    assert only(documents, "ServiceAccount")["metadata"]["annotations"] == \
        values["serviceAccount"]["annotations"]
    service = only(documents, "Service")
    assert service["spec"]["ports"] == [{"name": "https-metrics", "port": 9090,
                                         "targetPort": "https-metrics"}]
    # What the API server could not check: the ServiceMonitor scrapes that Service's port, where
    # the pods serve /metrics, under a job the alerts select.
    monitor = only(documents, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert service_monitor_problems(documents, job_patterns(rule_groups())) == []
    assert monitor["spec"]["endpoints"] == [{
        "port": "https-metrics", "path": "/metrics", "interval": "15s", "scheme": "https",
        "bearerTokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token",
        "tlsConfig": {"insecureSkipVerify": False, "ca": {"secret": {
            "name": "metrics-cert", "key": "ca.crt"}},
            "serverName": f"{RELEASE}-metrics.{SYSTEM}.svc"}}]
    rule = only(documents, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prom"
    config_rule = yaml.safe_load((REPO / "config/prometheus/rules.yaml").read_text())
    assert rule["spec"] == config_rule["spec"]


# --- install, run as the chart's ServiceAccount, uninstall ---------------------------------------

@pytest.fixture
def samples(control_plane: LocalControlPlane) -> Iterator[None]:
    """config/samples' SecurityIntents (cluster-scoped), removed afterwards: config/'s tests
    dry-run creating them."""
    intents = [d for d in yaml.safe_load_all((SAMPLES / "securityintents.yaml").read_text()) if d]
    created = []
    with control_plane.client() as client:
        for intent in intents:
            response = client.post(f"{GROUP}/securityintents", json=intent)
            assert response.status_code in (201, 409), response.text
            if response.status_code == 201:
                created.append(intent["metadata"]["name"])
    yield
    with control_plane.client() as client:
        for name in created:
            client.delete(f"{GROUP}/securityintents/{name}")


def _apply_samples(client: httpx.Client, namespace: str) -> None:
    """config/samples' bindings and NimbusPolicies in `namespace`, the NimbusPolicies owned by
    their bindings as the Nimbus core makes them."""
    load = lambda name: [d for d in yaml.safe_load_all((SAMPLES / name).read_text()) if d]  # noqa: E731
    bindings = {}
    for binding in load("securityintentbinding.yaml"):
        binding["metadata"]["namespace"] = namespace
        response = client.post(f"{GROUP}/namespaces/{namespace}/securityintentbindings",
                               json=binding)
        response.raise_for_status()
        bindings[binding["metadata"]["name"]] = response.json()
    for policy in load("nimbuspolicies.yaml"):
        policy["metadata"]["namespace"] = namespace
        owner = bindings[policy["metadata"]["name"]]
        policy["metadata"]["ownerReferences"] = [{
            "apiVersion": owner["apiVersion"], "kind": owner["kind"],
            "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}]
        client.post(nimbus_policies(namespace), json=policy).raise_for_status()


def _samples_converged(client: httpx.Client, namespace: str) -> bool:
    """Every sample NimbusPolicy has exactly its policies, as built, listed in its status, and
    the bad rule was reported as an Event."""
    kubearmor = {p["metadata"]["name"]: p
                 for p in client.get(kubearmor_policies(namespace)).json()["items"]}
    wanted: set[str] = set()
    for item in client.get(nimbus_policies(namespace)).json()["items"]:
        parsed, _ = parse_nimbus_policy(item)
        assert parsed is not None
        policies, _ = desired_policies(parsed)
        wanted |= {p.name for p in policies}
        if any(p.name not in kubearmor or kubearmor[p.name]["spec"] != to_dict(p)["spec"]
               for p in policies):
            return False
        if (item.get("status") or {}).get("adapterPolicies") != \
                [f"KubeArmorPolicy/{p.name}" for p in policies]:
            return False
    events = client.get(f"/api/v1/namespaces/{namespace}/events").json()["items"]
    reported = any(e["involvedObject"]["name"] == "payments" and e["reason"].endswith(
        "UnknownIntent") for e in events)
    return len(wanted) == 6 and set(kubearmor) == wanted and reported


@pytest.fixture
def release_namespace(request: pytest.FixtureRequest, control_plane: LocalControlPlane
                      ) -> Iterator[str]:
    """The cluster-wide release goes where the README installs it; a tenant's into a namespace
    of its own, removed afterwards (nimbus-kubearmor-system stays: config/'s tests use it)."""
    if request.param == "cluster-wide":
        yield SYSTEM
        return
    name = f"tenant-{uuid.uuid4().hex[:6]}"
    yield name
    with control_plane.client() as client:
        client.delete(f"/api/v1/namespaces/{name}")


@pytest.mark.parametrize(("shape", "release_namespace"),
                         [("cluster-wide", "cluster-wide"), ("namespaced", "namespaced")],
                         indirect=["release_namespace"])
def test_install_converge_as_its_service_account_and_uninstall(
        helm: Helm, control_plane: LocalControlPlane, namespace: str, release_namespace: str,
        shape: str, tmp_path: Path, samples: None) -> None:
    values = {} if shape == "cluster-wide" else {"namespaces": [namespace]}
    notes = helm("install", RELEASE, CHART, "-n", release_namespace, "--create-namespace",
                 "-f", helm.values_file(values)).stdout
    installed = True
    print(notes)
    # NOTES.txt says what it watches, and how to see it work, with this release's names.
    assert ("every namespace (a ClusterRole)" if shape == "cluster-wide" else
            f"the namespaces {namespace} only (Roles there, no ClusterRole of its rules)") in notes
    for command in (f"kubectl -n {release_namespace} rollout status deployment/{RELEASE}",
                    f"port-forward service/{RELEASE}-metrics 8443",
                    f"--clusterrole={RELEASE}-metrics-reader"):
        assert command in notes, notes
    try:
        manifest = [d for d in yaml.safe_load_all(
            helm("get", "manifest", RELEASE, "-n", release_namespace).stdout) if d]
        created = {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])
                   for d in manifest}
        rbac = {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
        assert {k for k, _, _ in created} == {"ServiceAccount", "Deployment", "Service"} | rbac
        if shape == "namespaced":  # Roles where it watches and where its Lease is, nowhere else
            assert {(k, ns) for k, ns, _ in created if k in ("Role", "RoleBinding")} == {
                (k, ns) for k in ("Role", "RoleBinding") for ns in (namespace, release_namespace)}
            assert {name for k, _, name in created if k == "ClusterRole"} == {
                f"{RELEASE}-metrics-auth", f"{RELEASE}-metrics-reader"}
        with control_plane.client() as client:
            for document in manifest:
                response = client.get(f"{api_path(control_plane, document)}/"
                                      f"{document['metadata']['name']}")
                assert response.status_code == 200, (document["kind"], response.text)
            deployment = client.get(f"/apis/apps/v1/namespaces/{release_namespace}/deployments/"
                                    f"{RELEASE}").json()
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]

        # As the kubelet would mount it: a token from the TokenRequest API, nothing else granted.
        account = pod["serviceAccountName"]
        username = f"system:serviceaccount:{release_namespace}:{account}"
        token = control_plane.service_account_token(release_namespace, account)
        kubeconfig = tmp_path / "serviceaccount.kubeconfig"
        kubeconfig.write_text(token_kubeconfig_yaml(
            control_plane.server, control_plane.ca.cert_pem, username, token, release_namespace))
        _check_what_the_token_may_do(control_plane, token, namespace, shape)
        scrape_token = _metrics_reader_token(control_plane, namespace)
        with control_plane.client() as client:
            _apply_samples(client, namespace)
        # Two replicas with the installed Deployment's own args (less where to listen: 127.0.0.1
        # in tests), its ServiceAccount, and what each pod would get from the downward API.
        args = [a for a in container["args"] if not a.startswith(BIND_FLAGS)]
        mark = len(control_plane.audit_events())
        replicas = [ReconcilerProcess(kubeconfig, None, *args, metrics_token=scrape_token,
                                      env={"POD_NAME": f"{RELEASE}-{uuid.uuid4().hex[:5]}",
                                           "POD_NAMESPACE": release_namespace})
                    for _ in range(2)]
        with replicas[0] as a, replicas[1] as b, control_plane.client() as client:
            exercise(a, b, control_plane, namespace, release_namespace,
                     lambda: _samples_converged(client, namespace), "web")
        requests = requests_by(control_plane, username, mark)
        print(f"{len(requests)} requests by {username}")
        assert privilege_problems(requests, grants(manifest, (release_namespace, account)),
                                  KEPT) == []

        helm("uninstall", RELEASE, "-n", release_namespace)
        installed = False
        with control_plane.client() as client:
            def all_gone() -> bool:
                return all(client.get(f"{api_path(control_plane, d)}/{d['metadata']['name']}"
                                      ).status_code == 404 for d in manifest)
            wait_for(all_gone, 30, "every object of the release to be deleted")
            releases = client.get(f"/api/v1/namespaces/{release_namespace}/secrets",
                                  params={"labelSelector": f"owner=helm,name={RELEASE}"}).json()
            assert releases["items"] == [], "helm's release record is left behind"
    finally:
        if installed:
            helm("uninstall", RELEASE, "-n", release_namespace, check=False)


def _metrics_reader_token(control_plane: LocalControlPlane, namespace: str) -> str:
    """A token of a ServiceAccount bound to the release's metrics-reader, as NOTES.txt says."""
    with control_plane.client() as client:
        client.post(f"/api/v1/namespaces/{namespace}/serviceaccounts",
                    json={"metadata": {"name": "metrics-reader"}}).raise_for_status()
        client.post("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", json={
            "metadata": {"generateName": f"{RELEASE}-metrics-reader-"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": f"{RELEASE}-metrics-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "metrics-reader",
                          "namespace": namespace}]}).raise_for_status()
    return control_plane.service_account_token(namespace, "metrics-reader")


def _check_what_the_token_may_do(control_plane: LocalControlPlane, token: str, namespace: str,
                                 shape: str) -> None:
    cluster_wide = 200 if shape == "cluster-wide" else 403
    with httpx.Client(base_url=control_plane.server, headers={"Authorization": f"Bearer {token}"},
                      verify=ssl.create_default_context(cafile=control_plane.workdir / "pki" / "ca.crt"),
                      timeout=30) as client:
        assert client.get(f"{GROUP}/nimbuspolicies").status_code == cluster_wide
        assert client.get("/apis/security.kubearmor.com/v1/kubearmorpolicies").status_code \
            == cluster_wide
        assert client.get(nimbus_policies(namespace)).status_code == 200
        assert client.get(nimbus_policies("default")).status_code == cluster_wide
        assert client.get(f"/api/v1/namespaces/{namespace}/secrets").status_code == 403
        assert client.delete(f"{nimbus_policies(namespace)}/web").status_code == 403
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                  "spec": {"token": "not-a-token"}}  # secure /metrics asks these, in both shapes
        assert client.post("/apis/authentication.k8s.io/v1/tokenreviews",
                           json=review).status_code == 201
