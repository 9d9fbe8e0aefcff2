"""Objects as the upstream Go adapter writes them, written by hand from shared/INTENTS.md (not
produced by our code), to compare ours with. Nimbus's dns-manipulation example binds the
`dnsManipulation` intent (action Block, no description) to `app: nginx`; the Nimbus core makes the
NimbusPolicy below from it, and the upstream adapter the KubeArmorPolicy below from that."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]
DNS_BINDING = "dns-manipulation-binding"


def dns_manipulation_nimbus_policy(namespace: str, uid: str = "") -> Obj:
    metadata: Obj = {"name": DNS_BINDING, "namespace": namespace}
    if uid:
        metadata["uid"] = uid
    return {
        "apiVersion": "intent.security.nimbus.com/v1alpha1",
        "kind": "NimbusPolicy",
        "metadata": metadata,
        "spec": {
            "selector": {"matchLabels": {"app": "nginx"}},
            "rules": [{"id": "dnsManipulation", "rule": {"action": "Block"}}],
        },
    }


def dns_manipulation_upstream_policy(namespace: str, uid: str) -> Obj:
    """Upstream marks its policies with the annotation only (ours also carry the label); every
    section is present, `{}` where the intent uses none, and there is no message (the rule has no
    description)."""
    return {
        "apiVersion": "security.kubearmor.com/v1",
        "kind": "KubeArmorPolicy",
        "metadata": {
            "name": f"{DNS_BINDING}-dnsmanipulation",
            "namespace": namespace,
            "annotations": {"app.kubernetes.io/managed-by": "nimbus-kubearmor"},
            "ownerReferences": [{
                "apiVersion": "intent.security.nimbus.com/v1alpha1",
                "kind": "NimbusPolicy",
                "name": DNS_BINDING,
                "uid": uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }],
        },
        "spec": {
            "selector": {"matchLabels": {"app": "nginx"}},
            "process": {},
            "file": {"matchPaths": [{"path": "/etc/resolv.conf", "readOnly": True}]},
            "network": {},
            "capabilities": {},
            "syscalls": {},
            "action": "Block",
        },
    }
