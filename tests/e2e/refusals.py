"""Refusals the real API server makes on demand: a ValidatingAdmissionPolicy that denies
requests (403, like an admission webhook, a policy engine or a quota would), and a real
validating admission webhook that denies them with the status it is told to (the API server
passes a webhook's code, reason and message on to the client)."""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.controlplane.launcher import LocalControlPlane
from tests.waiting import eventually

ADMISSION = "/apis/admissionregistration.k8s.io/v1"
MESSAGE = "refused by the test's ValidatingAdmissionPolicy"


@contextlib.asynccontextmanager
async def admission_denies(control_plane: LocalControlPlane, *, namespace: str, group: str,
                           resource: str, operations: tuple[str, ...],
                           probe: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]
                           ) -> AsyncIterator[str]:
    """While inside, the API server refuses `operations` on `group`/`resource` in `namespace`
    with 403 Forbidden (whoever asks: admission runs after RBAC, for system:masters too).
    `probe`: a dry-run request (as admin) that the policy refuses, to wait until it is in force
    and until it is lifted (the API server takes a moment to load it). Yields the message the
    refusals carry."""
    name = f"deny-{uuid.uuid4().hex[:8]}"
    message = f"{MESSAGE} ({name})"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{
                     "apiGroups": [group], "apiVersions": ["*"], "operations": list(operations),
                     "resources": [resource]}]},
                 "validations": [{"expression": "false", "message": message,
                                  "reason": "Forbidden"}]}}
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding", "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {
                     "kubernetes.io/metadata.name": namespace}}}}}
    async def refused(client: httpx.AsyncClient, refusing: bool) -> bool:
        return ((await probe(client)).status_code == 403) == refusing

    # async, so that a reconciler running in the test's event loop goes on meanwhile
    async with control_plane.async_client() as client:
        (await client.post(f"{ADMISSION}/validatingadmissionpolicies", json=policy)
         ).raise_for_status()
        (await client.post(f"{ADMISSION}/validatingadmissionpolicybindings", json=binding)
         ).raise_for_status()
        try:
            await eventually(lambda: refused(client, True), 30, f"{name} to be in force")
            yield message
        finally:
            await client.delete(f"{ADMISSION}/validatingadmissionpolicybindings/{name}")
            await client.delete(f"{ADMISSION}/validatingadmissionpolicies/{name}")
            await eventually(lambda: refused(client, False), 30, f"{name} to be lifted")


def make_namespace(control_plane: LocalControlPlane, prefix: str = "e2e") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    with control_plane.client() as client:
        client.post("/api/v1/namespaces", json={"metadata": {"name": name}}).raise_for_status()
    return name


def ksp_probe(namespace: str) -> Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]:
    """A dry-run create of a KubeArmorPolicy in `namespace`."""
    body = {"apiVersion": "security.kubearmor.com/v1", "kind": "KubeArmorPolicy",
            "metadata": {"name": "probe"}, "spec": {"selector": {"matchLabels": {}},
                                                   "file": {"matchPaths": [{"path": "/x"}]}}}
    url = f"/apis/security.kubearmor.com/v1/namespaces/{namespace}/kubearmorpolicies"
    return lambda client: client.post(url, params={"dryRun": "All"}, json=body)


class _Denier(BaseHTTPRequestHandler):
    """Answers every AdmissionReview: not allowed, with the server's `status`."""

    server: _Webhook

    def do_POST(self) -> None:
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.reviews.append(review["request"])
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                           "response": {"uid": review["request"]["uid"], "allowed": False,
                                        "status": self.server.status}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Webhook(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, status: dict[str, Any]) -> None:
        super().__init__(("127.0.0.1", 0), _Denier)
        self.status = status
        self.reviews: list[dict[str, Any]] = []


@contextlib.asynccontextmanager
async def webhook_denies(control_plane: LocalControlPlane, *, namespace: str, group: str,
                         resource: str, operations: tuple[str, ...], status: dict[str, Any],
                         probe: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]
                         ) -> AsyncIterator[list[dict[str, Any]]]:
    """While inside, a validating admission webhook (served here over HTTPS on 127.0.0.1, its
    certificate from the control plane's CA) denies `operations` on `group`/`resource` in
    `namespace` with `status` (a metav1.Status: code, reason, message). `probe`: a dry-run
    request that the webhook refuses, to wait until it is in force and until it is lifted.
    Yields the AdmissionReview requests it received."""
    name = f"deny-{uuid.uuid4().hex[:8]}"
    server = _Webhook(status)
    with tempfile.TemporaryDirectory() as directory:
        cert, key = control_plane.ca.serving().write(Path(directory), "webhook")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    configuration = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration", "metadata": {"name": name},
        "webhooks": [{
            "name": f"{name}.nimbus-kubearmor.test",
            "clientConfig": {"url": f"https://127.0.0.1:{server.server_port}/validate",
                             "caBundle": base64.b64encode(control_plane.ca.cert_pem).decode()},
            "rules": [{"apiGroups": [group], "apiVersions": ["*"], "operations": list(operations),
                       "resources": [resource], "scope": "Namespaced"}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5}]}

    async def refused(client: httpx.AsyncClient, refusing: bool) -> bool:
        return ((await probe(client)).status_code == status["code"]) == refusing

    try:
        async with control_plane.async_client() as client:
            (await client.post(f"{ADMISSION}/validatingwebhookconfigurations",
                               json=configuration)).raise_for_status()
            try:
                await eventually(lambda: refused(client, True), 30, f"{name} to be in force")
                yield server.reviews
            finally:
                await client.delete(f"{ADMISSION}/validatingwebhookconfigurations/{name}")
                await eventually(lambda: refused(client, False), 30, f"{name} to be lifted")
    finally:
        server.shutdown()
        server.server_close()
