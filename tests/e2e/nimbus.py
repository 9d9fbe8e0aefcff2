"""Test helpers that play the Nimbus core's part: a SecurityIntentBinding, and the NimbusPolicy
it produces (same name and namespace, the binding as controller owner)."""

from __future__ import annotations

from typing import Any

import httpx

GROUP = "/apis/intent.security.nimbus.com/v1alpha1"
KSP_GROUP = "/apis/security.kubearmor.com/v1"


def nimbus_policies(namespace: str) -> str:
    return f"{GROUP}/namespaces/{namespace}/nimbuspolicies"


def kubearmor_policies(namespace: str) -> str:
    return f"{KSP_GROUP}/namespaces/{namespace}/kubearmorpolicies"


def rule(intent: str, action: str = "Block", **params: list[str]) -> dict[str, Any]:
    return {"id": intent, "rule": {"action": action, "params": params}}


async def create_binding(client: httpx.AsyncClient, namespace: str, name: str,
                   intents: list[str]) -> dict[str, Any]:
    body = {"apiVersion": "intent.security.nimbus.com/v1alpha1", "kind": "SecurityIntentBinding",
            "metadata": {"name": name},
            "spec": {"intents": [{"name": i} for i in intents],
                     "selector": {"workloadSelector": {"matchLabels": {"app": name}}}}}
    response = await client.post(f"{GROUP}/namespaces/{namespace}/securityintentbindings",
                                 json=body)
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


async def create_nimbus_policy(client: httpx.AsyncClient, namespace: str, name: str,
                         rules: list[dict[str, Any]], selector: dict[str, str] | None = None,
                         owner: dict[str, Any] | str | None = "binding") -> dict[str, Any]:
    """owner="binding" creates the binding first, as the Nimbus core does; None makes an orphan."""
    if owner == "binding":
        owner = await create_binding(client, namespace, name, [r["id"] for r in rules])
    metadata: dict[str, Any] = {"name": name}
    if isinstance(owner, dict):
        metadata["ownerReferences"] = [{
            "apiVersion": owner["apiVersion"], "kind": owner["kind"],
            "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}]
    body = {"apiVersion": "intent.security.nimbus.com/v1alpha1", "kind": "NimbusPolicy",
            "metadata": metadata,
            "spec": {"selector": {"matchLabels": selector if selector is not None
                                  else {"app": name}}, "rules": rules}}
    response = await client.post(nimbus_policies(namespace), json=body)
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


async def policies(client: httpx.AsyncClient, namespace: str) -> dict[str, dict[str, Any]]:
    """Every KubeArmorPolicy in `namespace`, by name."""
    response = await client.get(kubearmor_policies(namespace))
    response.raise_for_status()
    return {p["metadata"]["name"]: p for p in response.json()["items"]}


async def policy_names(client: httpx.AsyncClient, namespace: str) -> set[str]:
    return set(await policies(client, namespace))


async def has_policies(client: httpx.AsyncClient, namespace: str, *names: str) -> bool:
    return set(names) <= await policy_names(client, namespace)
