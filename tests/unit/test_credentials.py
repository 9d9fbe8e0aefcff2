"""Which source of credentials is taken (reconciler/credentials.py), in controller-runtime's order:
--kubeconfig, $KUBECONFIG, in-cluster, ~/.kube/config. (Against the real API server, with
kr8s: tests/e2e/test_credentials.py; and what is left on disk of a kubeconfig's inline key.)"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from reconciler.credentials import CredentialsError, find_source
from reconciler.inlinecredentials import written_files
from tests.kubelet import ServiceAccountVolume

REPO = Path(__file__).resolve().parents[2]
IN_CLUSTER = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}


@pytest.fixture
def volume(tmp_path: Path) -> ServiceAccountVolume:
    return ServiceAccountVolume(tmp_path / "serviceaccount", token="the-token\n", ca_pem=b"CA",
                                namespace="system")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A HOME with ~/.kube/config."""
    (tmp_path / "home" / ".kube").mkdir(parents=True)
    (tmp_path / "home" / ".kube" / "config").write_text("kind: Config\n")
    return tmp_path / "home"


def test_the_order(volume: ServiceAccountVolume, home: Path, tmp_path: Path) -> None:
    flag = tmp_path / "flag.kubeconfig"
    flag.write_text("kind: Config\n")
    environment = tmp_path / "env.kubeconfig"
    environment.write_text("kind: Config\n")
    everything = {**IN_CLUSTER, "KUBECONFIG": str(environment)}

    def source(flag: str | None, environ: dict[str, str]) -> str | dict[str, object]:
        return find_source(flag, environ, volume.directory, home).kubeconfig

    assert source(str(flag), everything) == str(flag)
    assert source(None, everything) == str(environment)
    in_cluster = find_source(None, IN_CLUSTER, volume.directory, home)
    assert in_cluster.token_file == volume.token_path
    assert source(None, {}) == str(home / ".kube" / "config")


def test_the_in_cluster_configuration_as_client_go_makes_it(volume: ServiceAccountVolume,
                                                            tmp_path: Path) -> None:
    source = find_source(None, IN_CLUSTER, volume.directory, tmp_path)
    assert source.in_cluster and source.token_file == volume.token_path
    assert isinstance(source.kubeconfig, dict)
    (cluster,) = source.kubeconfig["clusters"]
    assert cluster["cluster"] == {"server": "https://10.96.0.1:443",
                                  "certificate-authority": str(volume.directory / "ca.crt")}
    (user,) = source.kubeconfig["users"]
    assert user["user"] == {"token": "the-token"}  # trimmed, as client-go trims it
    ipv6 = find_source(None, {**IN_CLUSTER, "KUBERNETES_SERVICE_HOST": "fd00::1"},
                       volume.directory, tmp_path)
    assert isinstance(ipv6.kubeconfig, dict)
    assert ipv6.kubeconfig["clusters"][0]["cluster"]["server"] == "https://[fd00::1]:443"


def test_not_in_a_cluster_without_the_environment_or_a_readable_token(
        volume: ServiceAccountVolume, home: Path, tmp_path: Path) -> None:
    half = {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    assert find_source(None, half, volume.directory, home).kubeconfig == str(
        home / ".kube" / "config")
    assert not find_source(None, IN_CLUSTER, tmp_path / "nothing", home).in_cluster
    with pytest.raises(CredentialsError, match=r"not in a cluster.*cannot read the service "
                       r"account's token.*no .*/\.kube/config"):
        find_source(None, IN_CLUSTER, tmp_path / "nothing", tmp_path / "nobody")


def test_a_file_named_must_exist(volume: ServiceAccountVolume, home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(CredentialsError, match=f"--kubeconfig {missing}: no such file"):
        find_source(str(missing), IN_CLUSTER, volume.directory, home)
    with pytest.raises(CredentialsError, match="none of its files exists"):
        find_source(None, {**IN_CLUSTER, "KUBECONFIG": f"{missing}:{missing}2"},
                    volume.directory, home)
    one = tmp_path / "one"
    one.write_text("kind: Config\n")
    assert find_source(None, {"KUBECONFIG": f"{missing}::{one}"}, volume.directory,
                       home).kubeconfig == str(one)


def test_only_kr8s_copies_of_inline_data_are_removed(tmp_path: Path) -> None:
    """A file the kubeconfig names is never taken for one of kr8s's copies, even where kr8s
    failed before replacing it with one."""
    temporary = Path(tempfile.gettempdir())
    copy = temporary / f"{tempfile.gettempprefix()}abc123"
    own = tmp_path / "client.key"
    auth = SimpleNamespace(
        _user={"client-key-data": "…", "client-certificate": str(own),
               "client-certificate-data": "…"},
        _cluster={"certificate-authority": "/etc/ca.crt"},
        client_key_file=str(copy), client_cert_file=str(own), server_ca_file="/etc/ca.crt")
    assert written_files(auth) == [copy]
    auth._user["client-key"] = str(copy)  # named by the kubeconfig itself: kept
    assert written_files(auth) == []


def test_the_controller_without_credentials_exits_1_saying_why(tmp_path: Path) -> None:
    missing = tmp_path / "missing.kubeconfig"
    ran = subprocess.run(
        [sys.executable, "-m", "reconciler", "--kubeconfig", str(missing), "--log-format", "json",
         "--metrics-bind-address=127.0.0.1:0", "--health-probe-bind-address=127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, cwd=REPO)
    assert ran.returncode == 1, ran.stderr
    assert "Traceback" not in ran.stderr, ran.stderr
    lines = [json.loads(line) for line in ran.stderr.splitlines() if line.startswith("{")]
    (failed,) = [line for line in lines if line["msg"] == "cannot load credentials"]
    assert failed["level"] == "error"
    assert failed["error"] == f"--kubeconfig {missing}: no such file"
