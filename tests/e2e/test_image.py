"""The image, built from the Dockerfile (on a base from Debian's archive: no registry here) and run
with podman exactly as config/default's Deployment runs its pod: its args, user, read-only root,
no capabilities, no privilege escalation, its limits, /tmp, the downward-API environment, and the
in-cluster configuration: KUBERNETES_SERVICE_HOST/PORT and the service account mounted as the
kubelet mounts it (a token bound to the Pod, from the TokenRequest API, for the ServiceAccount
config/rbac binds). It converges the samples, answers the probes, serves metrics and stops
cleanly on SIGTERM. (The host's network: the API server listens on 127.0.0.1; the listeners the
args name move to 127.0.0.1 and free ports.)

No --kubeconfig and no $KUBECONFIG, so the in-cluster configuration is taken: the server from
KUBERNETES_SERVICE_HOST/PORT, verified with the mounted ca.crt alone (the control plane's CA is
a throwaway one), the mounted token; the audit log shows every request made with it."""

from __future__ import annotations

import json
import os
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from packaging.utils import canonicalize_name

from tests.controlplane.launcher import LocalControlPlane, free_port, wait_for
from tests.e2e.conftest import REPO, metrics_reader_token
from tests.e2e.test_helm_chart import _apply_samples, _samples_converged, samples
from tests.e2e.test_manifests import api_path, kustomize
from tests.image.build import image_under_test
from tests.image.locked import locked_runtime_versions
from tests.image.tool import ContainerTool, ContainerToolError
from tests.kubelet import MOUNT_PATH, ServiceAccountVolume

__all__ = ["samples"]  # a fixture the test uses
Obj = dict[str, Any]
BIND_FLAGS = ("--metrics-bind-address", "--health-probe-bind-address")
CLUSTER_SCOPED = ("Namespace", "ClusterRole", "ClusterRoleBinding")


# On each container: the pid of the test process that started it. conmon, not that process, is
# its parent, so it outlives a test run that is killed; the next run removes it.
OWNER = "io.nimbus-kubearmor.e2e-owner"


@pytest.fixture(scope="module")
def podman() -> ContainerTool:
    try:
        tool = ContainerTool("podman")
    except ContainerToolError as error:
        pytest.fail(str(error))
    listed = tool.run("ps", "--all", "--filter", f"label={OWNER}", "--format", "json",
                      check=False)
    for container in json.loads(listed.stdout or "[]") if listed.returncode == 0 else []:
        try:
            os.kill(int(container["Labels"][OWNER]), 0)
        except ProcessLookupError:
            tool.run("rm", "--force", container["Id"], check=False)
    return tool


@pytest.fixture(scope="module")
def image(podman: ContainerTool) -> str:
    started = time.monotonic()
    tag = image_under_test(podman)
    print(f"image {tag}: {podman.image_size(tag) / 1e6:.0f} MB, "
          f"ready in {time.monotonic() - started:.1f}s")
    return tag


class Deployed:
    """config/default applied into a namespace of its own (its cluster-scoped names suffixed
    with it), but the Deployment: its pod template becomes one Pod, which nothing runs (there
    is no kubelet) but the token is bound to, as the kubelet's is."""

    def __init__(self, control_plane: LocalControlPlane) -> None:
        self.control_plane = control_plane
        documents = kustomize(control_plane, "config/default")
        self.deployment = next(d for d in documents if d["kind"] == "Deployment")
        namespace = next(d for d in documents if d["kind"] == "Namespace")
        self.namespace = f"system-{uuid.uuid4().hex[:6]}"
        self.template = self.deployment["spec"]["template"]
        self.container = self.template["spec"]["containers"][0]
        self.pod = f"{self.deployment['metadata']['name']}-{uuid.uuid4().hex[:5]}"
        self.objects: list[Obj] = [{**namespace, "metadata": {
            **namespace["metadata"], "name": self.namespace}}]
        for document in documents:
            if document["kind"] in ("ServiceAccount", "Role", "RoleBinding", "ClusterRole",
                                    "ClusterRoleBinding"):
                self.objects.append(self._here(document))
        self.objects.append({"apiVersion": "v1", "kind": "Pod", "metadata": {
            **self.template["metadata"], "name": self.pod, "namespace": self.namespace},
            "spec": self.template["spec"]})

    def _here(self, document: Obj) -> Obj:
        document = {**document, "metadata": {**document["metadata"]}}
        if document["kind"] in CLUSTER_SCOPED:
            document["metadata"]["name"] += f"-{self.namespace}"
        else:
            document["metadata"]["namespace"] = self.namespace
        if document["kind"] == "ClusterRoleBinding":
            document["roleRef"] = {**document["roleRef"],
                                   "name": f"{document['roleRef']['name']}-{self.namespace}"}
        for subject in document.get("subjects", []):
            subject["namespace"] = self.namespace
        return document

    def apply(self) -> None:
        with self.control_plane.client() as client:
            for document in self.objects:
                response = client.post(api_path(self.control_plane, document), json=document)
                assert response.status_code == 201, (document["kind"], response.text)

    def delete(self) -> None:
        with self.control_plane.client() as client:
            for document in reversed(self.objects):
                if document["kind"] in CLUSTER_SCOPED:
                    client.delete(f"{api_path(self.control_plane, document)}/"
                                  f"{document['metadata']['name']}")

    @property
    def service_account(self) -> str:
        return str(self.template["spec"]["serviceAccountName"])

    @property
    def run_as(self) -> tuple[int, int]:
        context = self.template["spec"]["securityContext"]
        return int(context["runAsUser"]), int(context["runAsGroup"])


@pytest.fixture
def deployed(control_plane: LocalControlPlane) -> Iterator[Deployed]:
    deployed = Deployed(control_plane)
    try:
        deployed.apply()
        yield deployed
    finally:
        deployed.delete()


class Container:
    """The Deployment's container under podman, with its pod's settings."""

    def __init__(self, podman: ContainerTool, image: str, deployed: Deployed,
                 control_plane: LocalControlPlane, volume: ServiceAccountVolume) -> None:
        self.podman = podman
        self.name = f"nimbus-kubearmor-e2e-{uuid.uuid4().hex[:8]}"
        container, pod = deployed.container, deployed.template["spec"]
        # Each listener the args name moves to 127.0.0.1 and a free port; the container port
        # it served (what the probes and the Service name) maps to that.
        self.ports: dict[int, int] = {}
        self.args = []
        for arg in container["args"]:
            flag, _, address = arg.partition("=")
            if flag in BIND_FLAGS:
                port = free_port()
                self.ports[int(address.rpartition(":")[2])] = port
                arg = f"{flag}=127.0.0.1:{port}"
            self.args.append(arg)
        self.named_ports = {p["name"]: self.ports[p["containerPort"]] for p in container["ports"]}
        security = container["securityContext"]
        assert security == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}}, "run it as the pod runs: adapt"
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        uid, gid = deployed.run_as
        (tmp,) = container["volumeMounts"]
        (tmp_volume,) = pod["volumes"]
        assert tmp_volume["name"] == tmp["name"] and "emptyDir" in tmp_volume
        limits = container["resources"]["limits"]
        self.grace = int(pod["terminationGracePeriodSeconds"])
        self.environment = {
            "POD_NAME": deployed.pod, "POD_NAMESPACE": deployed.namespace,
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(control_plane.apiserver_port)}
        assert {e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]} == {
            "metadata.name", "metadata.namespace"}
        self.flags = [
            "--name", self.name, "--label", f"{OWNER}={os.getpid()}", "--network", "host",
            "--user", f"{uid}:{gid}", "--read-only", "--read-only-tmpfs=false",
            "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
            # podman's default seccomp profile is RuntimeDefault
            "--memory", _bytes(limits["memory"]), "--cpus", _cpus(limits["cpu"]),
            "--tmpfs", f"{tmp['mountPath']}:size={_bytes(tmp_volume['emptyDir']['sizeLimit'])}",
            "--volume", f"{volume.directory}:{MOUNT_PATH}:ro",
            "--stop-timeout", str(self.grace), *podman.ulimits(),
            *(flag for key, value in self.environment.items()
              for flag in ("--env", f"{key}={value}")),
        ]
        self.image = image

    def start(self) -> None:
        self.podman.run("run", "--detach", *self.flags, self.image, *self.args)

    def logs(self) -> str:
        result = self.podman.run("logs", self.name, check=False)
        return result.stdout + result.stderr

    def running(self) -> bool:
        state = self.podman.run("inspect", "--format", "{{.State.Running}}", self.name,
                                check=False).stdout.strip()
        return state == "true"

    def get(self, port_name: str, path: str, scheme: str = "http",
            headers: dict[str, str] | None = None) -> httpx.Response:
        return httpx.get(f"{scheme}://127.0.0.1:{self.named_ports[port_name]}{path}",
                         headers=headers, timeout=5, verify=False)

    def stop(self) -> tuple[int, float]:
        """SIGTERM, as the kubelet sends it, and SIGKILL after the grace period; the exit
        status and how long it took."""
        started = time.monotonic()
        self.podman.run("stop", "--time", str(self.grace), self.name, timeout=self.grace + 30)
        took = time.monotonic() - started
        status = self.podman.run("inspect", "--format", "{{.State.ExitCode}}", self.name)
        return int(status.stdout.strip()), took

    def remove(self) -> None:
        self.podman.run("rm", "--force", self.name, check=False)


def scrape_metrics(container: Container, token: str) -> str:
    """/metrics as Prometheus would scrape it through the Service's port: over HTTPS (the
    certificate is self-signed at start: the ServiceMonitor skips verification, as kubebuilder
    scaffolds it) with a metrics-reader's token; without a token it is refused."""
    assert container.get("https-metrics", "/metrics", scheme="https").status_code == 401
    response = container.get("https-metrics", "/metrics", scheme="https",
                             headers={"Authorization": f"Bearer {token}"})
    response.raise_for_status()
    return response.text


def _cpus(quantity: str | int) -> str:
    """A Kubernetes CPU quantity (1, 500m) as podman's --cpus."""
    text = str(quantity)
    return str(int(text[:-1]) / 1000) if text.endswith("m") else text


def _bytes(quantity: str) -> str:
    """A Kubernetes quantity (192Mi, 16Mi) as podman's size (bytes)."""
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return str(int(quantity[:-len(suffix)]) * factor)
    return str(int(quantity))


def test_the_image_runs_as_the_deployment_runs_it_with_the_in_cluster_configuration(
        podman: ContainerTool, image: str, deployed: Deployed, control_plane: LocalControlPlane,
        namespace: str, samples: None, tmp_path: Path) -> None:
    token = control_plane.service_account_token(deployed.namespace, deployed.service_account,
                                                bound_pod=deployed.pod)
    volume = ServiceAccountVolume(tmp_path / "serviceaccount", token=token,
                                  ca_pem=control_plane.ca.cert_pem, namespace=deployed.namespace,
                                  run_as=deployed.run_as)
    with control_plane.client() as client:
        _apply_samples(client, namespace)
    mark = len(control_plane.audit_events())
    container = Container(podman, image, deployed, control_plane, volume)
    try:
        container.start()
        _wait_ready(container)
        with control_plane.client() as client:
            try:
                wait_for(lambda: _samples_converged(client, namespace), 60,
                         "the container to converge the samples")
            except Exception as error:
                raise AssertionError(f"{error}; its log:\n{container.logs()[-4000:]}") from error
            lease = client.get(f"/apis/coordination.k8s.io/v1/namespaces/{deployed.namespace}/"
                               "leases/nimbus-kubearmor-leader").json()
        assert lease["spec"]["holderIdentity"] == deployed.pod

        # As the pod: its uid, no capabilities, no new privileges, nothing writable but /tmp.
        status = dict(line.split(":\t", 1) for line in podman.run(
            "exec", container.name, "cat", "/proc/1/status").stdout.splitlines() if ":\t" in line)
        assert status["Uid"].split()[0] == str(deployed.run_as[0])
        assert int(status["CapEff"], 16) == 0 and status["NoNewPrivs"].strip() == "1"
        assert podman.run("exec", container.name, "touch", "/opt/x", check=False).returncode != 0

        # Exactly the versions uv.lock pins for the image's python, the project's own, and
        # nothing to install with.
        installed, environment = _installed_in(podman, container.name)
        assert "pip" not in installed and "setuptools" not in installed, sorted(installed)
        assert installed.pop("nimbus-kubearmor") == tomllib.loads(
            (REPO / "pyproject.toml").read_text())["project"]["version"]
        assert installed == locked_runtime_versions(tmp_path / "requirements.txt", environment)

        # The probes the kubelet would send, and the metrics.
        for kind in ("livenessProbe", "readinessProbe"):
            probe = deployed.container[kind]["httpGet"]
            assert container.get(probe["port"], probe["path"]).status_code == 200, kind
        metrics = scrape_metrics(container, metrics_reader_token(control_plane, namespace))
        assert 'controller_runtime_reconcile_total{controller="nimbuspolicy",result="success"}' \
            in metrics and "leader_election_master_status" in metrics

        # It authenticated with the mounted token, bound to the Pod, and nothing was refused.
        user = f"system:serviceaccount:{deployed.namespace}:{deployed.service_account}"
        ours = [e for e in control_plane.audit_events()[mark:]
                if e["user"].get("username") == user]
        assert ours and all(e["user"]["extra"]["authentication.kubernetes.io/pod-name"]
                            == [deployed.pod] for e in ours)
        refused = [(e["verb"], e["requestURI"], e["responseStatus"]["code"]) for e in ours
                   if e["responseStatus"]["code"] in (401, 403)]
        assert refused == [], refused

        code, took = container.stop()
        log = container.logs()
        assert code == 0, log[-4000:]
        assert took < container.grace, (took, log[-4000:])  # not killed
        assert "released the lease" in log
    finally:
        container.remove()


_INSTALLED = """
import importlib.metadata as m, json, os, platform, sys
print(json.dumps({
    "installed": {d.metadata["Name"]: d.version for d in m.distributions()},
    # packaging's marker environment, as pip evaluates markers in this interpreter
    "environment": {
        "implementation_name": sys.implementation.name,
        "implementation_version": platform.python_version(),
        "os_name": os.name, "platform_machine": platform.machine(),
        "platform_python_implementation": platform.python_implementation(),
        "platform_release": platform.release(), "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_full_version": platform.python_version(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "sys_platform": sys.platform}}))
"""


def _installed_in(podman: ContainerTool, container: str) -> tuple[dict[str, str], dict[str, str]]:
    """Every distribution in the container's python environment, and its marker environment."""
    found = json.loads(podman.run("exec", container, "python", "-c", _INSTALLED).stdout)
    return ({canonicalize_name(name): version for name, version in found["installed"].items()},
            found["environment"])


def _wait_ready(container: Container, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not container.running():
            raise AssertionError(f"the container exited; its log:\n{container.logs()[-4000:]}")
        try:
            if container.get("http-probes", "/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready after {timeout:.0f}s; its log:\n"
                                 f"{container.logs()[-4000:]}")
        time.sleep(0.2)
