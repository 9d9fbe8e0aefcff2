"""The pure comparisons behind a reconcile."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from reconciler.builder import desired_policies
from reconciler.cached import CachedNimbusPolicy, CachedPolicy
from reconciler.diff import (
    diff_policies,
    fingerprints,
    is_orphan,
    needs_reconcile,
    render,
    repair_patch,
    status_appeared,
    status_patch,
)
from reconciler.model import KubeArmorPolicy, to_dict
from reconciler.parse import parse_nimbus_policy


def nimbus_policy(rules: list[str], status: dict[str, Any] | None = None,
                  owner_kind: str = "SecurityIntentBinding") -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "intent.security.nimbus.com/v1alpha1", "kind": "NimbusPolicy",
        "metadata": {"name": "np", "namespace": "ns", "uid": "u1", "generation": 1,
                     "resourceVersion": "9",
                     "ownerReferences": [{"apiVersion": "intent.security.nimbus.com/v1alpha1",
                                          "kind": owner_kind, "name": "np", "uid": "b",
                                          "controller": True}]},
        "spec": {"selector": {"matchLabels": {"app": "x"}},
                 "rules": [{"id": r, "rule": {"action": "Block"}} for r in rules]}}
    if status is not None:
        obj["status"] = status
    return obj


def desired(rules: list[str]) -> tuple[KubeArmorPolicy, ...]:
    parsed, _ = parse_nimbus_policy(nimbus_policy(rules))
    assert parsed is not None
    return desired_policies(parsed)[0]


def stored(policy: KubeArmorPolicy, rv: str = "3") -> dict[str, Any]:
    obj = to_dict(policy)
    obj["metadata"] |= {"uid": "k-" + policy.name, "resourceVersion": rv}
    return obj


class PatchTestFailed(Exception):
    pass


def apply(obj: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """A small JSON-patch applier for the ops repair_patch and status_patch emit (add/replace
    on object members; test as the API server's json-patch library does it: a missing member
    tests equal to null, a missing parent fails)."""
    result = copy.deepcopy(obj)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        target = result
        for part in parts[:-1]:
            if not isinstance(target.get(part), dict):
                raise PatchTestFailed(f"{op['path']}: missing parent")
            target = target[part]
        if op["op"] == "test":
            if target.get(parts[-1]) != op["value"]:
                raise PatchTestFailed(f"{op['path']}: {target.get(parts[-1])!r} != {op['value']!r}")
            continue
        assert op["op"] in ("add", "replace")
        target[parts[-1]] = op["value"]
    return result


def cached(obj: dict[str, Any]) -> CachedPolicy:
    return CachedPolicy.from_json(obj)


def cached_np(obj: dict[str, Any]) -> CachedNimbusPolicy:
    return CachedNimbusPolicy.from_json(obj)


def test_owner_key_and_orphans() -> None:
    (policy,) = desired(["dnsManipulation"])
    assert cached(to_dict(policy)).owner_key == "ns/np"
    assert cached({"metadata": {"name": "p", "namespace": "ns", "ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "NimbusPolicy", "name": "x", "controller": True}]}}
    ).owner_key is None
    assert not is_orphan(cached_np(nimbus_policy([])))
    assert not is_orphan(cached_np(nimbus_policy([], owner_kind="ClusterSecurityIntentBinding")))
    assert is_orphan(cached_np(nimbus_policy([], owner_kind="Deployment")))
    orphan = nimbus_policy([])
    del orphan["metadata"]["ownerReferences"]
    assert is_orphan(cached_np(orphan))


def test_status_only_changes_need_no_reconcile() -> None:
    old = nimbus_policy(["dnsManipulation"])
    status_only = copy.deepcopy(old) | {"status": {"status": "Created"}}
    status_only["metadata"]["resourceVersion"] = "10"
    assert not needs_reconcile(cached_np(old), cached_np(status_only))
    spec_change = copy.deepcopy(old)
    spec_change["metadata"]["generation"] = 2
    assert needs_reconcile(cached_np(old), cached_np(spec_change))
    reowned = copy.deepcopy(old)
    reowned["metadata"]["ownerReferences"] = []
    assert needs_reconcile(cached_np(old), cached_np(reowned))


def test_the_first_status_appearing_is_told_from_later_status_writes() -> None:
    bare = nimbus_policy(["dnsManipulation"])
    stamped = copy.deepcopy(bare) | {"status": {"status": "Created", "lastUpdated": "x"}}
    stamped["metadata"]["resourceVersion"] = "10"
    listed = copy.deepcopy(stamped)
    listed["status"] |= {"adapterPolicies": ["KubeArmorPolicy/np-x"], "numberOfAdapterPolicies": 1}
    assert status_appeared(cached_np(bare), cached_np(stamped))
    assert not status_appeared(cached_np(stamped), cached_np(listed))
    assert not status_appeared(None, cached_np(stamped))  # an addition is a reconcile anyway
    assert not status_appeared(cached_np(bare), cached_np(bare))


def test_diff_create_update_delete_unchanged() -> None:
    policies = desired(["escapeToHost", "dnsManipulation"])
    by_name = {p.name: stored(p) for p in policies}
    drifted = by_name["np-dnsmanipulation"]
    drifted["spec"]["action"] = "Audit"
    drifted["metadata"]["labels"] = {"other": "x"}
    del by_name["np-escapetohost-disallowchroot"]
    stale = stored(desired(["pkgMgrs"])[0])
    owned = [cached(p) for p in (*by_name.values(), stale)]
    diff = diff_policies(fingerprints(render(policies)), owned, lambda name: None)
    assert list(diff.create) == ["np-escapetohost-disallowchroot"]
    assert [(u.name, u.fields) for u in diff.update] == [
        ("np-dnsmanipulation", ("spec", "labels"))]
    assert [d.name for d in diff.delete] == ["np-pkgmgrs"]
    assert sorted(diff.unchanged) == ["np-escapetohost-disallowcapabilities",
                                      "np-escapetohost-swdeploymenttools"]


def test_a_policy_being_deleted_is_not_deleted_again() -> None:
    """Our DELETE of a policy a finalizer holds is answered with the policy, deletionTimestamp
    set; until the finalizer goes it stays, and each reconcile of its NimbusPolicy sent another
    DELETE (a write, logged as a deletion) for as long as it did."""
    terminating = stored(desired(["pkgMgrs"])[0])
    terminating["metadata"] |= {"deletionTimestamp": "2026-01-01T00:00:00Z",
                                "finalizers": ["example.com/hold"]}
    diff = diff_policies(fingerprints(render(desired(["dnsManipulation"]))),
                         [cached(terminating)], lambda name: None)
    assert diff.delete == () and list(diff.create) == ["np-dnsmanipulation"]


def test_repair_patch_restores_only_our_fields() -> None:
    (policy,) = desired(["dnsManipulation"])
    actual = stored(policy, rv="41")
    actual["spec"] = {"action": "Audit", "syscalls": {"matchSyscalls": [{"syscall": ["ptrace"]}]}}
    actual["metadata"]["labels"] = {"team": "a"}
    actual["metadata"]["annotations"] = {"app.kubernetes.io/managed-by": "x", "note": "n"}
    other = {"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "c1"}
    ours = actual["metadata"]["ownerReferences"][0]
    actual["metadata"]["ownerReferences"] = [other, {**ours, "blockOwnerDeletion": False}]
    diff = diff_policies(fingerprints(render([policy])), [], lambda name: cached(actual))
    (update,) = diff.update
    assert update.fields == ("spec", "labels", "annotations", "owner")
    ops = repair_patch(update, to_dict(policy))
    assert ops[0] == {"op": "replace", "path": "/metadata/resourceVersion", "value": "41"}
    repaired = apply(actual, ops)
    want = to_dict(policy)
    assert repaired["spec"] == want["spec"]
    assert repaired["metadata"]["labels"] == {"team": "a", "app.kubernetes.io/managed-by": "nimbus-kubearmor"}
    assert repaired["metadata"]["annotations"]["note"] == "n"
    assert repaired["metadata"]["ownerReferences"] == want["metadata"]["ownerReferences"] + [other]


def test_names_held_by_others_are_conflicts_not_takeovers() -> None:
    (policy,) = desired(["dnsManipulation"])
    someone_elses = stored(policy)
    someone_elses["metadata"]["ownerReferences"][0] |= {"name": "other", "uid": "o"}
    hand_made = stored(policy)
    del hand_made["metadata"]["ownerReferences"]
    hand_made["metadata"]["labels"] = {}
    previous_incarnation = stored(policy)
    previous_incarnation["metadata"]["ownerReferences"][0]["uid"] = "old"
    for actual, transient in ((someone_elses, False), (hand_made, False),
                              (previous_incarnation, True)):
        held = cached(actual)
        diff = diff_policies(fingerprints(render([policy])), [], lambda name, a=held: a)  # type: ignore[misc]
        assert diff.empty and len(diff.conflicts) == 1
        assert diff.conflicts[0].transient is transient
    # ours but unlabelled and without an owner (both edited away): adopted
    adopted = stored(policy)
    del adopted["metadata"]["ownerReferences"]
    diff = diff_policies(fingerprints(render([policy])), [], lambda name: cached(adopted))
    assert [u.fields for u in diff.update] == [("owner",)]
    # as the upstream adapter leaves them: annotated and owned, no label: one patch adopts it
    upstream = stored(policy)
    del upstream["metadata"]["labels"]
    (update,) = diff_policies(fingerprints(render([policy])), [cached(upstream)], lambda name: None).update
    assert update.fields == ("labels",)
    assert apply(upstream, repair_patch(update, to_dict(policy)))["metadata"]["labels"] == {
        "app.kubernetes.io/managed-by": "nimbus-kubearmor"}


def test_status_patch_merges_with_other_adapters_and_is_none_when_right() -> None:
    np = nimbus_policy([], {"status": "Created", "numberOfAdapterPolicies": 2,
                            "lastUpdated": "2026-01-02T03:04:05Z",
                            "adapterPolicies": ["NetworkPolicy/np-a", "KubeArmorPolicy/np-old"]})
    patch = status_patch(cached_np(np), ["np-new", "np-b"])
    assert patch == [
        {"op": "test", "path": "/metadata/uid", "value": "u1"},  # the object as read
        {"op": "test", "path": "/status/adapterPolicies",
         "value": ["NetworkPolicy/np-a", "KubeArmorPolicy/np-old"]},
        {"op": "add", "path": "/status/adapterPolicies",
         "value": ["NetworkPolicy/np-a", "KubeArmorPolicy/np-new", "KubeArmorPolicy/np-b"]},
        {"op": "add", "path": "/status/numberOfAdapterPolicies", "value": 3}]
    written = apply(np, patch)
    # the core's fields are left alone
    assert written["status"]["status"] == "Created"
    assert written["status"]["lastUpdated"] == "2026-01-02T03:04:05Z"
    assert status_patch(cached_np(written), ["np-b", "np-new"]) is None  # ours in any order
    drifted_count = nimbus_policy([], {"status": "Created", "numberOfAdapterPolicies": 5,
                                       "adapterPolicies": ["KubeArmorPolicy/np-a"]})
    fixed = status_patch(cached_np(drifted_count), ["np-a"])
    assert fixed is not None
    assert apply(drifted_count, fixed)["status"]["numberOfAdapterPolicies"] == 1


def test_status_patch_tests_only_adapter_policies_as_read() -> None:
    np = nimbus_policy([], {"status": "Created", "numberOfAdapterPolicies": 1,
                            "adapterPolicies": ["NetworkPolicy/np-a"]})
    patch = status_patch(cached_np(np), ["np-x"])
    assert patch is not None
    # the core stamping lastUpdated (a new resourceVersion) meanwhile: it still applies
    stamped = copy.deepcopy(np)
    stamped["metadata"]["resourceVersion"] = "10"
    stamped["status"]["lastUpdated"] = "2026-01-02T03:04:06Z"
    assert apply(stamped, patch)["status"]["adapterPolicies"] == ["NetworkPolicy/np-a",
                                                                  "KubeArmorPolicy/np-x"]
    # another adapter adding its entry meanwhile: refused, so nothing of theirs is lost
    other = copy.deepcopy(np)
    other["status"]["adapterPolicies"].append("ClusterPolicy/np-b")
    with pytest.raises(PatchTestFailed):
        apply(other, patch)
    # the NimbusPolicy deleted and made again under its name meanwhile: another object
    replaced = copy.deepcopy(np)
    replaced["metadata"]["uid"] = "u2"
    with pytest.raises(PatchTestFailed):
        apply(replaced, patch)
    bare = nimbus_policy([])
    first = status_patch(cached_np(bare), ["np-x"])
    assert first is not None
    bare["metadata"]["uid"] = "u2"
    with pytest.raises(PatchTestFailed):  # also when neither has a status yet
        apply(bare, first)


def test_status_patch_for_every_shape_of_status() -> None:
    """No status yet (the core has not written it), a status without adapterPolicies, and one
    without status.status (required by the schema: added as Created, tested absent)."""
    absent = nimbus_policy([])
    patch = status_patch(cached_np(absent), ["np-a"])
    assert patch == [{"op": "test", "path": "/metadata/uid", "value": "u1"},
                     {"op": "test", "path": "/status", "value": None},
                     {"op": "add", "path": "/status", "value": {
                         "status": "Created", "numberOfAdapterPolicies": 1,
                         "adapterPolicies": ["KubeArmorPolicy/np-a"]}}]
    assert status_patch(cached_np(absent), []) is not None  # status.status is still required
    with_status = apply(absent, [{"op": "add", "path": "/status",
                                  "value": {"status": "Pending", "numberOfAdapterPolicies": 0}}])
    with pytest.raises(PatchTestFailed):  # the core wrote its status meanwhile: refused
        apply(with_status, patch)
    patch = status_patch(cached_np(with_status), ["np-a"])
    assert patch is not None and patch[1] == {"op": "test", "path": "/status/adapterPolicies",
                                              "value": None}
    written = apply(with_status, patch)["status"]
    assert written == {"status": "Pending", "numberOfAdapterPolicies": 1,
                       "adapterPolicies": ["KubeArmorPolicy/np-a"]}
    empty = nimbus_policy([], {"status": "Created", "numberOfAdapterPolicies": 0,
                               "adapterPolicies": []})
    patch = status_patch(cached_np(empty), ["np-a"])
    assert patch is not None and patch[1]["value"] == []  # [] is not absent to a test
    assert status_patch(cached_np(empty), []) is None
    no_status_field = nimbus_policy([], {"numberOfAdapterPolicies": 0})
    patch = status_patch(cached_np(no_status_field), [])
    assert patch is not None
    assert apply(no_status_field, patch)["status"] == {
        "status": "Created", "numberOfAdapterPolicies": 0, "adapterPolicies": []}


def test_cached_policies_keep_only_a_digest_of_their_spec() -> None:
    (policy,) = desired(["swDeploymentTools"])
    actual = stored(policy)
    kept = cached(actual)
    assert not hasattr(kept, "spec") and kept.uid == "k-np-swdeploymenttools"
    diff = diff_policies(fingerprints(render([policy])), [kept], lambda name: None)
    assert diff.unchanged == ("np-swdeploymenttools",)
    actual["spec"]["action"] = "Audit"
    (update,) = diff_policies(fingerprints(render([policy])), [cached(actual)], lambda name: None).update
    assert update.fields == ("spec",)
    assert repair_patch(update, to_dict(policy))[1] == {"op": "add", "path": "/spec",
                                               "value": to_dict(policy)["spec"]}
