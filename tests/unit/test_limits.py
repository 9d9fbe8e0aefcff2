"""The limits on what is read of one NimbusPolicy and kept about it (reconciler/limits.py): a
NimbusPolicy at the API server's size limit is read up to them, reported as bad input with its
count, and what is kept of it stays small whatever its size."""

from __future__ import annotations

import json
from typing import Any

import pytest

from reconciler.cached import CachedNimbusPolicy
from reconciler.limits import (
    MAX_PARAM_VALUES,
    MAX_PROBLEMS,
    MAX_QUOTED,
    MAX_RULES,
    MAX_RULES_SIZE,
    MAX_SELECTOR_SIZE,
    RulesCut,
    json_size,
    kept_problems,
    rules_to_read,
)
from reconciler.parse import parse_nimbus_policy
from reconciler.plan import build_desired
from reconciler.problems import Problem, ProblemKind
from reconciler.render import render_documents

BINDING = {"apiVersion": "intent.security.nimbus.com/v1alpha1", "kind": "SecurityIntentBinding",
           "name": "big", "uid": "binding-uid", "controller": True}


def rule(intent: str, **params: list[str]) -> dict[str, Any]:
    return {"id": intent, "rule": {"action": "Block", "params": params}}


def document(rules: list[Any]) -> dict[str, Any]:
    return {"apiVersion": "intent.security.nimbus.com/v1alpha1", "kind": "NimbusPolicy",
            "metadata": {"name": "big", "namespace": "ns", "uid": "np-uid", "generation": 1,
                         "resourceVersion": "7", "ownerReferences": [BINDING]},
            "spec": {"selector": {"matchLabels": {"app": "big"}}, "rules": rules}}


def at_the_size_limit() -> dict[str, Any]:
    """31,500 rules, 1.54 MB: a good one first, unknown intents, a good one last."""
    return document([rule("dnsManipulation"),
                     *({"id": f"unknown-{i:05d}", "rule": {"action": "Block"}}
                       for i in range(31_498)),
                     rule("escapeToHost")])


def test_every_rule_is_read_up_to_the_limits() -> None:
    assert rules_to_read([rule("dnsManipulation")] * MAX_RULES) is None
    assert rules_to_read([]) is None
    assert rules_to_read([rule("dnsManipulation")] * (MAX_RULES + 1)) == \
        RulesCut(MAX_RULES, MAX_RULES + 1)
    # the param budget: a rule that would go past it is not read, nor any after it
    caps = ["sys_admin"] * (MAX_PARAM_VALUES - 2)  # with its name, one short of the budget
    assert rules_to_read([rule("escapeToHost", exclude_caps=caps), rule("pkgMgrs")]) is None
    assert rules_to_read([rule("pkgMgrs"), rule("escapeToHost", exclude_caps=[*caps, "a", "b"]),
                          rule("dnsManipulation")]) == RulesCut(1, 3)
    # the original tutorial's flat dialect counts too; values of the wrong type count as none
    flat = {"id": "escapeToHost", "action": "Block", "params": {"exclude_caps": caps * 2}}
    assert rules_to_read([flat]) == RulesCut(0, 1)
    assert rules_to_read(["not a rule", {"id": "x", "rule": {"params": {"a": "text"}}}]) is None


def test_a_nimbus_policy_at_the_size_limit_is_read_up_to_the_limit_and_says_so() -> None:
    parsed, problems = parse_nimbus_policy(at_the_size_limit())
    assert parsed is not None and len(parsed.spec.rules) == MAX_RULES
    first = problems[0]
    assert (first.kind, first.field) == (ProblemKind.TOO_LARGE, "spec.rules")
    assert str(first).startswith(f"NimbusPolicy ns/big: spec.rules: 31500 rules; only the first "
                                 f"{MAX_RULES} are read")
    # render (no cluster) reads it the same way: the rule at the end is not applied
    text, rendered_problems = render_documents([at_the_size_limit()])
    assert "big-dnsmanipulation" in text and "escapetohost" not in text
    assert rendered_problems[0] == first


def test_the_cache_keeps_only_the_rules_read_and_the_plan_reports_the_cut() -> None:
    cached = CachedNimbusPolicy.from_json(at_the_size_limit())
    assert cached.rules_cut == RulesCut(MAX_RULES, 31_500)
    assert len(cached.spec_json) < 10_000  # of 1.54 MB
    desired, rendered = build_desired(cached)
    assert list(rendered) == ["big-dnsmanipulation"]
    assert desired.problems[0].kind is ProblemKind.TOO_LARGE
    assert "31500 rules" in desired.problems[0].message
    # 1 cut + 99 unknown intents: all kept
    assert len(desired.problems) == MAX_RULES
    assert CachedNimbusPolicy.from_json(document([rule("dnsManipulation")])).rules_cut is None


def test_problems_kept_are_capped_with_one_counting_the_rest() -> None:
    # every param value a problem: the rules read hold up to MAX_PARAM_VALUES of them
    rules = [rule("escapeToHost", exclude_caps=[f"nope{i}" for i in range(MAX_PARAM_VALUES - 1)])]
    desired, _ = build_desired(CachedNimbusPolicy.from_json(document(rules)))
    assert len(desired.problems) == MAX_PROBLEMS + 1
    last = desired.problems[-1]
    assert (last.kind, last.field) == (ProblemKind.TOO_LARGE, "spec")
    assert last.message.startswith(f"{MAX_PARAM_VALUES - 1 - MAX_PROBLEMS} more problems are "
                                   "not reported")
    few = [Problem(ProblemKind.MALFORMED, "ns/np", "spec", "x")] * 3
    assert kept_problems("ns/np", few) == tuple(few)


def test_values_quoted_in_problems_are_cut_short() -> None:
    huge = "x" * 2_000  # past MAX_QUOTED, within the rules read (MAX_RULES_SIZE)
    rules = [{"id": huge, "rule": {"action": "Block"}},  # unknown intent
             {"id": "swDeploymentTools", "rule": {"action": huge}},  # unknown action
             rule("escapeToHost", **{huge: ["a"]}, exclude_caps=[huge]),  # bad param and value
             {"id": huge, "rule": "not an object"}]  # malformed
    desired, _ = build_desired(CachedNimbusPolicy.from_json(document(rules)))
    assert [p.kind for p in desired.problems] == [
        ProblemKind.MALFORMED, ProblemKind.UNKNOWN_INTENT, ProblemKind.UNKNOWN_ACTION,
        ProblemKind.BAD_PARAM, ProblemKind.BAD_PARAM]
    for problem in desired.problems:
        assert len(problem.message) < 300 and len(problem.field) < 100, problem
        assert len(problem.rule_id or "") <= MAX_QUOTED, problem
    for problem in desired.problems[1:]:
        assert f"{'x' * (MAX_QUOTED - 2)}…" in problem.message + problem.field


def test_json_size_looks_at_no_more_than_its_budget() -> None:
    value = {"a": ["bc", 1, None, {"d": True}]}
    compact = len(json.dumps(value, separators=(",", ":")))
    assert compact <= json_size(value, 1000) <= 2 * compact  # about, never under
    huge = {"labels": {f"k{i}": "v" for i in range(100_000)}}
    assert 100 < json_size(huge, 100) < 200  # stopped soon after 100
    assert json_size(["x" * 1_000_000], 10) > 10


# NimbusPolicies at the size limit whose bytes are not in the number of rules: one rule's
# description, one param value, one rule id, a selector of many labels or of one long value.
# Each is read up to the limits, says so, and what is kept of it is small.
SHAPES = {
    "description": (document([{"id": "dnsManipulation", "description": "d" * 1_400_000,
                               "rule": {"action": "Block"}}]), "spec.rules"),
    "param value": (document([rule("escapeToHost", exclude_caps=["x" * 1_400_000])]),
                    "spec.rules"),
    "rule id": (document([rule("dnsManipulation"), rule("i" * 1_400_000)]), "spec.rules"),
    "selector labels": ({**document([rule("dnsManipulation")]), "spec": {
        "selector": {"matchLabels": {f"k{i:05d}": f"value-{i:05d}" for i in range(60_000)}},
        "rules": [rule("dnsManipulation")]}}, "spec.selector"),
    "selector value": ({**document([rule("dnsManipulation")]), "spec": {
        "selector": {"matchLabels": {"app": "v" * 1_400_000}},
        "rules": [rule("dnsManipulation")]}}, "spec.selector"),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_a_nimbus_policy_at_the_size_limit_of_any_shape_keeps_little(shape: str) -> None:
    obj, field = SHAPES[shape]
    assert len(json.dumps(obj)) > 1_300_000
    cached = CachedNimbusPolicy.from_json(obj)
    assert len(cached.spec_json) < MAX_RULES_SIZE + MAX_SELECTOR_SIZE, \
        f"{len(cached.spec_json)} bytes of its spec kept"
    desired, rendered = build_desired(cached)
    too_large = [p for p in desired.problems if p.kind is ProblemKind.TOO_LARGE]
    assert [p.field for p in too_large] == [field], desired.problems
    assert all(len(p.message) < 300 for p in desired.problems)
    if field == "spec.selector":
        # a selector cut short would select other workloads: nothing of it applies
        assert rendered == {} and "60000 labels" in too_large[0].message \
            if shape == "selector labels" else rendered == {}
        parsed, problems = parse_nimbus_policy(obj)  # render (no cluster) reads it alike
        assert parsed is None and problems[0] == too_large[0]
    elif shape == "rule id":
        assert list(rendered) == ["big-dnsmanipulation"]  # the rule before it applies
        assert too_large[0].message.startswith("2 rules; only the first 1 are read")
    else:
        assert rendered == {}
