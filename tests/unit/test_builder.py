"""The builder against the specification (shared/INTENTS.md): golden output, every name and
path, action mapping, and the problems bad input produces."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from reconciler import intents
from reconciler.builder import desired_policies
from reconciler.model import KubeArmorPolicy, NimbusPolicy, from_dict, to_dict
from reconciler.parse import parse_nimbus_policy
from reconciler.problems import ProblemKind
from reconciler.render import render_documents

GOLDEN = Path(__file__).parent / "golden"
SPEC = Path(__file__).resolve().parents[3] / "shared" / "INTENTS.md"


def nimbus_policy(
    rules: list[dict[str, Any]], name: str = "np", selector: Any = None, uid: str = "uid-1"
) -> NimbusPolicy:
    document = {
        "apiVersion": "intent.security.nimbus.com/v1alpha1",
        "kind": "NimbusPolicy",
        "metadata": {"name": name, "namespace": "ns", "uid": uid},
        "spec": {
            "selector": {"matchLabels": {"app": "a"}} if selector is None else selector,
            "rules": rules,
        },
    }
    policy, problems = parse_nimbus_policy(document)
    assert policy is not None, problems
    return policy


def build(
    rules: list[dict[str, Any]], **kwargs: Any
) -> tuple[dict[str, dict[str, Any]], list[Any]]:
    policies, problems = desired_policies(nimbus_policy(rules, **kwargs))
    return {p.name: to_dict(p) for p in policies}, list(problems)


def test_golden_every_intent() -> None:
    documents = list(yaml.safe_load_all((GOLDEN / "all-intents.input.yaml").read_text()))
    text, problems = render_documents(documents)
    assert problems == []
    expected = list(yaml.safe_load_all((GOLDEN / "all-intents.output.yaml").read_text()))
    assert list(yaml.safe_load_all(text)) == expected
    assert [d["metadata"]["name"] for d in expected] == [
        "web-swdeploymenttools",
        "web-unauthorizedsatokenaccess",
        "web-dnsmanipulation",
        "web-escapetohost-disallowchroot",
        "web-escapetohost-disallowcapabilities",
        "web-escapetohost-swdeploymenttools",
        "web-preventexecutionfromtemporlogsfolders",
        "web-pkgmgrs",
    ]


def _spec_list(heading: str) -> list[str]:
    text = SPEC.read_text()
    block = re.search(rf"^{re.escape(heading)} \(.*?```\n(.*?)```", text, re.S | re.M)
    assert block is not None, heading
    return block.group(1).split()


@pytest.mark.skipif(not SPEC.exists(), reason=f"specification not found at {SPEC}")
def test_path_lists_are_the_specifications() -> None:
    assert list(intents.PACKAGE_MANAGERS) == _spec_list("PKG-MGR list")
    upstream = _spec_list("SW-DEPLOY list")
    assert list(intents.SOFTWARE_DEPLOYMENT_TOOLS) == list(dict.fromkeys(upstream))
    assert len(intents.SOFTWARE_DEPLOYMENT_TOOLS) == 36


def test_every_path_of_every_intent() -> None:
    policies, problems = build([{"id": i, "rule": {"action": "Block"}} for i in intents.CATALOGUE])
    assert problems == []
    paths = lambda name, section: [m["path"] for m in policies[name]["spec"][section]["matchPaths"]]  # noqa: E731
    assert paths("np-swdeploymenttools", "process") == list(intents.SOFTWARE_DEPLOYMENT_TOOLS)
    assert paths("np-escapetohost-swdeploymenttools", "process") == list(
        intents.SOFTWARE_DEPLOYMENT_TOOLS
    )
    assert paths("np-pkgmgrs", "process") == list(intents.PACKAGE_MANAGERS)
    assert paths("np-escapetohost-disallowchroot", "process") == [
        "/usr/sbin/chroot",
        "/sbin/chroot",
    ]
    assert policies["np-dnsmanipulation"]["spec"]["file"] == {
        "matchPaths": [{"path": "/etc/resolv.conf", "readOnly": True}]
    }
    assert policies["np-unauthorizedsatokenaccess"]["spec"]["file"] == {
        "matchDirectories": [
            {"dir": "/run/secrets/kubernetes.io/serviceaccount/", "recursive": True}
        ]
    }
    assert [
        c["capability"]
        for c in policies["np-escapetohost-disallowcapabilities"]["spec"]["capabilities"][
            "matchCapabilities"
        ]
    ] == ["sys_admin", "sys_ptrace", "sys_module", "dac_read_search", "dac_override"]
    temp = policies["np-preventexecutionfromtemporlogsfolders"]["spec"]["process"]
    assert temp == {
        "matchDirectories": [
            {"dir": d, "recursive": True}
            for d in ("/var/tmp/", "/tmp/", "/var/log/", "/app/logs/", "/logs/", "/etc/")
        ],
        "action": "Block",
    }


def test_common_metadata() -> None:
    policies, _ = build([{"id": "dnsManipulation", "rule": {"action": "Block"}}], uid="u-9")
    metadata = policies["np-dnsmanipulation"]["metadata"]
    assert metadata == {
        "name": "np-dnsmanipulation",
        "namespace": "ns",
        "labels": {"app.kubernetes.io/managed-by": "nimbus-kubearmor"},
        "annotations": {"app.kubernetes.io/managed-by": "nimbus-kubearmor"},
        "ownerReferences": [
            {
                "apiVersion": "intent.security.nimbus.com/v1alpha1",
                "kind": "NimbusPolicy",
                "name": "np",
                "uid": "u-9",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    assert policies["np-dnsmanipulation"]["spec"]["selector"] == {"matchLabels": {"app": "a"}}


@pytest.mark.parametrize(
    ("action", "expected"), [("Block", "Block"), ("Enforce", "Block"), ("Audit", "Audit")]
)
def test_action_mapping(action: str, expected: str) -> None:
    policies, problems = build(
        [
            {"id": "escapeToHost", "rule": {"action": action}},
            {"id": "pkgMgrs", "rule": {"action": action}},
        ]
    )
    assert problems == []
    assert {p["spec"]["action"] for p in policies.values()} == {expected}
    assert policies["np-pkgmgrs"]["spec"]["process"]["action"] == expected


def test_description_becomes_message_and_empty_is_absent() -> None:
    policies, _ = build(
        [
            {"id": "dnsManipulation", "description": "", "rule": {"action": "Block"}},
            {"id": "swDeploymentTools", "description": "no curl", "rule": {"action": "Block"}},
            {"id": "pkgMgrs", "rule": {"action": "Audit"}},
        ]
    )
    assert "message" not in policies["np-dnsmanipulation"]["spec"]
    assert policies["np-swdeploymenttools"]["spec"]["message"] == "no curl"
    assert policies["np-pkgmgrs"]["spec"]["message"] == intents.PACKAGE_MANAGER_MESSAGE
    assert policies["np-pkgmgrs"]["spec"]["tags"] == ["NIST", "CM-7(5)", "SI-4", "Package Manager"]
    assert policies["np-pkgmgrs"]["spec"]["process"]["severity"] == 5


def test_empty_selector_is_namespace_wide() -> None:
    policies, _ = build([{"id": "dnsManipulation", "rule": {"action": "Block"}}], selector={})
    assert policies["np-dnsmanipulation"]["spec"]["selector"] == {"matchLabels": {}}


def test_tutorial_dialect() -> None:
    policies, problems = build(
        [
            {"id": "pkgMgrs", "action": "Enforce"},
            {"id": "dnsManipulation", "action": "Audit", "params": {}},
        ]
    )
    assert problems == []
    assert policies["np-pkgmgrs"]["spec"]["action"] == "Block"
    assert policies["np-dnsmanipulation"]["spec"]["action"] == "Audit"


def test_exclude_caps() -> None:
    policies, problems = build(
        [
            {
                "id": "escapeToHost",
                "rule": {
                    "action": "Block",
                    "params": {"exclude_caps": ["sys_admin", "CAP_SYS_PTRACE"]},
                },
            }
        ]
    )
    assert problems == []
    caps = policies["np-escapetohost-disallowcapabilities"]["spec"]["capabilities"]
    assert [c["capability"] for c in caps["matchCapabilities"]] == [
        "sys_module",
        "dac_read_search",
        "dac_override",
    ]


def test_excluding_every_capability_leaves_no_capability_policy() -> None:
    policies, problems = build(
        [
            {
                "id": "escapeToHost",
                "rule": {
                    "action": "Block",
                    "params": {"exclude_caps": list(intents.ESCAPE_CAPABILITIES)},
                },
            }
        ]
    )
    assert problems == []
    assert sorted(policies) == [
        "np-escapetohost-disallowchroot",
        "np-escapetohost-swdeploymenttools",
    ]


def test_bad_exclude_caps_entry_is_reported_and_the_rest_still_applies() -> None:
    policies, problems = build(
        [
            {
                "id": "escapeToHost",
                "rule": {
                    "action": "Block",
                    "params": {"exclude_caps": ["sys_admin", "sys_nonsense"]},
                },
            }
        ]
    )
    assert [(p.kind, p.field, p.rule_index) for p in problems] == [
        (ProblemKind.BAD_PARAM, "spec.rules[0].rule.params.exclude_caps", 0)
    ]
    assert "sys_nonsense" in problems[0].message
    assert len(policies) == 3
    caps = policies["np-escapetohost-disallowcapabilities"]["spec"]["capabilities"]
    assert "sys_admin" not in [c["capability"] for c in caps["matchCapabilities"]]


def test_bad_rules_are_reported_and_good_rules_still_apply() -> None:
    policies, problems = build(
        [
            {"id": "dnsManipulation", "rule": {"action": "Block"}},
            {"id": "noSuchIntent", "rule": {"action": "Block"}},
            {"id": "pkgMgrs", "rule": {"action": "Deny"}},
            {"id": "dnsManipulation", "rule": {"action": "Audit"}},
            {"id": "swDeploymentTools", "rule": {"action": "Block", "params": {"speed": ["fast"]}}},
        ]
    )
    assert sorted(policies) == ["np-dnsmanipulation", "np-swdeploymenttools"]
    assert policies["np-dnsmanipulation"]["spec"]["action"] == "Block"  # the first one wins
    assert [(p.kind, p.field, p.rule_id, p.policy) for p in problems] == [
        (ProblemKind.UNKNOWN_INTENT, "spec.rules[1].id", "noSuchIntent", "ns/np"),
        (ProblemKind.UNKNOWN_ACTION, "spec.rules[2].rule.action", "pkgMgrs", "ns/np"),
        (ProblemKind.DUPLICATE_INTENT, "spec.rules[3].id", "dnsManipulation", "ns/np"),
        (ProblemKind.BAD_PARAM, "spec.rules[4].rule.params.speed", "swDeploymentTools", "ns/np"),
    ]
    assert str(problems[1]) == (
        "NimbusPolicy ns/np: spec.rules[2].rule.action: unknown action "
        "'Deny' (use Block, Enforce or Audit)"
    )


def test_name_too_long_creates_nothing_for_that_rule() -> None:
    # 253 - len("-escapetohost-disallowcapabilities") < 230 < 253 - len("-dnsmanipulation")
    name = "n" * 230
    policies, problems = build(
        [
            {"id": "escapeToHost", "rule": {"action": "Block"}},
            {"id": "dnsManipulation", "rule": {"action": "Block"}},
        ],
        name=name,
    )
    assert list(policies) == [f"{name}-dnsmanipulation"]
    assert [(p.kind, p.rule_index) for p in problems] == [(ProblemKind.NAME_TOO_LONG, 0)]


def test_malformed_rule_is_reported_alone() -> None:
    document = {
        "metadata": {"name": "np", "namespace": "ns"},
        "spec": {
            "selector": {},
            "rules": [
                {"rule": {"action": "Block"}},
                {"id": "dnsManipulation", "rule": "Block"},
                {"id": "pkgMgrs", "rule": {"action": "Audit"}},
            ],
        },
    }
    policy, problems = parse_nimbus_policy(document)
    assert policy is not None
    assert [(p.kind, p.field) for p in problems] == [
        (ProblemKind.MALFORMED, "spec.rules[0].id"),
        (ProblemKind.MALFORMED, "spec.rules[1].rule"),
    ]
    policies, build_problems = desired_policies(policy)
    assert [p.name for p in policies] == ["np-pkgmgrs"] and build_problems == ()


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ({"metadata": {"namespace": "ns"}, "spec": {"selector": {}, "rules": []}}, "metadata.name"),
        ({"metadata": {"name": "np"}}, "spec"),
        ({"metadata": {"name": "np"}, "spec": {"rules": []}}, "spec.selector"),
        ({"metadata": {"name": "np"}, "spec": {"selector": [], "rules": []}}, "spec.selector"),
        ({"kind": "Pod", "metadata": {"name": "np"}}, "kind"),
        ([1, 2], "(document)"),
    ],
)
def test_unusable_nimbus_policy_is_one_clear_problem(document: Any, field: str) -> None:
    policy, problems = parse_nimbus_policy(document)
    assert policy is None
    assert problems and problems[0].field == field and problems[0].kind is ProblemKind.MALFORMED


def test_kubearmor_policy_round_trips_and_tolerates_unknown_fields() -> None:
    policies, _ = build([{"id": "escapeToHost", "rule": {"action": "Block"}}])
    for data in policies.values():
        noisy = {
            **data,
            "status": {"x": 1},
            "metadata": {**data["metadata"], "uid": "k", "managedFields": [{}]},
        }
        parsed = from_dict(KubeArmorPolicy, noisy)
        again = to_dict(parsed)
        again["metadata"].pop("uid")
        assert again == data
