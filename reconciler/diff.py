"""Pure comparisons between what a NimbusPolicy requires and what the cache holds: which
policies to create, patch or delete, the patch that repairs a drifted one, and the status."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from .cached import CachedNimbusPolicy, CachedPolicy, OwnerRef, owner_ref, spec_digest
from .model import KubeArmorPolicy, to_dict
from .names import MANAGED_BY_KEY, MANAGED_BY_VALUE, NIMBUS_GROUP

Obj = dict[str, Any]
BINDING_KINDS = frozenset({"SecurityIntentBinding", "ClusterSecurityIntentBinding"})
OUR_STATUS_PREFIX = "KubeArmorPolicy/"


def is_orphan(nimbus_policy: CachedNimbusPolicy) -> bool:
    """The Nimbus core makes every NimbusPolicy for a (Cluster)SecurityIntentBinding and
    makes the binding its controller; any other NimbusPolicy is not ours to act on."""
    ref = nimbus_policy.controller
    return ref is None or ref.kind not in BINDING_KINDS or \
        ref.api_version.rpartition("/")[0] != NIMBUS_GROUP


def needs_reconcile(old: CachedNimbusPolicy | None, new: CachedNimbusPolicy | None) -> bool:
    """Whether a NimbusPolicy change can change the desired state: not a status-only write
    (ours included), which leaves metadata.generation alone."""
    if old is None or new is None:
        return True
    return (old.uid, old.generation, old.controller, old.deleting) != \
        (new.uid, new.generation, new.controller, new.deleting)


def status_appeared(old: CachedNimbusPolicy | None, new: CachedNimbusPolicy | None) -> bool:
    """Whether a NimbusPolicy change is its first status being written (by the Nimbus core, which
    a newcomer's status write waits for)."""
    return old is not None and new is not None and not old.has_status and new.has_status


@attrs.frozen
class Fingerprint:
    """What drift is judged against, small enough to keep for every desired policy: a digest
    of its spec and its controller reference (labels and annotations are the same for all)."""

    spec_digest: bytes
    owner: OwnerRef


def render(policies: Iterable[KubeArmorPolicy]) -> dict[str, Obj]:
    """The JSON of each policy, by name, in the builder's order."""
    return {policy.name: to_dict(policy) for policy in policies}


def fingerprint(rendered: Obj) -> Fingerprint:
    owner = owner_ref(rendered["metadata"]["ownerReferences"][0])
    assert owner is not None
    return Fingerprint(spec_digest(rendered["spec"]), owner)


def fingerprints(rendered: Mapping[str, Obj]) -> dict[str, Fingerprint]:
    return {name: fingerprint(obj) for name, obj in rendered.items()}


@attrs.frozen
class PolicyUpdate:
    name: str
    actual: CachedPolicy
    fields: tuple[str, ...]  # what drifted: spec, labels, annotations, owner


@attrs.frozen
class PolicyConflict:
    name: str
    actual: CachedPolicy
    holder: str  # who controls the object that has the name, for the error message
    transient: bool  # the previous incarnation of this NimbusPolicy: the GC will remove it


@attrs.frozen
class PolicyDiff:
    create: tuple[str, ...] = ()  # names
    update: tuple[PolicyUpdate, ...] = ()
    delete: tuple[CachedPolicy, ...] = ()
    unchanged: tuple[str, ...] = ()
    conflicts: tuple[PolicyConflict, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.create or self.update or self.delete)


def drifted_fields(wanted: Fingerprint, actual: CachedPolicy) -> tuple[str, ...]:
    fields = []
    if actual.spec_digest != wanted.spec_digest:
        fields.append("spec")
    if not actual.labelled:
        fields.append("labels")
    if not actual.annotated:
        fields.append("annotations")
    if actual.controller != wanted.owner:
        fields.append("owner")
    return tuple(fields)


def diff_policies(desired: Mapping[str, Fingerprint], owned: Sequence[CachedPolicy],
                  existing: Callable[[str], CachedPolicy | None]) -> PolicyDiff:
    """`desired`: the fingerprints of the desired policies by name; `owned`: the policies whose
    controller is this NimbusPolicy (this incarnation); `existing(name)`: any policy of that name
    in the namespace, owned or not."""
    remaining = {policy.name: policy for policy in owned}
    create, update, unchanged, conflicts = [], [], [], []
    for name, wanted in desired.items():
        actual = remaining.pop(name, None) or existing(name)
        if actual is None:
            create.append(name)
            continue
        ours = wanted.owner
        holder = actual.controller
        if holder is not None and not holder.same_object(ours):
            transient = holder.kind == ours.kind and holder.name == ours.name
            conflicts.append(PolicyConflict(name, actual, f"{holder.kind}/{holder.name}",
                                            transient))
            continue
        if holder is None and not actual.labelled:
            conflicts.append(PolicyConflict(name, actual,
                                            "nobody (not managed by nimbus-kubearmor)", False))
            continue
        fields = drifted_fields(wanted, actual)
        if fields:
            update.append(PolicyUpdate(name, actual, fields))
        else:
            unchanged.append(name)
    # one being deleted already (a finalizer holds it) is not deleted again at every reconcile
    stale = tuple(policy for policy in remaining.values() if not policy.deleting)
    return PolicyDiff(tuple(create), tuple(update), stale, tuple(unchanged), tuple(conflicts))


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def repair_patch(update: PolicyUpdate, wanted: Obj) -> list[Obj]:
    """A JSON patch that makes only our fields right again (`wanted`: the desired policy's
    JSON). Carrying the resourceVersion we saw makes the API server refuse it (409) if the
    object changed since."""
    actual = update.actual
    ops: list[Obj] = [{"op": "replace", "path": "/metadata/resourceVersion",
                       "value": actual.resource_version}]
    if "spec" in update.fields:
        ops.append({"op": "add", "path": "/spec", "value": wanted["spec"]})
    for field, present in (("labels", actual.has_labels), ("annotations", actual.has_annotations)):
        if field in update.fields:
            if present:
                ops.append({"op": "add", "path": f"/metadata/{field}/{_escape(MANAGED_BY_KEY)}",
                            "value": MANAGED_BY_VALUE})
            else:
                ops.append({"op": "add", "path": f"/metadata/{field}",
                            "value": {MANAGED_BY_KEY: MANAGED_BY_VALUE}})
    if "owner" in update.fields:
        others = [ref.to_json() for ref in actual.other_owners]
        ops.append({"op": "add", "path": "/metadata/ownerReferences",
                    "value": wanted["metadata"]["ownerReferences"] + others})
    return ops


def status_patch(nimbus_policy: CachedNimbusPolicy, policy_names: Sequence[str]
                 ) -> list[Obj] | None:
    """The JSON patch for the NimbusPolicy's /status, or None when it is already right.
    Other adapters' entries (NetworkPolicy/..., ...) keep their place; ours are made exactly
    `policy_names`, and numberOfAdapterPolicies is the length of the list.

    Its precondition is the one field it rewrites: a `test` that adapterPolicies is still as
    read (absent or null tests as absent), not the object's resourceVersion, so the Nimbus core
    writing status.status or lastUpdated meanwhile does not refuse it; another adapter changing
    its entries does (422, `ApiError.patch_test_failed`), and it is made again on a fresh read.
    With no status at all, all it can test is that there is none, which the core's first write
    breaks: the controller leaves a new NimbusPolicy's first status to the core (newcomers.py).
    And that the object is still the one read (its uid), as a delete's precondition says: a
    NimbusPolicy deleted and made again under the same name meanwhile is another object, whose
    status must not list the policies made for the first.
    The API server applies a patch to the current object, retrying itself when etcd moved on,
    so what the tests check is what it is applied to. status.status (required by the schema)
    is written only where it is absent, as "Created"; lastUpdated is the core's."""
    current = list(nimbus_policy.adapter_policies)
    wanted = {OUR_STATUS_PREFIX + name for name in policy_names}
    merged = [e for e in current if not e.startswith(OUR_STATUS_PREFIX) or e in wanted]
    merged += [OUR_STATUS_PREFIX + n for n in policy_names if OUR_STATUS_PREFIX + n not in current]
    if merged == current and nimbus_policy.number_of_adapter_policies == len(merged) \
            and nimbus_policy.status:
        return None
    same_object: Obj = {"op": "test", "path": "/metadata/uid", "value": nimbus_policy.uid}
    if not nimbus_policy.has_status:
        return [same_object, {"op": "test", "path": "/status", "value": None},
                {"op": "add", "path": "/status", "value": {
                    "status": "Created", "numberOfAdapterPolicies": len(merged),
                    "adapterPolicies": merged}}]
    ops: list[Obj] = [same_object, {
        "op": "test", "path": "/status/adapterPolicies",
        "value": current if nimbus_policy.lists_adapter_policies else None}]
    if not nimbus_policy.status:
        ops += [{"op": "test", "path": "/status/status", "value": None},
                {"op": "add", "path": "/status/status", "value": "Created"}]
    return [*ops, {"op": "add", "path": "/status/adapterPolicies", "value": merged},
            {"op": "add", "path": "/status/numberOfAdapterPolicies", "value": len(merged)}]
