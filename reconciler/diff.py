"""Pure comparisons between what a NimbusPolicy requires and what the cluster holds: which
policies to create, patch or delete, the patch that repairs a drifted one, and the status."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from .model import MANAGED_BY_KEY, MANAGED_BY_VALUE, NIMBUS_GROUP, KubeArmorPolicy, to_dict

Obj = dict[str, Any]
BINDING_KINDS = frozenset({"SecurityIntentBinding", "ClusterSecurityIntentBinding"})
OUR_STATUS_PREFIX = "KubeArmorPolicy/"


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


def controller_of(obj: Obj) -> Obj | None:
    return next((ref for ref in obj.get("metadata", {}).get("ownerReferences") or []
                 if ref.get("controller")), None)


def owner_key(obj: Obj) -> str | None:
    """"namespace/name" of the NimbusPolicy controlling `obj`, from its ownerReference."""
    ref = controller_of(obj)
    if ref is None or ref.get("kind") != "NimbusPolicy" or \
            _group(str(ref.get("apiVersion", ""))) != NIMBUS_GROUP:
        return None
    return f"{obj['metadata'].get('namespace', '')}/{ref.get('name')}"


def is_orphan(nimbus_policy: Obj) -> bool:
    """The Nimbus core makes every NimbusPolicy for a (Cluster)SecurityIntentBinding and
    makes the binding its controller; any other NimbusPolicy is not ours to act on."""
    ref = controller_of(nimbus_policy)
    return ref is None or ref.get("kind") not in BINDING_KINDS or \
        _group(str(ref.get("apiVersion", ""))) != NIMBUS_GROUP


def needs_reconcile(old: Obj | None, new: Obj | None) -> bool:
    """Whether a NimbusPolicy change can change the desired state: not a status-only write
    (ours included), which leaves metadata.generation alone."""
    if old is None or new is None:
        return True
    before, after = old.get("metadata", {}), new.get("metadata", {})
    return any(before.get(field) != after.get(field) for field in
               ("uid", "generation", "ownerReferences", "deletionTimestamp"))


@attrs.frozen
class PolicyUpdate:
    desired: KubeArmorPolicy
    actual: Obj
    fields: tuple[str, ...]  # what drifted: spec, labels, annotations, owner


@attrs.frozen
class PolicyConflict:
    desired: KubeArmorPolicy
    holder: str  # who controls the object that has the name, for the error message
    transient: bool  # the previous incarnation of this NimbusPolicy: the GC will remove it


@attrs.frozen
class PolicyDiff:
    create: tuple[KubeArmorPolicy, ...] = ()
    update: tuple[PolicyUpdate, ...] = ()
    delete: tuple[Obj, ...] = ()
    unchanged: tuple[str, ...] = ()
    conflicts: tuple[PolicyConflict, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.create or self.update or self.delete)


@attrs.frozen
class Fingerprint:
    """What drift is judged against, small enough to keep for every desired policy: a digest
    of its spec and its controller reference (labels and annotations are the same for all)."""

    spec_digest: bytes
    owner: Obj


def spec_digest(spec: Any) -> bytes:
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(canonical.encode(), digest_size=16).digest()


# A cached KubeArmorPolicy keeps its spec only as this digest: drift is all a spec is read for,
# and 25 000 specs of 36 paths each would be most of the process's memory.
SPEC_DIGEST = "nimbus-kubearmor.spec-digest"


def keep_spec_digest(policy: Obj) -> Obj:
    """The store transform for KubeArmorPolicies: the spec replaced by its digest."""
    if "spec" not in policy:
        return policy
    kept = {k: v for k, v in policy.items() if k != "spec"}
    kept[SPEC_DIGEST] = spec_digest(policy["spec"])
    return kept


def fingerprint(policy: KubeArmorPolicy) -> Fingerprint:
    rendered = to_dict(policy)
    return Fingerprint(spec_digest(rendered["spec"]), rendered["metadata"]["ownerReferences"][0])


def drifted_fields(wanted: Fingerprint, actual: Obj) -> tuple[str, ...]:
    metadata = actual.get("metadata", {})
    fields = []
    digest = actual[SPEC_DIGEST] if SPEC_DIGEST in actual else spec_digest(actual.get("spec"))
    if digest != wanted.spec_digest:
        fields.append("spec")
    if (metadata.get("labels") or {}).get(MANAGED_BY_KEY) != MANAGED_BY_VALUE:
        fields.append("labels")
    if (metadata.get("annotations") or {}).get(MANAGED_BY_KEY) != MANAGED_BY_VALUE:
        fields.append("annotations")
    if controller_of(actual) != wanted.owner:
        fields.append("owner")
    return tuple(fields)


def diff_policies(desired: Sequence[KubeArmorPolicy], owned: Sequence[Obj],
                  existing: Callable[[str], Obj | None],
                  fingerprints: Mapping[str, Fingerprint] | None = None) -> PolicyDiff:
    """`owned`: the policies whose controller is this NimbusPolicy (this incarnation);
    `existing(name)`: any policy of that name in the namespace, owned or not; `fingerprints`:
    those of the desired policies by name, when the caller has them already."""
    remaining = {obj["metadata"]["name"]: obj for obj in owned}
    create, update, unchanged, conflicts = [], [], [], []
    for policy in desired:
        actual = remaining.pop(policy.name, None) or existing(policy.name)
        if actual is None:
            create.append(policy)
            continue
        wanted = fingerprints[policy.name] if fingerprints is not None else fingerprint(policy)
        ours = wanted.owner
        holder = controller_of(actual)
        if holder is not None and holder != ours and not _same_owner(holder, ours):
            transient = holder.get("kind") == ours["kind"] and holder.get("name") == ours["name"]
            conflicts.append(PolicyConflict(policy, f"{holder.get('kind')}/{holder.get('name')}",
                                            transient))
            continue
        if holder is None and (actual["metadata"].get("labels") or {}).get(MANAGED_BY_KEY) \
                != MANAGED_BY_VALUE:
            conflicts.append(PolicyConflict(policy, "nobody (not managed by nimbus-kubearmor)",
                                            False))
            continue
        fields = drifted_fields(wanted, actual)
        if fields:
            update.append(PolicyUpdate(policy, actual, fields))
        else:
            unchanged.append(policy.name)
    return PolicyDiff(tuple(create), tuple(update), tuple(remaining.values()), tuple(unchanged),
                      tuple(conflicts))


def _same_owner(ref: Obj, ours: Obj) -> bool:
    """The same owner with the reference written differently (e.g. blockOwnerDeletion edited):
    drift to repair, not a conflict."""
    return all(ref.get(k) == ours[k] for k in ("kind", "name", "uid")) and \
        _group(str(ref.get("apiVersion", ""))) == _group(ours["apiVersion"])


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def repair_patch(update: PolicyUpdate) -> list[Obj]:
    """A JSON patch that makes only our fields right again. Carrying the resourceVersion we
    saw makes the API server refuse it (409) if the object changed since."""
    wanted = to_dict(update.desired)
    metadata = update.actual["metadata"]
    ops: list[Obj] = [{"op": "replace", "path": "/metadata/resourceVersion",
                       "value": metadata["resourceVersion"]}]
    if "spec" in update.fields:
        ops.append({"op": "add", "path": "/spec", "value": wanted["spec"]})
    for field in ("labels", "annotations"):
        if field in update.fields:
            if isinstance(metadata.get(field), dict):
                ops.append({"op": "add", "path": f"/metadata/{field}/{_escape(MANAGED_BY_KEY)}",
                            "value": MANAGED_BY_VALUE})
            else:
                ops.append({"op": "add", "path": f"/metadata/{field}",
                            "value": {MANAGED_BY_KEY: MANAGED_BY_VALUE}})
    if "owner" in update.fields:
        others = [ref for ref in metadata.get("ownerReferences") or []
                  if not ref.get("controller")]
        ops.append({"op": "add", "path": "/metadata/ownerReferences",
                    "value": wanted["metadata"]["ownerReferences"] + others})
    return ops


def status_patch(nimbus_policy: Obj, policy_names: Sequence[str],
                 now: dt.datetime | None = None) -> Obj | None:
    """The merge patch for the NimbusPolicy's /status, or None when it is already right.
    Other adapters' entries (NetworkPolicy/..., ...) keep their place; ours are made exactly
    `policy_names`, and numberOfAdapterPolicies is the length of the list."""
    status = nimbus_policy.get("status") or {}
    current = [str(e) for e in status.get("adapterPolicies") or []]
    wanted = {OUR_STATUS_PREFIX + name for name in policy_names}
    merged = [e for e in current if not e.startswith(OUR_STATUS_PREFIX) or e in wanted]
    merged += [OUR_STATUS_PREFIX + n for n in policy_names if OUR_STATUS_PREFIX + n not in current]
    if merged == current and status.get("numberOfAdapterPolicies") == len(merged) \
            and status.get("status"):
        return None
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    patch: Obj = {"adapterPolicies": merged, "numberOfAdapterPolicies": len(merged),
                  "lastUpdated": stamp}
    if not status.get("status"):
        patch["status"] = "Created"
    return {"metadata": {"resourceVersion": nimbus_policy["metadata"]["resourceVersion"]},
            "status": patch}
