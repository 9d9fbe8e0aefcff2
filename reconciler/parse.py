"""From the JSON of a NimbusPolicy to a `NimbusPolicy` value, or problems naming what is wrong.

A malformed rule is reported and dropped on its own, so the other rules still take effect; only a
NimbusPolicy whose metadata or selector cannot be read yields nothing. Rules past the limits of
limits.py are not read at all (one problem says so). The original tutorial's flat rule dialect
(`{id, action, params}`) is read as the upstream `{id, rule: {action, params}}`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cattrs

from .limits import RulesCut, SelectorTooLarge, clipped, rules_to_read, selector_too_large
from .model import (
    LabelSelector,
    NimbusPolicy,
    NimbusPolicySpec,
    NimbusPolicyStatus,
    NimbusRule,
    ObjectMeta,
    from_dict,
    parse_errors,
)
from .problems import Problem, ProblemKind


def _malformed(policy: str, field: str, message: str, index: int | None = None,
               rule_id: str | None = None) -> Problem:
    return Problem(ProblemKind.MALFORMED, policy, field, message, index, rule_id)


def _from_tutorial_dialect(rule: Any) -> Any:
    if isinstance(rule, Mapping) and "rule" not in rule and "action" in rule:
        upstream = {k: v for k, v in rule.items() if k not in ("action", "params")}
        upstream["rule"] = {"action": rule["action"], "params": rule.get("params") or {}}
        return upstream
    return rule


def _structure(cls: type[Any], data: Any, policy: str, field: str, index: int | None = None,
               rule_id: str | None = None) -> tuple[Any, list[Problem]]:
    try:
        return from_dict(cls, data), []
    except (cattrs.BaseValidationError, TypeError, ValueError, AttributeError) as error:
        messages = parse_errors(error, field) if isinstance(error, cattrs.BaseValidationError) \
            else [f"{field}: {error}"]
        return None, [_malformed(policy, m.split(": ", 1)[0], m.split(": ", 1)[-1], index, rule_id)
                      for m in messages]


def parse_nimbus_policy(data: Any, default_namespace: str = "default",
                        cut: RulesCut | None = None,
                        unread_selector: SelectorTooLarge | None = None
                        ) -> tuple[NimbusPolicy | None, tuple[Problem, ...]]:
    """`cut`: where a reader before this one (the cache) stopped reading the rules of `data`;
    `unread_selector`: that reader did not read its selector, too large (nor left it in `data`)."""
    if not isinstance(data, Mapping):
        return None, (_malformed("?", "(document)", f"expected an object, got {type(data).__name__}"),)
    raw_meta = data.get("metadata")
    raw_meta = dict(raw_meta) if isinstance(raw_meta, Mapping) else {}
    raw_meta.setdefault("namespace", default_namespace)
    key = f"{raw_meta.get('namespace')}/{raw_meta.get('name', '?')}"
    if data.get("kind", "NimbusPolicy") != "NimbusPolicy":
        return None, (_malformed(key, "kind", f"expected NimbusPolicy, got {data.get('kind')!r}"),)
    if not raw_meta.get("name"):
        return None, (_malformed(key, "metadata.name", "required field missing"),)
    metadata, problems = _structure(ObjectMeta, raw_meta, key, "metadata")
    spec = data.get("spec")
    if not isinstance(spec, Mapping):
        problems.append(_malformed(key, "spec", "required object missing"))
        return None, tuple(problems)
    unread_selector = unread_selector or (selector_too_large(spec["selector"])
                                          if "selector" in spec else None)
    if unread_selector is not None:  # not applied: the selector is dropped, nothing built
        problems.append(unread_selector.problem(key))
        spec = {k: v for k, v in spec.items() if k != "selector"}
    elif "selector" not in spec:
        problems.append(_malformed(key, "spec.selector", "required field missing (an empty "
                                   "selector `{}` selects every workload in the namespace)"))
    raw_selector = spec.get("selector")
    selector, selector_problems = _structure(LabelSelector, {} if raw_selector is None else raw_selector, key,
                                             "spec.selector")
    problems += selector_problems
    raw_rules = spec.get("rules")
    if not isinstance(raw_rules, list):
        problems.append(_malformed(key, "spec.rules", "required list missing"))
        raw_rules = []
    own_cut = rules_to_read(raw_rules)
    if own_cut is not None:
        raw_rules = raw_rules[:own_cut.read]
    cut = cut or own_cut
    if cut is not None:
        problems.append(cut.problem(key))
    if metadata is None or selector is None or "selector" not in spec:
        return None, tuple(problems)

    rules = []
    for index, raw_rule in enumerate(raw_rules):
        rule_id = raw_rule.get("id") if isinstance(raw_rule, Mapping) else None
        rule, rule_problems = _structure(NimbusRule, _from_tutorial_dialect(raw_rule), key,
                                         f"spec.rules[{index}]", index,
                                         clipped(rule_id) if isinstance(rule_id, str) else None)
        problems += rule_problems
        rules.append(rule)  # None keeps the indices of later rules as the user wrote them
    status = None
    if isinstance(data.get("status"), Mapping):
        status, _ = _structure(NimbusPolicyStatus, data["status"], key, "status")
    policy = NimbusPolicy(metadata=metadata, spec=NimbusPolicySpec(selector, tuple(rules)),
                          status=status)
    return policy, tuple(problems)
