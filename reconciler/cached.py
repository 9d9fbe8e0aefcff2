"""What the caches keep of each object: small immutable values made from the API's JSON as it
arrives (client-go's TransformFunc), so a full object never outlives the page or the event it
came in. Each field is here because a reconcile reads it; everything else (managedFields, the
KubeArmorPolicy's spec, other people's labels and annotations) is dropped on arrival.

A KubeArmorPolicy's spec is kept only as a digest: drift is all it is read for.
"""

from __future__ import annotations

import hashlib
import json
import sys
import weakref
from typing import Any

import attrs

from .limits import RulesCut, SelectorTooLarge, rules_to_read, selector_too_large
from .names import MANAGED_BY_KEY, MANAGED_BY_VALUE, NIMBUS_GROUP

Obj = dict[str, Any]


def spec_digest(spec: Any) -> bytes:
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(canonical.encode(), digest_size=16).digest()


def _group(api_version: str) -> str:
    return api_version.rpartition("/")[0]


@attrs.frozen(slots=True, weakref_slot=True)
class OwnerRef:
    api_version: str
    kind: str
    name: str
    uid: str
    controller: bool = False
    block_owner_deletion: bool | None = None

    def to_json(self) -> Obj:
        ref: Obj = {"apiVersion": self.api_version, "kind": self.kind, "name": self.name,
                    "uid": self.uid}
        if self.controller:
            ref["controller"] = True
        if self.block_owner_deletion is not None:
            ref["blockOwnerDeletion"] = self.block_owner_deletion
        return ref

    def same_object(self, other: OwnerRef) -> bool:
        """The same owner, whatever the flags or the version in apiVersion say."""
        return (self.kind, self.name, self.uid) == (other.kind, other.name, other.uid) and \
            _group(self.api_version) == _group(other.api_version)

    @property
    def is_nimbus_policy(self) -> bool:
        return self.kind == "NimbusPolicy" and _group(self.api_version) == NIMBUS_GROUP


# The five policies of a NimbusPolicy name the same owner: one value serves them all, and goes
# when the last policy naming it does.
_owner_refs: weakref.WeakValueDictionary[tuple[Any, ...], OwnerRef] = weakref.WeakValueDictionary()


def owner_ref(raw: Any) -> OwnerRef | None:
    if not isinstance(raw, dict):
        return None
    fields = (sys.intern(str(raw.get("apiVersion") or "")), sys.intern(str(raw.get("kind") or "")),
              str(raw.get("name") or ""), str(raw.get("uid") or ""), bool(raw.get("controller")),
              raw.get("blockOwnerDeletion") if isinstance(raw.get("blockOwnerDeletion"), bool)
              else None)
    ref = _owner_refs.get(fields)
    if ref is None:
        ref = OwnerRef(*fields)
        _owner_refs[fields] = ref
    return ref


def _owner_refs_of(metadata: Obj) -> tuple[OwnerRef | None, tuple[OwnerRef, ...]]:
    """(the controller reference, the other references)."""
    controller, others = None, []
    for raw in metadata.get("ownerReferences") or ():
        ref = owner_ref(raw)
        if ref is None:
            continue
        if ref.controller and controller is None:
            controller = ref
        else:
            others.append(ref)
    return controller, tuple(others)


def _marked(mapping: Any) -> bool:
    return isinstance(mapping, dict) and mapping.get(MANAGED_BY_KEY) == MANAGED_BY_VALUE


@attrs.frozen(slots=True)
class CachedPolicy:
    """A KubeArmorPolicy, any in scope (ours or not: ownership is the controller reference)."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    controller: OwnerRef | None
    other_owners: tuple[OwnerRef, ...]
    has_labels: bool  # metadata.labels exists (a JSON patch adds to it or creates it)
    labelled: bool  # it carries our managed-by label
    has_annotations: bool
    annotated: bool  # it carries our managed-by annotation
    spec_digest: bytes
    deleting: bool  # deletionTimestamp is set

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def owner_key(self) -> str | None:
        """"namespace/name" of the NimbusPolicy that controls it, if one does."""
        if self.controller is None or not self.controller.is_nimbus_policy:
            return None
        return f"{self.namespace}/{self.controller.name}"

    @classmethod
    def from_json(cls, obj: Obj) -> CachedPolicy:
        metadata = obj.get("metadata") or {}
        controller, others = _owner_refs_of(metadata)
        labels, annotations = metadata.get("labels"), metadata.get("annotations")
        return cls(
            namespace=sys.intern(str(metadata.get("namespace") or "")),
            name=str(metadata.get("name") or ""), uid=str(metadata.get("uid") or ""),
            resource_version=str(metadata.get("resourceVersion") or ""),
            controller=controller, other_owners=others,
            has_labels=isinstance(labels, dict) and bool(labels), labelled=_marked(labels),
            has_annotations=isinstance(annotations, dict) and bool(annotations),
            annotated=_marked(annotations),
            spec_digest=spec_digest(obj.get("spec")),
            deleting=bool(metadata.get("deletionTimestamp")),
        )


@attrs.frozen(slots=True)
class CachedNimbusPolicy:
    """A NimbusPolicy: its identity, its controller, its spec (the builder's input, kept as
    the JSON text it arrived as and parsed only when its generation is new to us; with only the
    rules that are read, limits.py, and where they were cut) and our part of its status."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    generation: int
    api_version: str
    controller: OwnerRef | None
    deleting: bool
    spec_json: str
    rules_cut: RulesCut | None  # the spec's rules past the first rules_cut.read are not kept
    # the spec's selector is too large to read, and not kept (spec_json has none)
    selector_too_large: SelectorTooLarge | None
    # What the status held, exactly enough for a JSON patch to test it: whether there was a
    # status at all, and whether it listed adapterPolicies (absent and [] differ to a `test`).
    has_status: bool
    status: str  # status.status, written by the Nimbus core ("" if absent)
    lists_adapter_policies: bool
    adapter_policies: tuple[str, ...]
    number_of_adapter_policies: int | None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def version(self) -> tuple[str, int]:
        """What the desired policies depend on: this object (uid) at this spec (generation)."""
        return self.uid, self.generation

    def as_json(self) -> Obj:
        """The NimbusPolicy as the builder reads it (metadata and spec)."""
        metadata: Obj = {"name": self.name, "namespace": self.namespace, "uid": self.uid,
                         "resourceVersion": self.resource_version, "generation": self.generation}
        if self.controller is not None:
            metadata["ownerReferences"] = [self.controller.to_json()]
        return {"apiVersion": self.api_version, "kind": "NimbusPolicy", "metadata": metadata,
                "spec": json.loads(self.spec_json)}

    @classmethod
    def from_json(cls, obj: Obj) -> CachedNimbusPolicy:
        metadata = obj.get("metadata") or {}
        has_status = isinstance(obj.get("status"), dict)
        status = obj["status"] if has_status else {}
        listed = status.get("adapterPolicies")
        count = status.get("numberOfAdapterPolicies")
        try:
            generation = int(metadata.get("generation") or 0)
        except (TypeError, ValueError):
            generation = 0
        spec, cut, too_large = obj.get("spec"), None, None
        if isinstance(spec, dict) and isinstance(spec.get("rules"), list):
            cut = rules_to_read(spec["rules"])
            if cut is not None:
                spec = {**spec, "rules": spec["rules"][:cut.read]}
        if isinstance(spec, dict) and "selector" in spec:
            too_large = selector_too_large(spec["selector"])
            if too_large is not None:
                spec = {k: v for k, v in spec.items() if k != "selector"}
        return cls(
            namespace=sys.intern(str(metadata.get("namespace") or "")),
            name=str(metadata.get("name") or ""), uid=str(metadata.get("uid") or ""),
            resource_version=str(metadata.get("resourceVersion") or ""),
            generation=generation,
            api_version=sys.intern(str(obj.get("apiVersion") or "")),
            controller=_owner_refs_of(metadata)[0],
            deleting=bool(metadata.get("deletionTimestamp")),
            spec_json=json.dumps(spec, separators=(",", ":")), rules_cut=cut,
            selector_too_large=too_large,
            has_status=has_status,
            status=str(status.get("status") or ""),
            lists_adapter_policies=isinstance(listed, list),
            adapter_policies=tuple(str(e) for e in listed) if isinstance(listed, list) else (),
            number_of_adapter_policies=count if isinstance(count, int) else None,
        )
