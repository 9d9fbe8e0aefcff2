"""The diff `--once --dry-run` prints: patches applied to the object as listed, and the unified
diff of its YAML before and after (kubectl diff's form)."""

from __future__ import annotations

from typing import Any

import pytest

from reconciler.cached import CachedPolicy
from reconciler.diff import PolicyUpdate, repair_patch
from reconciler.kube import JSON_PATCH, MERGE_PATCH
from reconciler.objdiff import (
    PatchError,
    apply_json_patch,
    apply_merge_patch,
    file_name,
    merged,
    unified_diff,
)

LABEL = "security.kubearmor.com.v1.KubeArmorPolicy.ns.web-dnsmanipulation"


def policy(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "security.kubearmor.com/v1", "kind": "KubeArmorPolicy",
            "metadata": {"name": "web-dnsmanipulation", "namespace": "ns", "uid": "u1",
                         "resourceVersion": "7",
                         "labels": {"app.kubernetes.io/managed-by": "nimbus-kubearmor"},
                         "managedFields": [{"manager": "x", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"action": "Block", "selector": {"matchLabels": {"app": "web"}},
                     "file": {"matchPaths": [{"path": "/etc/resolv.conf", "readOnly": True}]},
                     **spec}}


def changed_lines(text: str) -> list[str]:
    return [line for line in text.splitlines()
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def test_json_patch_ops() -> None:
    doc = {"a": {"b": [1, 2]}, "c": "x", "d/e": {"~f": 1}}
    patched = apply_json_patch(doc, [
        {"op": "test", "path": "/c", "value": "x"},
        {"op": "add", "path": "/a/b/-", "value": 3},
        {"op": "add", "path": "/a/b/0", "value": 0},
        {"op": "replace", "path": "/c", "value": "y"},
        {"op": "remove", "path": "/d~1e/~0f"},
        {"op": "add", "path": "/new", "value": {"k": "v"}},
    ])
    assert patched == {"a": {"b": [0, 1, 2, 3]}, "c": "y", "d/e": {}, "new": {"k": "v"}}
    assert doc == {"a": {"b": [1, 2]}, "c": "x", "d/e": {"~f": 1}}  # the input is left alone


def test_an_absent_member_tests_as_null_as_on_the_api_server() -> None:
    """kube-apiserver's JSON patch passes `test` null on a member that is not there (the status
    patch of a NimbusPolicy without a status relies on it), and so must the dry run's."""
    patched = apply_json_patch({"spec": {}}, [
        {"op": "test", "path": "/status", "value": None},
        {"op": "add", "path": "/status", "value": {"status": "Created"}}])
    assert patched == {"spec": {}, "status": {"status": "Created"}}
    with pytest.raises(PatchError):
        apply_json_patch({"spec": {}}, [{"op": "test", "path": "/spec", "value": None}])


@pytest.mark.parametrize("ops", [
    [{"op": "test", "path": "/c", "value": "other"}],
    [{"op": "replace", "path": "/missing", "value": 1}],
    [{"op": "remove", "path": "/a/b/5"}],
    [{"op": "add", "path": "/no/such/parent", "value": 1}],
    [{"op": "move", "from": "/c", "path": "/d"}],
    [{"op": "add", "path": "a", "value": 1}],
])
def test_json_patch_that_would_be_refused(ops: list[dict[str, Any]]) -> None:
    with pytest.raises(PatchError):
        apply_json_patch({"a": {"b": [1]}, "c": "x"}, ops)


def test_merge_patch() -> None:
    doc = {"status": {"adapterPolicies": ["NetworkPolicy/x"], "status": "Created", "n": 1},
           "spec": {"k": 1}}
    patched = apply_merge_patch(doc, {"status": {"adapterPolicies": ["A", "B"], "n": None,
                                                 "lastUpdated": "t"}})
    assert patched == {"status": {"adapterPolicies": ["A", "B"], "status": "Created",
                                  "lastUpdated": "t"}, "spec": {"k": 1}}


def test_file_name_is_kubectl_diffs() -> None:
    assert file_name("security.kubearmor.com/v1", "KubeArmorPolicy", "ns", "p") == \
        "security.kubearmor.com.v1.KubeArmorPolicy.ns.p"
    assert file_name("v1", "Namespace", "", "ns") == "v1.Namespace.ns"


def test_create_diffs_from_nothing() -> None:
    created = policy()
    del created["metadata"]["managedFields"]
    text = unified_diff(LABEL, None, merged("create", None, created))
    lines = text.splitlines()
    assert lines[0] == f"diff -u -N LIVE/{LABEL} MERGED/{LABEL}"
    assert lines[1] == f"--- LIVE/{LABEL}" and lines[2] == f"+++ MERGED/{LABEL}"
    assert lines[3].startswith("@@ -0,0 +1,")
    assert all(line.startswith("+") for line in lines[4:])
    assert "+  name: web-dnsmanipulation" in lines and "+  action: Block" in lines


def test_delete_diffs_to_nothing_and_hides_managed_fields() -> None:
    text = unified_diff(LABEL, policy(), merged("delete", policy()))
    lines = text.splitlines()
    assert lines[3].startswith("@@ -1,") and lines[3].endswith(" +0,0 @@")
    assert all(line.startswith("-") for line in lines[4:])
    assert "managedFields" not in text and "f:spec" not in text


def test_update_shows_only_the_drifted_fields() -> None:
    """The repair patch the controller sends, applied to the live object: only what it changes
    shows (the resourceVersion it carries is the one listed)."""
    live = policy(action="Audit")
    live["metadata"]["labels"] = {"team": "a"}  # our label removed, someone else's kept
    wanted = policy()
    actual = CachedPolicy.from_json(live)
    ops = repair_patch(PolicyUpdate("web-dnsmanipulation", actual, ("spec", "labels")), wanted)
    text = unified_diff(LABEL, live, merged("patch", live, ops, JSON_PATCH))
    assert changed_lines(text) == ["+    app.kubernetes.io/managed-by: nimbus-kubearmor",
                                   "-  action: Audit", "+  action: Block"]


def test_status_merge_patch() -> None:
    nimbus_policy = {"apiVersion": "intent.security.nimbus.com/v1alpha1", "kind": "NimbusPolicy",
                     "metadata": {"name": "web", "namespace": "ns", "resourceVersion": "3"},
                     "spec": {"rules": []},
                     "status": {"adapterPolicies": ["NetworkPolicy/web-dns"],
                                "numberOfAdapterPolicies": 1, "status": "Created"}}
    patch = {"metadata": {"resourceVersion": "3"}, "status": {
        "adapterPolicies": ["NetworkPolicy/web-dns", "KubeArmorPolicy/web-dnsmanipulation"],
        "numberOfAdapterPolicies": 2, "lastUpdated": "2025-01-01T00:00:00Z"}}
    text = unified_diff("intent.security.nimbus.com.v1alpha1.NimbusPolicy.ns.web", nimbus_policy,
                        merged("patch", nimbus_policy, patch, MERGE_PATCH))
    assert sorted(changed_lines(text)) == sorted([
        "+  - KubeArmorPolicy/web-dnsmanipulation", "+  lastUpdated: '2025-01-01T00:00:00Z'",
        "-  numberOfAdapterPolicies: 1", "+  numberOfAdapterPolicies: 2"])


def test_nothing_to_show_when_the_write_changes_nothing() -> None:
    live = policy()
    ops = [{"op": "replace", "path": "/metadata/resourceVersion", "value": "7"}]
    assert unified_diff(LABEL, live, merged("patch", live, ops, JSON_PATCH)) == ""


def test_a_patch_needs_the_object_as_listed() -> None:
    with pytest.raises(PatchError):
        merged("patch", None, [], JSON_PATCH)


def test_user_text_cannot_forge_diff_lines() -> None:
    """A rule id is the user's text: YAML quotes and escapes it, and every line of the diff
    starts with its marker."""
    created = policy(message="dns\n--- LIVE/forged\n\x1b[31m")
    text = unified_diff(LABEL, None, merged("create", None, created))
    assert "\x1b" not in text
    assert [line for line in text.splitlines()[3:] if not line.startswith(("+", "@@"))] == []
