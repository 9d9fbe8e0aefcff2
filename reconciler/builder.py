"""desired_policies: from a NimbusPolicy to exactly the KubeArmorPolicies it requires. Pure."""

from __future__ import annotations

import attrs

from .intents import CATALOGUE, Intent, RuleInput
from .limits import clipped, quoted
from .model import (
    KubeArmorPolicy,
    LabelSelector,
    NimbusPolicy,
    NimbusRule,
    ObjectMeta,
    OwnerReference,
)
from .names import MANAGED_BY_KEY, MANAGED_BY_VALUE, NIMBUS_API_VERSION
from .problems import Problem, ProblemKind

# The rule actions users write, and the KubeArmor action each becomes (`Enforce` is the
# original tutorial's word for Block).
ACTIONS = {"Block": "Block", "Enforce": "Block", "Audit": "Audit"}
MAX_NAME_LENGTH = 253  # a DNS subdomain


def policy_name(nimbus_policy_name: str, intent_id: str, suffix: str | None) -> str:
    name = f"{nimbus_policy_name}-{intent_id.lower()}"
    return f"{name}-{suffix.lower()}" if suffix else name


def controller_reference(nimbus_policy: NimbusPolicy) -> OwnerReference:
    return OwnerReference(api_version=NIMBUS_API_VERSION, kind="NimbusPolicy",
                          name=nimbus_policy.metadata.name, uid=nimbus_policy.metadata.uid,
                          controller=True, block_owner_deletion=True)


def desired_policies(nimbus_policy: NimbusPolicy
                     ) -> tuple[tuple[KubeArmorPolicy, ...], tuple[Problem, ...]]:
    """Every policy the NimbusPolicy's good rules require, and a problem for each bad rule.
    Deterministic: the same NimbusPolicy always gives the same policies in the same order."""
    policies: list[KubeArmorPolicy] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for index, rule in enumerate(nimbus_policy.spec.rules):
        if rule is None:  # malformed; parse_nimbus_policy reported it
            continue
        problem = _rule_problem(nimbus_policy, index, rule, seen)
        if problem is not None:
            problems.append(problem)
            continue
        seen.add(rule.id)
        intent = CATALOGUE[rule.id]
        problems += _param_problems(nimbus_policy, index, rule, intent)
        policies += _rule_policies(nimbus_policy, rule, intent)
    return tuple(policies), tuple(problems)


def _problem(nimbus_policy: NimbusPolicy, kind: ProblemKind, index: int, rule: NimbusRule,
             field: str, message: str) -> Problem:
    return Problem(kind, nimbus_policy.key, f"spec.rules[{index}]{field}", message, index,
                   clipped(rule.id))


def _rule_problem(nimbus_policy: NimbusPolicy, index: int, rule: NimbusRule,
                  seen: set[str]) -> Problem | None:
    intent = CATALOGUE.get(rule.id)
    if intent is None:
        known = ", ".join(sorted(CATALOGUE))
        return _problem(nimbus_policy, ProblemKind.UNKNOWN_INTENT, index, rule, ".id",
                        f"unknown intent {quoted(rule.id)} (supported: {known})")
    if rule.id in seen:
        return _problem(nimbus_policy, ProblemKind.DUPLICATE_INTENT, index, rule, ".id",
                        f"intent {quoted(rule.id)} appears more than once; the first one applies")
    if rule.rule.action not in ACTIONS:
        return _problem(nimbus_policy, ProblemKind.UNKNOWN_ACTION, index, rule, ".rule.action",
                        f"unknown action {quoted(rule.rule.action)} (use Block, Enforce or Audit)")
    too_long = [name for sub in intent.policies
                if len(name := policy_name(nimbus_policy.metadata.name, rule.id, sub.suffix))
                > MAX_NAME_LENGTH]
    if too_long:
        return _problem(nimbus_policy, ProblemKind.NAME_TOO_LONG, index, rule, ".id",
                        f"policy name {too_long[0][:40]}... would be {len(too_long[0])} characters "
                        f"(at most {MAX_NAME_LENGTH}); shorten the NimbusPolicy name")
    return None


def _param_problems(nimbus_policy: NimbusPolicy, index: int, rule: NimbusRule,
                    intent: Intent) -> list[Problem]:
    problems = []
    for param, values in sorted(rule.rule.params.items()):
        check = intent.params.get(param)
        field = f".rule.params.{clipped(param)}"
        if check is None:
            accepted = ", ".join(sorted(intent.params)) or "none"
            problems.append(_problem(nimbus_policy, ProblemKind.BAD_PARAM, index, rule, field,
                                     f"{intent.id} takes no param {quoted(param)} (accepted: "
                                     f"{accepted}); ignored"))
            continue
        problems += [_problem(nimbus_policy, ProblemKind.BAD_PARAM, index, rule, field,
                              f"{message}; ignored") for message in check(values)]
    return problems


def _rule_policies(nimbus_policy: NimbusPolicy, rule: NimbusRule,
                   intent: Intent) -> list[KubeArmorPolicy]:
    action = ACTIONS[rule.rule.action]
    owner = controller_reference(nimbus_policy)
    selector = LabelSelector(dict(nimbus_policy.spec.selector.match_labels))
    policies = []
    for sub in intent.policies:
        body = sub.body(RuleInput(action=action, params=rule.rule.params))
        if body is None:
            continue
        metadata = ObjectMeta(
            name=policy_name(nimbus_policy.metadata.name, intent.id, sub.suffix),
            namespace=nimbus_policy.metadata.namespace,
            labels={MANAGED_BY_KEY: MANAGED_BY_VALUE},
            annotations={MANAGED_BY_KEY: MANAGED_BY_VALUE},
            owner_references=(owner,),
        )
        spec = attrs.evolve(body, selector=selector, action=action,
                            message=rule.description or body.message or None)
        policies.append(KubeArmorPolicy(metadata=metadata, spec=spec))
    return policies
