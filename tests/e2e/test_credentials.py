"""Where the credentials come from and what is left of them on disk, with the real API server.

The order is controller-runtime's (`config.GetConfig`): --kubeconfig, $KUBECONFIG, the in-cluster
configuration, ~/.kube/config; a file named by --kubeconfig or $KUBECONFIG that does not exist is
an error, never a reason to take another source. And kr8s's copies of a kubeconfig's inline key,
certificate and CA (temporary files it never removes) are gone once it has read them."""

from __future__ import annotations

import gc
import os
import tempfile
import uuid
from pathlib import Path

import pytest

from reconciler.app import connect
from reconciler.credentials import CredentialsError
from reconciler.kube import NIMBUS_POLICIES, ApiError
from tests.controlplane.launcher import LocalControlPlane, free_port, token_kubeconfig_yaml
from tests.e2e.conftest import RECONCILER_USER, rbac_rules
from tests.faultproxy import FaultProxy, Rule, Status
from tests.kubelet import ServiceAccountVolume


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process's temporary directory (where kr8s writes), empty and the test's own."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def written(directory: Path) -> list[str]:
    """The files in `directory` named as tempfile names them (kr8s's; not the fault proxy's
    directory)."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(tempfile.gettempprefix()))


async def test_no_copy_of_the_kubeconfigs_key_stays_on_disk(
        control_plane: LocalControlPlane, reconciler_kubeconfig: Path, namespace: str,
        scratch: Path) -> None:
    with FaultProxy.for_control_plane(control_plane, as_user=RECONCILER_USER) as proxy:
        # client-key-data, client-certificate-data, certificate-authority-data
        kubeconfig = control_plane.identity_kubeconfig(RECONCILER_USER, server=proxy.url)
        # (a LIST answered 429 "storage is (re)initializing", with its Retry-After, after an
        # earlier test compacted etcd under the API server's watch cache, is asked again)
        client = await connect(str(kubeconfig), throttled_retries=5)
        assert written(scratch) == []
        # A 401: the kubeconfig is read again (kr8s writes its copies again), the request
        # tried once more, with the HTTP client made at the start.
        refused = proxy.add(Rule(Status(401), kind="list", path="/nimbuspolicies", times=1))
        assert (await client.list(NIMBUS_POLICIES, namespace))["items"] == []
        assert refused.hits == 1
        assert written(scratch) == []
    # A try at connecting that fails (nothing listens there) leaves nothing either; nor one
    # the API server refuses (kr8s's own /version check re-read the kubeconfig three times).
    unreachable = control_plane.identity_kubeconfig(
        RECONCILER_USER, server=f"https://127.0.0.1:{free_port()}")
    with pytest.raises(Exception, match=r"(?i)connect"):
        await connect(str(unreachable))
    assert written(scratch) == []
    refused = scratch.parent / "refused.kubeconfig"
    refused.write_text(token_kubeconfig_yaml(control_plane.server, control_plane.ca.cert_pem,
                                             "nobody", "not-a-token"))
    with pytest.raises(ApiError, match="401"):
        await connect(str(refused))
    assert written(scratch) == []


@pytest.fixture
def in_a_pod(control_plane: LocalControlPlane, namespace: str, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> ServiceAccountVolume:
    """A pod's environment: KUBERNETES_SERVICE_HOST/PORT, a ServiceAccount's token mounted as
    the kubelet mounts it, no $KUBECONFIG, and a HOME of the test's own (empty)."""
    account = f"pod-{uuid.uuid4().hex[:6]}"
    control_plane.service_account_kubeconfig(namespace, account, rbac_rules("role"))
    volume = ServiceAccountVolume(tmp_path / "serviceaccount",
                                  token=control_plane.service_account_token(namespace, account),
                                  ca_pem=control_plane.ca.cert_pem, namespace=namespace)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(control_plane.apiserver_port))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return volume


def unreachable_kubeconfig(control_plane: LocalControlPlane, path: Path) -> Path:
    """A kubeconfig that would work but for its server, where nothing listens."""
    made = control_plane.identity_kubeconfig(RECONCILER_USER,
                                             server=f"https://127.0.0.1:{free_port()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(made.read_text())
    return path


async def test_in_a_pod_the_service_account_comes_before_a_kubeconfig_in_home(
        control_plane: LocalControlPlane, in_a_pod: ServiceAccountVolume, tmp_path: Path,
        namespace: str) -> None:
    unreachable_kubeconfig(control_plane, tmp_path / "home" / ".kube" / "config")
    client = await connect(None, serviceaccount=str(in_a_pod.directory))
    assert client.token_file is not None and client.token_file.path == in_a_pod.token_path
    assert (await client.list(NIMBUS_POLICIES, namespace))["items"] == []


async def test_kubeconfig_in_the_environment_comes_before_the_service_account(
        control_plane: LocalControlPlane, in_a_pod: ServiceAccountVolume, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, reconciler_kubeconfig: Path, namespace: str) -> None:
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'absent'}:{reconciler_kubeconfig}")
    client = await connect(None, serviceaccount=str(in_a_pod.directory))
    assert client.token_file is None
    assert (await client.list(NIMBUS_POLICIES, namespace))["items"] == []


async def test_a_kubeconfig_named_but_missing_is_an_error_not_another_source(
        in_a_pod: ServiceAccountVolume, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "missing.kubeconfig"
    with pytest.raises(CredentialsError, match=f"--kubeconfig {missing}: no such file"):
        await connect(str(missing), serviceaccount=str(in_a_pod.directory))
    monkeypatch.setenv("KUBECONFIG", f"{missing}:{tmp_path / 'also-missing'}")
    with pytest.raises(CredentialsError, match=r"\$KUBECONFIG .*: none of its files exists"):
        await connect(None, serviceaccount=str(in_a_pod.directory))


async def test_tries_at_connecting_that_fail_leave_no_connection_open(
        control_plane: LocalControlPlane, tmp_path: Path) -> None:
    """The Manager tries again every few seconds while the API server refuses the credentials:
    each try's HTTP client is closed, not left to the garbage collector with its connection."""
    refused = tmp_path / "refused.kubeconfig"
    refused.write_text(token_kubeconfig_yaml(control_plane.server, control_plane.ca.cert_pem,
                                             "nobody", "not-a-token"))

    def open_files() -> int:
        return len(os.listdir("/proc/self/fd"))

    gc.collect()  # what earlier tests left to the collector goes now, not during the count
    gc.disable()  # and what these tries leave stays to be counted
    try:
        before = open_files()
        for _ in range(10):
            with pytest.raises(ApiError, match="401"):
                await connect(str(refused))
        assert open_files() == before
    finally:
        gc.enable()
