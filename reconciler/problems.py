"""Bad input, as values: what is wrong, in which NimbusPolicy, which rule, which field."""

from __future__ import annotations

import enum

import attrs


class ProblemKind(enum.Enum):
    """The value is the metric label and the Event reason suffix; keep them stable."""

    MALFORMED = "Malformed"
    UNKNOWN_INTENT = "UnknownIntent"
    UNKNOWN_ACTION = "UnknownAction"
    NAME_TOO_LONG = "NameTooLong"
    BAD_PARAM = "BadParam"
    DUPLICATE_INTENT = "DuplicateIntent"
    NAME_TAKEN = "NameTaken"  # a policy name is held by an object this NimbusPolicy does not own
    WRITE_REFUSED = "WriteRefused"  # the API server refused a write (403, 422): an admission
    # policy, a quota, RBAC
    TOO_LARGE = "TooLarge"  # more rules, params or problems than are read or kept (limits.py)


@attrs.frozen
class Problem:
    kind: ProblemKind
    policy: str  # "namespace/name" of the NimbusPolicy
    field: str  # JSON path into the NimbusPolicy, e.g. "spec.rules[2].rule.action"
    message: str
    rule_index: int | None = None
    rule_id: str | None = None
    # What makes two problems the same one, when not the message: a refusal is reported once
    # however the server's wording of it varies between attempts (quota usage, say).
    same_as: str | None = None

    @property
    def identity(self) -> str:
        return self.same_as if self.same_as is not None else self.message

    def __str__(self) -> str:
        return f"NimbusPolicy {self.policy}: {self.field}: {self.message}"
