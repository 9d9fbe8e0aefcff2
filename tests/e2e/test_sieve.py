"""A fixed sample of the perturbation harness's points, one of each kind (tests/sieve/; `make
sieve` runs every point of the reference workload): one reference run, then one run per point,
each judged by the differential oracle against the reference's end and the pure builder.

Points that find a known defect are strict xfails naming it, and fail only on its symptom: once
the defect is fixed they pass, and strict makes that a failure to notice (remove the mark then).
A failing point replays alone with `make sieve SIEVE_ARGS="--point '<point>'"`.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from tests.controlplane.launcher import LocalControlPlane
from tests.e2e.conftest import RECONCILER_USER
from tests.sieve.points import Point, describe, points_of
from tests.sieve.run import Outcome, Reference, Settings, run

pytestmark = [pytest.mark.faults, pytest.mark.anyio]  # anyio: seen when parametrizing

SETTINGS = Settings()
# Issue 17's known defects, by their symptom in the oracle's words.
DEFECT_1 = ("issue 17 defect 1: a relist leaves a policy deleted meanwhile in the cache (keys "
            "recorded before the LIST, no resourceVersion compared): enforcement missing",
            r"stuck: .*: missing")
DEFECT_2 = ("issue 17 defect 2: a deletion leaves the cache at once, so an older version (a late "
            "watch event, a LIST served before our DELETE) puts it back: a second DELETE",
            r"deleted again, answered 404")
SAMPLE: list[tuple[str, tuple[str, str] | None]] = [
    # a real SIGKILL, mid-reconcile: the restarted process creates the rest, no Event twice
    ("crash@create/kubearmorpolicies/np-b-escapetohost-disallowcapabilities#1", None),
    # np-a's deletion never seen: the new np-a of the same name replaces it in the cache
    ("drop@DELETED/nimbuspolicies/np-a#1", None),
    # a 410 while our DELETE is in flight, the LIST served before it and read after its
    # answer: the LIST puts the deleted policy back
    ("gone@delete/kubearmorpolicies/np-a-swdeploymenttools#1", DEFECT_2),
    # the relist's LIST served after our create was answered and the policy deleted by a user
    ("straddle1@create/kubearmorpolicies/np-b-escapetohost-disallowchroot#1", DEFECT_1),
    # ... between its pages
    ("straddle2@create/kubearmorpolicies/np-b-unauthorizedsatokenaccess#1", None),
    # the echo of our create delivered after our DELETE of it was answered
    ("stale-write@ADDED/kubearmorpolicies/np-a-swdeploymenttools#1", DEFECT_2),
    # a user's policy holding a name seen late: our create refused (AlreadyExists) meanwhile
    ("stale-answer@ADDED/kubearmorpolicies/np-c-pkgmgrs#1", None),
    # np-c's deletion seen after the garbage collector deleted its policies
    ("stale-delete@DELETED/nimbuspolicies/np-c#1", None),
    # np-a's rule change seen, then a relist from the snapshot before it, then seen again
    ("stale-relist@MODIFIED/nimbuspolicies/np-a#2", None),
]


class KnownDefect(AssertionError):
    """The oracle saw the symptom of a defect the issue lists (the only failure an xfail here
    accepts)."""


@pytest.fixture(scope="module")
def reference(control_plane: LocalControlPlane, reconciler_kubeconfig: Path) -> Reference:
    result = asyncio.run(run(control_plane, RECONCILER_USER, None, SETTINGS))
    assert isinstance(result, Reference), f"the reference run failed: {result}"
    return result


def test_the_reference_run_has_every_sampled_point(reference: Reference) -> None:
    points = {str(p) for p in points_of(reference.trace)}
    print(f"reference: {len(reference.trace.writes)} writes, {len(reference.trace.seen)} watch "
          f"events, {len(points)} points in {reference.outcome.seconds:.1f}s")
    assert not [p for p, _ in SAMPLE if p not in points], "the workload no longer has them"
    assert set(reference.trace.steps) >= {"create np-b", "delete np-c"}


@pytest.mark.parametrize("point", [
    pytest.param(point, id=point, marks=[pytest.mark.xfail(strict=True, raises=KnownDefect,
                                                           reason=defect[0])] if defect else [])
    for point, defect in SAMPLE])
async def test_point(point: str, reference: Reference, control_plane: LocalControlPlane) -> None:
    parsed = Point.parse(point)
    print(f"{describe(parsed)}\nreplay: make sieve SIEVE_ARGS=\"--point '{point}'\"")
    outcome = await run(control_plane, RECONCILER_USER, parsed, SETTINGS, reference)
    assert isinstance(outcome, Outcome)
    print(f"{outcome.mode}, {outcome.seconds:.1f}s, {outcome.writes} writes: {outcome.notes}")
    assert outcome.reached, f"the point's moment never came: {outcome.notes}"
    if outcome.passed:
        return
    report = "\n".join([*outcome.problems, "the reconciler's log:", outcome.log])
    defect = dict(SAMPLE)[point]
    if defect is not None and any(re.search(defect[1], p) for p in outcome.problems):
        raise KnownDefect(report)
    raise AssertionError(report)
