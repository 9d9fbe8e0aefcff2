"""One adapter for many tenants, as the README suggests: the Helm chart with `namespaces` set to
200 namespaces gives a Role in each and no ClusterRole (so no cluster-wide watch is permitted),
and the Deployment's args name each namespace with `--namespace`. The reconciler, as the chart's
ServiceAccount with those args, keeps 400 watches open (two per namespace, a connection each):
it must be ready within a deadline, reconcile a change in the last namespace as in the first,
and stop on SIGTERM with every watch open. It starts with a soft limit of 256 open files, as
a container runtime may give it (containerd 2: 1024): the 400 connections need more."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.controlplane.launcher import LocalControlPlane, token_kubeconfig_yaml
from tests.e2e.nimbus import create_nimbus_policy, has_policies, rule
from tests.e2e.test_helm_chart import BIND_FLAGS, RELEASE, Helm
from tests.process import ReconcilerProcess
from tests.tools import helm as helm_tool
from tests.waiting import eventually

Obj = dict[str, Any]
READY_WITHIN = 90.0  # seconds; about 10-20 here, on a loaded 2-core machine


RBAC = "/apis/rbac.authorization.k8s.io/v1"
PATHS = {"ServiceAccount": "/api/v1/namespaces/{}/serviceaccounts",
         "Role": RBAC + "/namespaces/{}/roles", "RoleBinding": RBAC + "/namespaces/{}/rolebindings"}


@pytest.fixture(scope="module")
def helm(control_plane: LocalControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Helm:
    return Helm(helm_tool.build(log=sys.stderr), control_plane.kubeconfig,
                tmp_path_factory.mktemp("helm"))


@pytest.fixture
def tenant_release(helm: Helm, control_plane: LocalControlPlane, many_namespaces: list[str]
                   ) -> Iterator[tuple[str, Obj]]:
    """The chart with `namespaces` = the 200, rendered into a namespace of its own, and its
    ServiceAccount and RBAC (a Role and a RoleBinding in each of the 200, and for the Lease)
    created 16 at a time (what `helm install` makes one by one: about 10 s more here); the
    release's namespace and the rendered Deployment."""
    release_namespace = f"tenant-{uuid.uuid4().hex[:6]}"
    documents = helm.template({"namespaces": many_namespaces}, release_namespace)
    kinds = {d["kind"] for d in documents}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}, kinds  # nothing cluster-wide
    rbac = [d for d in documents if d["kind"] in PATHS]
    (deployment,) = (d for d in documents if d["kind"] == "Deployment")
    with control_plane.client() as client, ThreadPoolExecutor(16) as pool:
        client.post("/api/v1/namespaces", json={"metadata": {"name": release_namespace}}
                    ).raise_for_status()

        def create(obj: Obj) -> None:
            path = PATHS[obj["kind"]].format(obj["metadata"]["namespace"])
            client.post(path, json=obj).raise_for_status()

        def delete(obj: Obj) -> None:
            path = PATHS[obj["kind"]].format(obj["metadata"]["namespace"])
            client.delete(f"{path}/{obj['metadata']['name']}")

        list(pool.map(create, rbac))
        try:
            yield release_namespace, deployment
        finally:
            list(pool.map(delete, rbac))
            client.delete(f"/api/v1/namespaces/{release_namespace}")


def connections(pid: int, port: int) -> int:
    """Established TCP connections of process `pid` to `port`."""
    out = subprocess.run(["ss", "-tnpH", "state", "established", f"( dport = :{port} )"],
                         capture_output=True, text=True, check=False).stdout
    return sum(1 for line in out.splitlines() if f"pid={pid}," in line)


async def test_200_namespaces_under_the_charts_roles(
        api: httpx.AsyncClient, control_plane: LocalControlPlane, many_namespaces: list[str],
        tenant_release: tuple[str, Obj], tmp_path: Path) -> None:
    release_namespace, deployment = tenant_release
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = [a for a in container["args"] if not a.startswith(BIND_FLAGS)]
    assert sum(a.startswith("--namespace=") for a in args) == 200 and "--leader-elect" in args
    account = pod["serviceAccountName"]
    kubeconfig = tmp_path / "serviceaccount.kubeconfig"
    kubeconfig.write_text(token_kubeconfig_yaml(
        control_plane.server, control_plane.ca.cert_pem,
        f"system:serviceaccount:{release_namespace}:{account}",
        control_plane.service_account_token(release_namespace, account), release_namespace))
    first, last = many_namespaces[0], many_namespaces[-1]
    name = f"t-{uuid.uuid4().hex[:6]}"  # the namespaces are the session's
    with ReconcilerProcess(kubeconfig, None, *args, open_files=256,
                           env={"POD_NAME": f"{RELEASE}-many", "POD_NAMESPACE": release_namespace}
                           ) as reconciler:
        started = time.monotonic()
        reconciler.start()
        try:
            # leading, every cache listed and every watch open (a replica is also ready while
            # it stands by, before it leads)
            await eventually(lambda: "caches synced" in reconciler.log_text() and
                             asyncio.to_thread(reconciler.ready), READY_WITHIN,
                             "ready, leading and watching 200 namespaces", interval=0.2)
        except AssertionError as error:
            raise AssertionError(f"{error}; its log:\n{reconciler.log_text()[-3000:]}") from error
        ready = time.monotonic() - started
        open_connections = connections(reconciler.pid, int(control_plane.server.rsplit(":", 1)[1]))

        # a change in the first and in the last namespace, at the same moment
        async def reconciled(namespace: str) -> float:
            created = time.monotonic()
            await create_nimbus_policy(api, namespace, name, [rule("dnsManipulation")])
            await eventually(lambda: has_policies(api, namespace, f"{name}-dnsmanipulation"), 30,
                             f"the NimbusPolicy in {namespace} reconciled", interval=0.01)
            return time.monotonic() - created

        try:
            in_first, in_last = await asyncio.gather(reconciled(first), reconciled(last))
        except AssertionError as error:
            raise AssertionError(f"{error}; its log:\n{reconciler.log_text()[-3000:]}") from error
        assert reconciler.running(), reconciler.log_text()[-3000:]

        stopping = time.monotonic()
        assert reconciler.stop(signal.SIGTERM, timeout=15) == 0, reconciler.log_text()[-3000:]
        stopped = time.monotonic() - stopping
        assert "released the lease" in reconciler.log_text()
    print(f"200 namespaces: ready in {ready:.1f}s with {open_connections} connections to the API "
          f"server; a change reconciled in {in_first * 1000:.0f} ms in the first namespace, "
          f"{in_last * 1000:.0f} ms in the last; stopped in {stopped:.1f}s")
    assert open_connections >= 400  # a watch each, none waiting for a connection
