"""The pure middle of a reconcile: from what was read (the NimbusPolicy, the policies it owns,
what holds the names it needs, what is remembered of it) to everything that should happen: the
writes, the problems to report, the names someone else holds, and whether to wait before
correcting drift again. No I/O and no clock of its own: the same inputs give the same plan."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import attrs

from .builder import desired_policies
from .cached import CachedNimbusPolicy, CachedPolicy
from .diff import Fingerprint, Obj, PolicyDiff, diff_policies, fingerprints, render
from .limits import kept_problems
from .model import KubeArmorPolicy
from .parse import parse_nimbus_policy
from .problems import Problem, ProblemKind

# Someone else (another controller, a GitOps tool) keeps changing a NimbusPolicy's policies
# back: the first correction is immediate, the next ones wait 0.1 s, 0.2 s, ... up to 10 s
# after the previous, and a minute without drift forgives it. A write per change would be a
# fight with no end; this keeps our side of it to a few writes a minute.
DRIFT_PAUSE_BASE = 0.1
DRIFT_PAUSE_MAX = 10.0
DRIFT_FORGIVEN_AFTER = 60.0


@attrs.frozen
class Desired:
    """What a NimbusPolicy requires, small enough to remember for each: the fingerprint of
    each policy by name (in the builder's order) and the problems found in it. The policies
    themselves are built again (`desired_objects`) only when one has to be written and they
    were not just built."""

    fingerprints: Mapping[str, Fingerprint]
    problems: tuple[Problem, ...]  # at most limits.MAX_PROBLEMS, and one counting the rest


def _build(nimbus_policy: CachedNimbusPolicy
           ) -> tuple[tuple[KubeArmorPolicy, ...], tuple[Problem, ...]]:
    parsed, problems = parse_nimbus_policy(nimbus_policy.as_json(), cut=nimbus_policy.rules_cut,
                                           unread_selector=nimbus_policy.selector_too_large)
    if parsed is None:
        return (), problems
    policies, build_problems = desired_policies(parsed)
    return policies, problems + build_problems


def build_desired(nimbus_policy: CachedNimbusPolicy) -> tuple[Desired, dict[str, Obj]]:
    """What to remember, and the JSON of each policy by name (for this reconcile's writes)."""
    policies, problems = _build(nimbus_policy)
    rendered = render(policies)
    return Desired(fingerprints(rendered), kept_problems(nimbus_policy.key, problems)), rendered


def desired_objects(nimbus_policy: CachedNimbusPolicy) -> dict[str, Obj]:
    """The JSON of each policy to write, by name."""
    return render(_build(nimbus_policy)[0])


@attrs.frozen
class DriftStreak:
    """Corrections of drift made in a row, and when the last one was."""

    corrections: int = 0
    last: float = float("-inf")


@attrs.frozen
class DriftDecision:
    pause: float  # seconds to wait before correcting (0: now)
    streak: DriftStreak  # the streak once this correction is made
    insisting: bool  # someone keeps changing them back (worth a warning)


def drift_decision(streak: DriftStreak, now: float) -> DriftDecision:
    corrections = 0 if now - streak.last > DRIFT_FORGIVEN_AFTER else streak.corrections
    pause = 0.0 if corrections == 0 else min(DRIFT_PAUSE_BASE * 2 ** (corrections - 1),
                                             DRIFT_PAUSE_MAX)
    if now < streak.last + pause:
        return DriftDecision(streak.last + pause - now, streak, False)
    return DriftDecision(0.0, DriftStreak(corrections + 1, now), corrections >= 2)


@attrs.frozen
class Plan:
    diff: PolicyDiff
    problems: tuple[Problem, ...]  # bad input, and names held by someone else
    claims: frozenset[str]  # "namespace/name" of policies we need that someone else holds
    waiting_for_gc: tuple[str, ...]  # names still held by a deleted NimbusPolicy of this name
    drift: DriftDecision | None  # set when our policies (not the intent) changed since converged

    @property
    def defer(self) -> float:
        return self.drift.pause if self.drift is not None else 0.0


def plan_reconcile(nimbus_policy: CachedNimbusPolicy, desired: Desired,
                   owned: Sequence[CachedPolicy], named: Callable[[str], CachedPolicy | None], *,
                   converged: tuple[str, int] | None, streak: DriftStreak, now: float) -> Plan:
    """`owned`: the policies controlled by this NimbusPolicy; `named(name)`: the policy of that
    name in its namespace, whoever holds it; `converged`: the (uid, generation) last converged."""
    diff = diff_policies(desired.fingerprints, owned, named)
    problems = list(desired.problems)
    claims, waiting = set(), []
    for conflict in diff.conflicts:
        name = conflict.name
        if conflict.transient:
            waiting.append(name)
            continue
        claims.add(conflict.actual.key)
        problems.append(Problem(ProblemKind.NAME_TAKEN, nimbus_policy.key, "metadata.name",
                                f"KubeArmorPolicy {name} exists and is controlled by "
                                f"{conflict.holder}; it is left alone"))
    listed = {entry.removeprefix("KubeArmorPolicy/") for entry in nimbus_policy.adapter_policies}
    ours_changed = bool(diff.update or any(name in listed for name in diff.create))
    drift = None
    if ours_changed and converged == nimbus_policy.version:
        drift = drift_decision(streak, now)
    return Plan(diff, tuple(problems), frozenset(claims), tuple(waiting), drift)
