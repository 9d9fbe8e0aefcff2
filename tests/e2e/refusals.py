"""Refusals the real API server makes on demand: a ValidatingAdmissionPolicy that denies
requests (403, like an admission webhook, a policy engine or a quota would)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator

import httpx

from tests.controlplane.launcher import LocalControlPlane, wait_for

ADMISSION = "/apis/admissionregistration.k8s.io/v1"
MESSAGE = "refused by the test's ValidatingAdmissionPolicy"


@contextlib.contextmanager
def admission_denies(control_plane: LocalControlPlane, *, namespace: str, group: str,
                     resource: str, operations: tuple[str, ...],
                     probe: Callable[[httpx.Client], httpx.Response]) -> Iterator[str]:
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
    with control_plane.client() as client:
        client.post(f"{ADMISSION}/validatingadmissionpolicies", json=policy).raise_for_status()
        client.post(f"{ADMISSION}/validatingadmissionpolicybindings", json=binding
                    ).raise_for_status()
        try:
            wait_for(lambda: probe(client).status_code == 403, 30, f"{name} to be in force")
            yield message
        finally:
            client.delete(f"{ADMISSION}/validatingadmissionpolicybindings/{name}")
            client.delete(f"{ADMISSION}/validatingadmissionpolicies/{name}")
            wait_for(lambda: probe(client).status_code != 403, 30, f"{name} to be lifted")
