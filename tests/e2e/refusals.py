"""Refusals the real API server makes on demand: a ValidatingAdmissionPolicy that denies
requests (403, like an admission webhook, a policy engine or a quota would)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

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
