"""Starts a real local control plane the way controller-runtime's envtest does: etcd,
kube-apiserver (TLS, RBAC, service accounts, an audit log) and kube-controller-manager running only
the garbage-collector and namespace controllers, every listener on 127.0.0.1 and a free port.

    with LocalControlPlane(assets) as cp:
        cp.kubeconfig       # admin (system:masters) kubeconfig
        cp.audit_events()   # every request the API server served, as JSON dicts

Teardown kills every child and removes the temporary directory, also when the test run is
interrupted; children die with their parent (PR_SET_PDEATHSIG) even when it is SIGKILLed, and
a later start removes directories such an abrupt end left behind.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import httpx
import yaml

from .assets import Assets
from .auditlog import AuditEvents, AuditLog
from .pki import CertificateAuthority, service_account_keys

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "config" / "crd" / "bases"
_WORKDIR_PREFIX = "nimbus-kubearmor-cp-"
_PR_SET_PDEATHSIG = 1


class ControlPlaneError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `condition` until it returns something truthy; raise naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = condition()
            if result:
                return result
        except Exception as error:  # the condition is "not yet" until the deadline
            last_error = error
        if time.monotonic() >= deadline:
            raise ControlPlaneError(f"timed out after {timeout:.0f}s waiting for {what}"
                                    + (f" (last error: {last_error})" if last_error else ""))
        time.sleep(interval)


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def remove_abandoned_workdirs() -> None:
    """Directories of control planes whose owning process died without tearing down."""
    for path in Path(tempfile.gettempdir()).glob(f"{_WORKDIR_PREFIX}*"):
        try:
            owner = int((path / "owner.pid").read_text())
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError):
            continue


def kubeconfig_yaml(server: str, ca_pem: bytes, user: str, cert_pem: bytes, key_pem: bytes,
                    namespace: str = "default") -> str:
    return _kubeconfig(server, ca_pem, user, namespace, {
        "client-certificate-data": _b64(cert_pem), "client-key-data": _b64(key_pem)})


def token_kubeconfig_yaml(server: str, ca_pem: bytes, user: str, token: str,
                          namespace: str = "default") -> str:
    return _kubeconfig(server, ca_pem, user, namespace, {"token": token})


def _kubeconfig(server: str, ca_pem: bytes, user: str, namespace: str,
                credentials: dict[str, str]) -> str:
    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "local",
        "clusters": [{"name": "local", "cluster": {"server": server,
                                                   "certificate-authority-data": _b64(ca_pem)}}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user,
                                                   "namespace": namespace}}],
    })


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, unverified (the API server verifies it; tests only read it)."""
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def _write_atomically(path: Path, text: str) -> None:
    """Replace `path` in one step, so a reader never sees half a file (the kubelet swaps a
    rotated service-account token the same way)."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.replace(path)


class LocalControlPlane:
    def __init__(self, assets: Assets, crd_dir: Path = CRD_DIR,
                 log: TextIO | None = None) -> None:
        self.assets = assets
        self.crd_dir = crd_dir
        self._log = log
        self.workdir = Path()
        self.ca = CertificateAuthority.create()
        self.etcd_port = self.etcd_peer_port = self.apiserver_port = self.kcm_port = 0
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.kubeconfig = Path()
        self.audit_log = Path()
        self._audit = AuditLog(self.audit_log)

    # --- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> LocalControlPlane:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    def say(self, message: str) -> None:
        if self._log is not None:
            print(f"controlplane: {message}", file=self._log, flush=True)

    def start(self) -> None:
        started = time.monotonic()
        remove_abandoned_workdirs()
        self.workdir = Path(tempfile.mkdtemp(prefix=_WORKDIR_PREFIX))
        (self.workdir / "owner.pid").write_text(str(os.getpid()))
        self._write_credentials()
        self.etcd_port, self.etcd_peer_port = free_port(), free_port()
        self.apiserver_port, self.kcm_port = free_port(), free_port()
        self.say(f"starting etcd on 127.0.0.1:{self.etcd_port}")
        self._spawn("etcd", self._etcd_args())
        wait_for(lambda: httpx.get(f"{self.etcd_url}/health", timeout=2).json()["health"] == "true",
                 30, "etcd to be healthy")
        self.start_apiserver()
        self.install_crds()
        self.say(f"starting kube-controller-manager on 127.0.0.1:{self.kcm_port}")
        self._spawn("kube-controller-manager", self._kcm_args())
        wait_for(lambda: httpx.get(f"https://127.0.0.1:{self.kcm_port}/healthz", verify=False,
                                   timeout=2).status_code == 200,
                 60, "kube-controller-manager to be healthy")
        self.startup_seconds = time.monotonic() - started
        self.say(f"ready in {self.startup_seconds:.1f}s ({self.server}, kubeconfig {self.kubeconfig})")

    def stop(self) -> None:
        # All at once: the data is thrown away, so nothing needs an orderly shutdown.
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for name in reversed(list(self.processes)):
            self._terminate(name, grace=3)
        if self.workdir != Path() and not os.environ.get("NIMBUS_CONTROLPLANE_KEEP"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def start_apiserver(self) -> None:
        self.say(f"starting kube-apiserver on {self.server}")
        self._spawn("kube-apiserver", self._apiserver_args(self.apiserver_port))
        self.wait_ready()

    def start_second_apiserver(self) -> int:
        """Another kube-apiserver on the same etcd (as in an HA control plane), with its own
        port and audit log; returns its port. Stop it with stop_apiserver("kube-apiserver-2")."""
        port = free_port()
        args = [a if not a.startswith("--audit-log-path=") else
                f"--audit-log-path={self.workdir / 'audit-2.log'}"
                for a in self._apiserver_args(port)]
        self._spawn("kube-apiserver-2", args, binary="kube-apiserver")
        wait_for(lambda: self._ready_at(port), 90, "the second kube-apiserver /readyz")
        return port

    def _ready_at(self, port: int) -> bool:
        with self.client(timeout=2, port=port) as client:
            return client.get("/readyz").status_code == 200

    def stop_apiserver(self, grace: float = 3, name: str = "kube-apiserver") -> None:
        """SIGTERM, then SIGKILL after `grace` s: it can hang ~10 s in its HTTP server's
        shutdown once clients have used it, which nothing here needs to wait for."""
        self._terminate(name, grace)

    def wait_ready(self, timeout: float = 90) -> None:
        def ready() -> bool:
            self._check_alive("kube-apiserver")
            with self.client(timeout=2) as client:
                return client.get("/readyz").status_code == 200
        wait_for(ready, timeout, "kube-apiserver /readyz")

    # --- processes ------------------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str], binary: str | None = None) -> None:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 (owned by the child)
        self.processes[name] = subprocess.Popen(
            [str(self.assets.binary(binary or name)), *args], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=self.workdir, preexec_fn=_die_with_parent,
        )
        log.close()

    def _check_alive(self, name: str) -> None:
        process = self.processes[name]
        if process.poll() is not None:
            raise ControlPlaneError(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def _terminate(self, name: str, grace: float = 10) -> None:
        process = self.processes.pop(name, None)
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    # --- configuration --------------------------------------------------------------------------

    def _write_credentials(self) -> None:
        pki = self.workdir / "pki"
        pki.mkdir()
        (pki / "ca.crt").write_bytes(self.ca.cert_pem)
        self.ca.serving().write(pki, "apiserver")
        service_account_keys().write(pki, "service-account")
        admin = self.ca.client("nimbus-admin", ("system:masters",))
        self.admin_cert, self.admin_key = admin.write(pki, "admin")
        self.audit_log = self.workdir / "audit.log"
        self._audit = AuditLog(self.audit_log)
        (self.workdir / "audit-policy.yaml").write_text(yaml.safe_dump({
            "apiVersion": "audit.k8s.io/v1", "kind": "Policy",
            "omitStages": ["RequestReceived"], "rules": [{"level": "Metadata"}],
        }))

    def _write_admin_kubeconfig(self) -> None:
        self.kubeconfig = self.workdir / "admin.kubeconfig"
        self.kubeconfig.write_text(kubeconfig_yaml(
            self.server, self.ca.cert_pem, "nimbus-admin",
            self.admin_cert.read_bytes(), self.admin_key.read_bytes()))

    def _etcd_args(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        return [
            "--name=local", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}", f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=local={peer}", "--initial-cluster-state=new",
            "--unsafe-no-fsync=true", "--log-level=warn",
        ]

    def _apiserver_args(self, port: int) -> list[str]:
        pki = self.workdir / "pki"
        if not self.kubeconfig.name:
            self._write_admin_kubeconfig()
        return [
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'service-account.crt'}",
            f"--service-account-signing-key-file={pki / 'service-account.key'}",
            "--service-cluster-ip-range=10.0.0.0/24", "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            f"--audit-policy-file={self.workdir / 'audit-policy.yaml'}",
            f"--audit-log-path={self.audit_log}", "--audit-log-mode=blocking",
            # never rotated (the default rotates at 100 MB, which `make bench` and `make soak`
            # can reach): tests read it by offset (auditlog.py)
            "--audit-log-format=json", "--audit-log-maxbackup=0", "--audit-log-maxsize=100000",
            "--v=1",
        ]

    def _kcm_args(self) -> list[str]:
        return [
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--controllers=garbage-collector-controller,namespace-controller",
            "--leader-elect=false", "--use-service-account-credentials=false",
            "--bind-address=127.0.0.1", f"--secure-port={self.kcm_port}",
            f"--cert-dir={self.workdir / 'kcm-certs'}", "--v=1",
        ]

    # --- clients and helpers --------------------------------------------------------------------

    def client(self, timeout: float = 30, port: int | None = None) -> httpx.Client:
        """A synchronous admin client, for test set-up and assertions (`port`: another
        kube-apiserver of this control plane)."""
        client = self._client(self.admin_cert, self.admin_key, timeout)
        if port is not None:
            client.base_url = httpx.URL(f"https://127.0.0.1:{port}")
        return client

    def async_client(self, timeout: float = 30) -> httpx.AsyncClient:
        """An asynchronous admin client, for tests that run the reconciler in their event loop."""
        return httpx.AsyncClient(base_url=self.server, verify=self._tls(self.admin_cert, self.admin_key),
                                 timeout=timeout)

    def _tls(self, cert: Path, key: Path) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.workdir / "pki" / "ca.crt"))
        context.load_cert_chain(str(cert), str(key))
        return context

    def _client(self, cert: Path, key: Path, timeout: float) -> httpx.Client:
        return httpx.Client(base_url=self.server, verify=self._tls(cert, key), timeout=timeout)

    def install_crds(self, timeout: float = 60) -> None:
        documents = [yaml.safe_load(p.read_text()) for p in sorted(self.crd_dir.glob("*.yaml"))]
        if not documents:
            raise ControlPlaneError(f"no CRD manifests in {self.crd_dir}")
        path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        with self.client() as client:
            for crd in documents:
                response = client.post(path, json=crd)
                if response.status_code not in (201, 409):
                    raise ControlPlaneError(f"installing {crd['metadata']['name']}: "
                                            f"{response.status_code} {response.text}")

            def established() -> bool:
                for crd in documents:
                    status = client.get(f"{path}/{crd['metadata']['name']}").json().get("status", {})
                    if not any(c["type"] == "Established" and c["status"] == "True"
                               for c in status.get("conditions", [])):
                        return False
                return True

            wait_for(established, timeout, "the CRDs to be Established")
        self.say(f"installed {len(documents)} CRDs from {self.crd_dir.relative_to(REPO)}")

    def identity_kubeconfig(self, user: str, groups: tuple[str, ...] = (),
                            namespace: str = "default", server: str | None = None) -> Path:
        """A kubeconfig that authenticates as `user` (no permissions unless RBAC grants them);
        `server`: another address for the API server."""
        pair = self.ca.client(user, groups)
        # one file per (user, server): a kubeconfig for a proxy must not replace the direct one
        via = f"-via-{server.rsplit(':', 1)[-1]}" if server else ""
        path = self.workdir / f"{user.replace(':', '_')}{via}.kubeconfig"
        path.write_text(kubeconfig_yaml(server or self.server, self.ca.cert_pem, user,
                                        pair.cert_pem, pair.key_pem, namespace))
        return path

    def client_as(self, user: str, groups: tuple[str, ...] = ()) -> httpx.Client:
        """A synchronous client authenticated as `user`, to check what RBAC lets it do."""
        stem = f"client-{user.replace(':', '_')}"
        cert, key = self.ca.client(user, groups).write(self.workdir / "pki", stem)
        return self._client(cert, key, 30)

    def grant(self, user: str, rules: list[dict[str, Any]], role: str = "") -> None:
        """Bind `user` to a ClusterRole holding exactly `rules` (`role`: one of several; a
        grant under the same `role` replaces the last)."""
        self._bind_cluster_role(f"test:{user}" + (f":{role}" if role else ""), rules,
                                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                 "name": user})

    def _bind_cluster_role(self, name: str, rules: list[dict[str, Any]],
                           subject: dict[str, str]) -> None:
        """Create or replace the ClusterRole `name` (exactly `rules`) bound to `subject`."""
        role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": name}, "rules": rules}
        binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                   "metadata": {"name": name},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                               "name": name},
                   "subjects": [subject]}
        base = "/apis/rbac.authorization.k8s.io/v1"
        with self.client() as client:
            for kind, body in (("clusterroles", role), ("clusterrolebindings", binding)):
                response = client.post(f"{base}/{kind}", json=body)
                if response.status_code == 409:
                    response = client.put(f"{base}/{kind}/{name}", json=body)
                response.raise_for_status()

    def grant_in_namespace(self, user: str, namespace: str, rules: list[dict[str, Any]]) -> None:
        """Bind `user` to a Role in `namespace` holding exactly `rules`."""
        name = f"test:{user}"
        role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": name, "namespace": namespace}, "rules": rules}
        binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": name, "namespace": namespace},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                               "name": name},
                   "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                 "name": user}]}
        base = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
        with self.client() as client:
            for kind, body in (("roles", role), ("rolebindings", binding)):
                client.post(f"{base}/{kind}", json=body).raise_for_status()

    # --- service-account identities -------------------------------------------------------------

    def service_account_kubeconfig(self, namespace: str, name: str, rules: list[dict[str, Any]],
                                   *, server: str | None = None, bound_secret: str | None = None,
                                   expiration_seconds: int = 3600) -> Path:
        """A kubeconfig that authenticates as the ServiceAccount `namespace`/`name` with a token
        from the TokenRequest API, as a pod's projected token does; the ServiceAccount (and its
        namespace) is created if missing and bound to a ClusterRole holding exactly `rules`.
        `server`: another address for the API server (a proxy in front of it); `bound_secret`:
        bind the token to that Secret (created if missing), so deleting the Secret revokes it.
        The API server caches a token's successful authentication for 10 s (not configurable):
        a token used in the last 10 s keeps working that long after its Secret is gone; one
        never used is refused at once."""
        self._ensure("/api/v1/namespaces", {"metadata": {"name": namespace}})
        self._ensure(f"/api/v1/namespaces/{namespace}/serviceaccounts", {"metadata": {"name": name}})
        self._bind_cluster_role(f"test:serviceaccount:{namespace}:{name}", rules,
                                {"kind": "ServiceAccount", "name": name, "namespace": namespace})
        token = self.service_account_token(namespace, name, bound_secret=bound_secret,
                                           expiration_seconds=expiration_seconds)
        path = self.workdir / f"serviceaccount-{namespace}-{name}.kubeconfig"
        _write_atomically(path, token_kubeconfig_yaml(
            server or self.server, self.ca.cert_pem, f"system:serviceaccount:{namespace}:{name}",
            token, namespace))
        return path

    def service_account_token(self, namespace: str, name: str, *, bound_secret: str | None = None,
                              bound_pod: str | None = None, expiration_seconds: int = 3600) -> str:
        """A new token for an existing ServiceAccount (TokenRequest API), bound to the Secret
        `bound_secret` (created if missing) when given, or to the existing Pod `bound_pod` (as
        the kubelet's token for a pod is: deleting the Pod revokes it). The API server's minimum
        lifetime is 600 s."""
        spec: dict[str, Any] = {"expirationSeconds": expiration_seconds}
        if bound_secret is not None:
            secret = self._ensure(f"/api/v1/namespaces/{namespace}/secrets",
                                  {"metadata": {"name": bound_secret}, "type": "Opaque"})
            spec["boundObjectRef"] = {"kind": "Secret", "apiVersion": "v1", "name": bound_secret,
                                      "uid": secret["metadata"]["uid"]}
        if bound_pod is not None:
            with self.client() as client:
                pod = client.get(f"/api/v1/namespaces/{namespace}/pods/{bound_pod}")
            pod.raise_for_status()
            spec["boundObjectRef"] = {"kind": "Pod", "apiVersion": "v1", "name": bound_pod,
                                      "uid": pod.json()["metadata"]["uid"]}
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        with self.client() as client:
            response = client.post(
                f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", json=request)
        if response.status_code != 201:
            raise ControlPlaneError(f"TokenRequest for {namespace}/{name}: "
                                    f"{response.status_code} {response.text}")
        return str(response.json()["status"]["token"])

    def rotate_service_account_token(self, kubeconfig: Path, *, bound_secret: str | None = None,
                                     expiration_seconds: int = 3600) -> str:
        """Write a new token for the kubeconfig's ServiceAccount into that file in place (as the
        kubelet rotates a projected token); returns it. Bound to `bound_secret`, by default to
        the Secret the old token was bound to, if any (re-created if it was deleted)."""
        config = yaml.safe_load(kubeconfig.read_text())
        claims = token_claims(config["users"][0]["user"]["token"])["kubernetes.io"]
        if bound_secret is None and "secret" in claims:
            bound_secret = claims["secret"]["name"]
        token = self.service_account_token(claims["namespace"], claims["serviceaccount"]["name"],
                                           bound_secret=bound_secret,
                                           expiration_seconds=expiration_seconds)
        config["users"][0]["user"]["token"] = token
        _write_atomically(kubeconfig, yaml.safe_dump(config))
        return token

    def _ensure(self, collection: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create the object unless it exists; returns it as stored."""
        with self.client() as client:
            response = client.post(collection, json=body)
            if response.status_code == 409:
                response = client.get(f"{collection}/{body['metadata']['name']}")
            response.raise_for_status()
            stored: dict[str, Any] = response.json()
            return stored

    def audit_events(self) -> AuditEvents:
        """Every request served so far: a sequence of the log's JSON events, each parsed when
        it is read (`audit_events()[mark:]` parses only those after `mark`)."""
        return self._audit.events()

    def etcd_compact(self) -> int:
        """Compact etcd's history up to its current revision; returns that revision."""
        key = base64.b64encode(b"\0").decode()
        revision = int(httpx.post(f"{self.etcd_url}/v3/kv/range", json={"key": key},
                                  timeout=5).json()["header"]["revision"])
        httpx.post(f"{self.etcd_url}/v3/kv/compaction",
                   json={"revision": revision, "physical": True}, timeout=30).raise_for_status()
        return revision
