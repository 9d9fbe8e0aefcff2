"""Properties of the builder over generated NimbusPolicies, good and bad."""

from __future__ import annotations

import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.builder import desired_policies
from reconciler.intents import CATALOGUE
from reconciler.model import to_dict
from reconciler.parse import parse_nimbus_policy
from reconciler.problems import Problem

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
label = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?\Z")
names = st.one_of(label, st.integers(200, 253).map(lambda n: "a" * n))
intent_ids = st.one_of(st.sampled_from(sorted(CATALOGUE)), st.text(max_size=12))
actions = st.one_of(st.sampled_from(["Block", "Enforce", "Audit"]), st.text(max_size=8))
params = st.dictionaries(
    st.sampled_from(["exclude_caps", "other"]),
    st.lists(st.sampled_from(["sys_admin", "SYS_PTRACE", "nope", "dac_override"]), max_size=4),
    max_size=2,
)
rules = st.fixed_dictionaries(
    {"id": intent_ids, "rule": st.fixed_dictionaries({"action": actions, "params": params})},
    optional={"description": st.text(max_size=20), "type": st.text(max_size=5)},
)
junk: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def document(name: str, rule_list: list[Any], selector: Any) -> dict[str, Any]:
    return {
        "apiVersion": "intent.security.nimbus.com/v1alpha1",
        "kind": "NimbusPolicy",
        "metadata": {"name": name, "namespace": "ns", "uid": "u"},
        "spec": {"selector": selector, "rules": rule_list},
    }


selectors = st.fixed_dictionaries({"matchLabels": st.dictionaries(label, label, max_size=3)})


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(names, st.lists(rules, max_size=8), selectors)
def test_deterministic_valid_names_and_typed_problems(
    name: str, rule_list: list[Any], selector: Any
) -> None:
    policy, parse_problems = parse_nimbus_policy(document(name, rule_list, selector))
    assert policy is not None and parse_problems == ()
    first = desired_policies(policy)
    assert first == desired_policies(policy)
    policies, problems = first
    assert all(
        isinstance(p, Problem) and p.policy == "ns/" + name and p.field.startswith("spec.")
        for p in problems
    )
    for kubearmor_policy in policies:
        assert len(kubearmor_policy.name) <= 253 and DNS_SUBDOMAIN.match(kubearmor_policy.name)
        assert to_dict(kubearmor_policy)["spec"]["action"] in ("Block", "Audit")
    assert len({p.name for p in policies}) == len(policies)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(names, st.lists(rules, max_size=8), selectors)
def test_one_rules_problem_never_removes_another_rules_policies(
    name: str, rule_list: list[Any], selector: Any
) -> None:
    whole, _ = desired_policies(parse_nimbus_policy(document(name, rule_list, selector))[0])  # type: ignore[arg-type]
    expected = []
    seen = set()
    for rule in rule_list:
        if rule["id"] in seen:
            continue
        alone, alone_problems = desired_policies(
            parse_nimbus_policy(document(name, [rule], selector))[0]
        )  # type: ignore[arg-type]
        if alone or not any(
            p.kind.name in ("UNKNOWN_INTENT", "UNKNOWN_ACTION", "NAME_TOO_LONG")
            for p in alone_problems
        ):
            seen.add(rule["id"])
        expected += alone
    assert list(whole) == expected


@settings(max_examples=300)
@given(junk, st.lists(junk, max_size=4), junk)
def test_parse_never_raises_on_junk(metadata: Any, rule_list: list[Any], spec: Any) -> None:
    for data in (
        metadata,
        {"metadata": metadata, "spec": spec},
        {"metadata": {"name": "x"}, "spec": {"selector": spec, "rules": rule_list}},
    ):
        policy, problems = parse_nimbus_policy(data)
        assert all(isinstance(p, Problem) for p in problems)
        if policy is not None:
            desired_policies(policy)
