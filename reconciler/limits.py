"""What one NimbusPolicy may cost: how much of it is read, and how much is kept about it.

The NimbusPolicy CRD puts no bound on `spec.rules` (nor on the params of a rule), so one object
can hold whatever fits under the API server's object-size limit (etcd's 1.5 MiB request limit:
some 32,000 rules). The Nimbus core writes one rule per intent of a binding, a handful; upstream
knows about a dozen intents and this adapter six, so past the first few rules every further one
is a duplicate or an unknown intent. Reading them all would cost CPU and memory in proportion to
the object for no policy at all, so:

- at most MAX_RULES rules are read, and no rule that would take the rules read past
  MAX_PARAM_VALUES param names and values in all; the rest are not read at all, and that is
  reported as one problem naming the field and the count (a rule is applied as written or not
  at all: a rule with its params cut short would mean something else);
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
                   f"the params read past {MAX_PARAM_VALUES} names and values in all")
        return Problem(ProblemKind.TOO_LARGE, policy, "spec.rules",
                       f"{self.total} rules; {why} (a NimbusPolicy has one rule per intent of its "
                       "binding); the others are ignored")


def rules_to_read(rules: Sequence[Any]) -> RulesCut | None:
    """How many of `rules` to read, or None for all of them. Looks at no more of the list than
    it reads."""
    budget = MAX_PARAM_VALUES
    for index, rule in enumerate(rules):
        if index == MAX_RULES:
            return RulesCut(MAX_RULES, len(rules))
        budget -= _param_values(rule)
        if budget < 0:
            return RulesCut(index, len(rules))
    return None


def kept_problems(policy: str, problems: Sequence[Problem]) -> tuple[Problem, ...]:
    """The first MAX_PROBLEMS problems, and one saying how many more there are."""
    if len(problems) <= MAX_PROBLEMS:
        return tuple(problems)
    more = len(problems) - MAX_PROBLEMS
    return (*problems[:MAX_PROBLEMS],
            Problem(ProblemKind.TOO_LARGE, policy, "spec",
                    f"{more} more problems are not reported: at most {MAX_PROBLEMS} are, per "
                    "generation of a NimbusPolicy"))
