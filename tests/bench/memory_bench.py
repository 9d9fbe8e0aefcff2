"""What the caches cost, per object, measured with tracemalloc (no control plane): the objects
are what the API server returns for the benchmark's NimbusPolicies and their 5 policies each
(managedFields included), put through the reflectors' transforms into the stores, and the
per-NimbusPolicy memo of the desired state. The baseline is the full JSON of the same objects
(what a cache of whole objects would hold).
"""

from __future__ import annotations

import gc
import json
import sys
import tracemalloc
import uuid
from collections.abc import Callable
from typing import Any

from reconciler.builder import desired_policies
from reconciler.cached import CachedNimbusPolicy, CachedPolicy
from reconciler.controller import controller_index
from reconciler.model import to_dict
from reconciler.parse import parse_nimbus_policy
from reconciler.plan import build_desired
from reconciler.store import Store

RULES = ("swDeploymentTools", "dnsManipulation", "escapeToHost")
STAMP = "2026-11-27T12:00:00Z"


def nimbus_policy_json(i: int) -> dict[str, Any]:
    name = f"np-{i:05d}"
    return {
        "apiVersion": "intent.security.nimbus.com/v1alpha1", "kind": "NimbusPolicy",
        "metadata": {
            "name": name, "namespace": "bench", "uid": str(uuid.uuid4()), "generation": 1,
            "resourceVersion": str(100_000 + i), "creationTimestamp": STAMP,
            "ownerReferences": [{"apiVersion": "intent.security.nimbus.com/v1alpha1",
                                 "kind": "SecurityIntentBinding", "name": "bench",
                                 "uid": "3f0b7a52-7a4e-4a39-8c39-2f1f4c0b9a11", "controller": True}],
            "managedFields": [{"manager": "nimbus", "operation": "Update", "time": STAMP,
                               "apiVersion": "intent.security.nimbus.com/v1alpha1",
                               "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {
                                   ".": {}, "f:rules": {}, "f:selector": {
                                       ".": {}, "f:matchLabels": {".": {}, "f:app": {}}}}}}]},
        "spec": {"selector": {"matchLabels": {"app": name}},
                 "rules": [{"id": r, "rule": {"action": "Block"}} for r in RULES]},
        "status": {"status": "Created", "numberOfAdapterPolicies": 5, "lastUpdated": STAMP,
                   "adapterPolicies": []}}


def objects(count: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    nimbus_policies, policies = [], []
    for i in range(count):
        np = nimbus_policy_json(i)
        parsed, _ = parse_nimbus_policy(np)
        assert parsed is not None
        built, _ = desired_policies(parsed)
        np["status"]["adapterPolicies"] = [f"KubeArmorPolicy/{p.name}" for p in built]
        nimbus_policies.append(np)
        for policy in built:
            obj = to_dict(policy)
            obj["metadata"] |= {
                "uid": str(uuid.uuid4()), "resourceVersion": str(200_000 + len(policies)),
                "generation": 1, "creationTimestamp": STAMP,
                "managedFields": [{"manager": "nimbus-kubearmor", "operation": "Update",
                                   "apiVersion": "security.kubearmor.com/v1", "time": STAMP,
                                   "fieldsType": "FieldsV1",
                                   "fieldsV1": {"f:metadata": {"f:labels": {}}, "f:spec": {}}}]}
            policies.append(obj)
    return nimbus_policies, policies


def allocated(build: Callable[[], Any]) -> tuple[float, Any]:
    """Bytes `build()`'s result keeps allocated (tracemalloc), and the result."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    kept = build()
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    return float(sum(s.size_diff for s in after.compare_to(before, "filename"))), kept


def breakdown(policy: CachedPolicy) -> dict[str, float]:
    """What one cached policy's own allocations are for."""
    return {"the object (12 fields)": sys.getsizeof(policy), "name": sys.getsizeof(policy.name),
            "uid": sys.getsizeof(policy.uid),
            "resourceVersion": sys.getsizeof(policy.resource_version),
            "spec digest": sys.getsizeof(policy.spec_digest),
            "store key": sys.getsizeof(policy.key)}


def deep_size_of_json(obj: Any) -> float:
    size, _ = allocated(lambda: json.loads(json.dumps(obj)))
    return size


def run(quick: bool = False) -> dict[str, float]:
    count = 200 if quick else 2000
    nimbus_policies, policies = objects(count)

    def policy_store() -> Store[CachedPolicy]:
        store: Store[CachedPolicy] = Store(index=controller_index)
        for obj in policies:
            store.upsert(CachedPolicy.from_json(obj))
        return store

    def nimbus_policy_store() -> Store[CachedNimbusPolicy]:
        store: Store[CachedNimbusPolicy] = Store()
        for obj in nimbus_policies:
            store.upsert(CachedNimbusPolicy.from_json(obj))
        return store

    policy_bytes, _ = allocated(policy_store)
    nimbus_bytes, nimbus_store = allocated(nimbus_policy_store)
    memo_bytes, _ = allocated(lambda: {key: build_desired(nimbus_store.get(key))[0]
                                       for key in nimbus_store.list_keys()})
    per_policy = policy_bytes / len(policies)
    parts = breakdown(CachedPolicy.from_json(policies[0]))
    parts["store and index entries, shared owner references"] = per_policy - sum(parts.values())
    print("   a cached policy's bytes: " + ", ".join(f"{k} {v:.0f}" for k, v in parts.items()))
    whole_policy = deep_size_of_json(policies) / len(policies)
    whole_nimbus = deep_size_of_json(nimbus_policies) / len(nimbus_policies)
    return {
        "bytes_per_cached_policy": policy_bytes / len(policies),
        "bytes_per_cached_policy_as_whole_json": whole_policy,
        "bytes_per_cached_nimbus_policy": nimbus_bytes / len(nimbus_policies),
        "bytes_per_cached_nimbus_policy_as_whole_json": whole_nimbus,
        "bytes_per_desired_memo": memo_bytes / len(nimbus_policies),
    }


if __name__ == "__main__":
    for name, value in run().items():
        print(f"{name:<50} {value:>10,.0f}")
