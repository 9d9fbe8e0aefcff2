"""`python -m tests.sieve` (make sieve): the reference run, then one run per point, each judged
by the differential oracle; on its own local control plane.

    python -m tests.sieve                     # every point of the reference workload
    python -m tests.sieve --kind crash        # only these kinds (repeatable)
    python -m tests.sieve --point 'crash@create/kubearmorpolicies/np-a-dnsmanipulation#1'
    python -m tests.sieve --list              # the points of a reference run, and exit

A failing point is printed with its problems and the command that replays it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import sys
import time
from collections import Counter

from tests.controlplane.launcher import LocalControlPlane
from tests.sieve.points import KINDS, Point, describe, points_of
from tests.sieve.run import Outcome, Reference, Settings, run
from tests.soak import grant

USER = "nimbus-kubearmor-sieve"


def symptom(problem: str) -> str:
    """A problem without what differs between points (names, uids, steps, numbers)."""
    problem = re.sub(r"\(uid [^)]*\)|after ('[^']*'|\"[^\"]*\")", "…", problem)
    return re.sub(r"np-[a-z0-9-]+|\d+(\.\d+)?", "…", problem)


def load() -> str:
    return "load " + " ".join(f"{x:.1f}" for x in os.getloadavg())


async def sieve(cp: LocalControlPlane, args: argparse.Namespace) -> int:
    settings = Settings(quiet=args.quiet, hold_limit=args.hold_limit)
    started = time.monotonic()
    reference = await run(cp, USER, None, settings)
    assert isinstance(reference, Reference) or not reference.passed, reference
    if not isinstance(reference, Reference):
        print(f"the reference run failed: {reference.problems}\n{reference.log}")
        return 1
    trace = reference.trace
    every = points_of(trace)
    print(f"reference: {len(trace.writes)} writes, {len(trace.seen)} watch events, "
          f"{len(trace.steps)} steps, {len(every)} points in {reference.outcome.seconds:.1f}s")
    if args.list:
        for point in every:
            print(f"  {point}")
        return 0
    chosen = [Point.parse(p) for p in args.point] + \
        [p for p in every if args.kind and p.kind in args.kind]
    chosen = chosen or ([] if args.point or args.kind else every)
    print(f"running {len(chosen)} points ({load()})", flush=True)
    outcomes: list[tuple[Point, Outcome]] = []
    for index, point in enumerate(chosen, 1):
        outcome = await run(cp, USER, point, settings, reference)
        assert isinstance(outcome, Outcome)
        outcomes.append((point, outcome))
        verdict = "FAIL" if not outcome.passed else "pass" if outcome.perturbed else "miss"
        print(f"[{index}/{len(chosen)}] {verdict} {point} ({outcome.mode}, {outcome.seconds:.1f}s, "
              f"{outcome.writes} writes)" + (f": {'; '.join(outcome.notes)}" if outcome.notes
                                             else ""), flush=True)
        if not outcome.passed:
            for problem in outcome.problems:
                print(f"    {problem}")
            print(f"    replay: make sieve SIEVE_ARGS=\"--point '{point}'\"")
            if args.verbose:
                print("    " + outcome.log.replace("\n", "\n    "))
    elapsed = time.monotonic() - started
    print(f"\n{len(outcomes)} runs (and the reference) in {elapsed:.0f}s ({load()})")
    for kind in KINDS:
        of_kind = [o for p, o in outcomes if p.kind == kind]
        if of_kind:
            print(f"  {kind:<13} {len(of_kind):>4} points: {sum(o.passed and o.perturbed for o in of_kind)} "
                  f"passed, {sum(not o.perturbed and o.passed for o in of_kind)} not reached, "
                  f"{sum(not o.passed for o in of_kind)} failed")
    failed = [(p, o) for p, o in outcomes if not o.passed]
    if failed:
        print("\nfailing points:")
        for point, outcome in failed:
            print(f"  {describe(point)}\n    {outcome.problems[0]}")
        print("\nfailing points by symptom:")
        symptoms = Counter(symptom(o.problems[0]) for _, o in failed)
        for text, count in symptoms.most_common():
            print(f"  {count:>4}  {text}")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sieve")
    parser.add_argument("--point", action="append", default=[],
                        help="run this point (kind@key) only; repeatable")
    parser.add_argument("--kind", action="append", choices=sorted(KINDS),
                        help="run the points of this kind only; repeatable")
    parser.add_argument("--list", action="store_true", help="list the points and exit")
    parser.add_argument("--quiet", type=float, default=2.0,
                        help="seconds without a write that end a run (default 2)")
    parser.add_argument("--hold-limit", type=float, default=3.0,
                        help="the longest any point holds a request or an event (default 3)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="print the reconciler's last log lines of a failing point")
    args = parser.parse_args()
    # The reconciler's own log is kept for failing points (-v), not printed as it goes.
    logging.basicConfig(level=logging.ERROR)
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.ERROR)
    from tests.controlplane.assets import build
    with LocalControlPlane(build(log=sys.stdout), log=sys.stdout) as cp:
        grant(cp, USER)
        return asyncio.run(sieve(cp, args))


if __name__ == "__main__":
    raise SystemExit(main())
