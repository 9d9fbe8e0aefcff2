"""Where the API server's address and this process's credentials come from: controller-runtime's
order (`config.GetConfig`), which users of Kubernetes controllers expect:

  1. --kubeconfig;
  2. $KUBECONFIG (files separated by ':'; those that do not exist are skipped, as kubectl
     skips them, but not all of them);
  3. the in-cluster configuration, when KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are
     set and the service account's token can be read (the kubelet mounts it);
  4. ~/.kube/config.

kr8s's own order differs: any kubeconfig, ~/.kube/config included, before the in-cluster one, and a
file --kubeconfig or $KUBECONFIG names that does not exist silently skipped (in a pod: the
service account taken instead). Here a file named but missing is an error that names it.

For the in-cluster configuration kr8s is given a kubeconfig made of the mounted files (server,
ca.crt, the token as read), rather than left to find the service account itself, so that which
source was taken is decided here alone and the token file is known (tokenfile.py reads it
again every minute)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

log = logging.getLogger(__name__)
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class CredentialsError(ValueError):
    """No source of credentials, or one named that cannot be used."""


@attrs.frozen
class Source:
    """Where the credentials come from: a kubeconfig (one path, or several joined by ':', as
    kr8s takes them), or the in-cluster configuration (`kubeconfig` a dict then)."""
    kubeconfig: str | dict[str, Any]
    token_file: Path | None = None  # in-cluster: the token the kubelet rotates

    @property
    def in_cluster(self) -> bool:
        return self.token_file is not None


def find_source(flag: str | None, environ: Mapping[str, str] = os.environ,
                serviceaccount: Path = SERVICE_ACCOUNT, home: Path | None = None) -> Source:
    """The first source in controller-runtime's order; CredentialsError when there is none or
    a file named cannot be found."""
    if flag:
        if not _is_file(flag):
            raise CredentialsError(f"--kubeconfig {flag}: no such file")
        return Source(flag)
    listed = environ.get("KUBECONFIG", "")
    if listed:
        existing = [path for path in listed.split(":") if path and _is_file(path)]
        if not existing:
            raise CredentialsError(f"$KUBECONFIG {listed}: none of its files exists")
        return Source(":".join(existing))
    in_cluster, why_not = _in_cluster(environ, serviceaccount)
    if in_cluster is not None:
        return in_cluster
    home_config = (home or Path.home()) / ".kube" / "config"
    if home_config.is_file():
        if why_not:
            log.info("not in a cluster", extra={"reason": why_not})
        return Source(str(home_config))
    raise CredentialsError(
        "no credentials: no --kubeconfig, no $KUBECONFIG, not in a cluster "
        f"({why_not}), no {home_config}")


def _is_file(path: str) -> bool:
    return Path(path).expanduser().is_file()


def _in_cluster(environ: Mapping[str, str], serviceaccount: Path) -> tuple[Source | None, str]:
    """client-go's rest.InClusterConfig: the Service's address from the environment, the token
    and CA the kubelet mounts. (None, why) when not in a cluster."""
    host = environ.get("KUBERNETES_SERVICE_HOST", "")
    port = environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port:
        return None, "KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set"
    token_file = serviceaccount / "token"
    try:
        token = token_file.read_text().strip()
    except (OSError, UnicodeDecodeError) as error:
        return None, f"cannot read the service account's token: {error}"
    if not token:
        return None, f"{token_file} is empty"
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    cluster: dict[str, Any] = {"server": server}
    ca = serviceaccount / "ca.crt"
    if ca.is_file():
        cluster["certificate-authority"] = str(ca)
    else:  # as client-go: the system's roots then
        log.error("no CA certificate mounted with the service account", extra={"path": str(ca)})
    kubeconfig = {
        "apiVersion": "v1", "kind": "Config", "current-context": "in-cluster",
        "clusters": [{"name": "in-cluster", "cluster": cluster}],
        "users": [{"name": "in-cluster", "user": {"token": token}}],
        "contexts": [{"name": "in-cluster",
                      "context": {"cluster": "in-cluster", "user": "in-cluster"}}]}
    return Source(kubeconfig, token_file), ""
