"""What one NimbusPolicy may cost: how much of it is read, and how much is kept about it.

The NimbusPolicy CRD puts no bound on `spec.rules` (nor on the params of a rule), so one object
can hold whatever fits under the API server's object-size limit (etcd's 1.5 MiB request limit:
some 32,000 rules). The Nimbus core writes one rule per intent of a binding, a handful; upstream
knows about a dozen intents and this adapter six, so past the first few rules every further one
is a duplicate or an unknown intent. Reading them all would cost CPU and memory in proportion to
the object for no policy at all, so:

- at most MAX_RULES rules are read, and no rule that would take the rules read past
  MAX_PARAM_VALUES param names and values, or past MAX_RULES_SIZE bytes of JSON, in all; the
  rest are not read at all, and that is reported as one problem naming the field and the count
  (a rule is applied as written or not at all: a rule with its params cut short would mean
  something else);
- a selector larger than MAX_SELECTOR_SIZE bytes of JSON is not read at all, and the
  NimbusPolicy is not applied (a selector cut short would select other workloads): reported as
  one problem with its count. The size limit is not reached by rules only: one rule's
  description, or one param value, or a selector can each take the whole 1.5 MiB;
- at most MAX_PROBLEMS problems are kept (and reported) per generation of a NimbusPolicy, and
  one more saying how many were left out;
- a value quoted in a problem's message is cut to MAX_QUOTED characters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from .problems import Problem, ProblemKind

MAX_RULES = 100
MAX_PARAM_VALUES = 256
MAX_RULES_SIZE = 32 * 1024
MAX_SELECTOR_SIZE = 8 * 1024
MAX_PROBLEMS = 100
MAX_QUOTED = 64


def clipped(text: str) -> str:
    """`text` cut short: a message names a value, it does not carry it."""
    return text if len(text) <= MAX_QUOTED else text[:MAX_QUOTED - 1] + "…"


def quoted(value: object) -> str:
    return clipped(repr(value))


def _param_values(rule: Any) -> int:
    """Param names and values in a rule as it is written (in either dialect)."""
    if not isinstance(rule, Mapping):
        return 0
    count = 0
    inner = rule.get("rule")
    for params in (inner.get("params") if isinstance(inner, Mapping) else None,
                   rule.get("params")):
        if isinstance(params, Mapping):
            count += len(params) + sum(len(values) for values in params.values()
                                       if isinstance(values, Sequence)
                                       and not isinstance(values, str))
    return count


def json_size(value: Any, budget: int) -> int:
    """About how many bytes `value` takes as JSON (a string by its length), counted only until
    it is past `budget`: then a number over it (what is past the budget is not looked at)."""
    if isinstance(value, str):
        return len(value) + 2
    if isinstance(value, Mapping):
        size = 2
        for key, item in value.items():
            size += len(str(key)) + 4
            if size > budget:
                break
            size += json_size(item, budget - size)
            if size > budget:
                break
        return size
    if isinstance(value, Sequence):
        size = 2
        for item in value:
            size += json_size(item, budget - size) + 1
            if size > budget:
                break
        return size
    return 5  # a number, true, false or null: short


@attrs.frozen
class RulesCut:
    """Where reading a NimbusPolicy's rules stopped: the first `read` of its `total` rules are
    read, the rest are not."""

    read: int
    total: int

    def problem(self, policy: str) -> Problem:
        if self.read == MAX_RULES:
            why = f"only the first {MAX_RULES} are read"
        else:
            why = (f"only the first {self.read} are read: spec.rules[{self.read}] would take "
                   f"the rules read past {MAX_PARAM_VALUES} param names and values or "
                   f"{MAX_RULES_SIZE // 1024} KiB in all")
        return Problem(ProblemKind.TOO_LARGE, policy, "spec.rules",
                       f"{self.total} rules; {why} (a NimbusPolicy has one rule per intent of its "
                       "binding); the others are ignored")


def rules_to_read(rules: Sequence[Any]) -> RulesCut | None:
    """How many of `rules` to read, or None for all of them. Looks at no more of the list than
    it reads."""
    values, size = MAX_PARAM_VALUES, MAX_RULES_SIZE
    for index, rule in enumerate(rules):
        if index == MAX_RULES:
            return RulesCut(MAX_RULES, len(rules))
        values -= _param_values(rule)
        size -= json_size(rule, size) + 1
        if values < 0 or size < 0:
            return RulesCut(index, len(rules))
    return None


@attrs.frozen
class SelectorTooLarge:
    """A selector that is not read: `labels` labels, more than MAX_SELECTOR_SIZE as JSON."""

    labels: int

    def problem(self, policy: str) -> Problem:
        return Problem(ProblemKind.TOO_LARGE, policy, "spec.selector",
                       f"{self.labels} labels, over {MAX_SELECTOR_SIZE // 1024} KiB: not read, "
                       "and no rule of this NimbusPolicy applies (a selector cut short would "
                       "select other workloads)")


def selector_too_large(selector: Any) -> SelectorTooLarge | None:
    """Whether `selector` is past MAX_SELECTOR_SIZE. Looks at no more of it than that."""
    if json_size(selector, MAX_SELECTOR_SIZE) <= MAX_SELECTOR_SIZE:
        return None
    labels = selector.get("matchLabels") if isinstance(selector, Mapping) else None
    return SelectorTooLarge(len(labels) if isinstance(labels, Mapping) else 0)


def kept_problems(policy: str, problems: Sequence[Problem]) -> tuple[Problem, ...]:
    """The first MAX_PROBLEMS problems, and one saying how many more there are."""
    if len(problems) <= MAX_PROBLEMS:
        return tuple(problems)
    more = len(problems) - MAX_PROBLEMS
    return (*problems[:MAX_PROBLEMS],
            Problem(ProblemKind.TOO_LARGE, policy, "spec",
                    f"{more} more problems are not reported: at most {MAX_PROBLEMS} are, per "
                    "generation of a NimbusPolicy"))
