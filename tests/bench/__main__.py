"""`make bench`: runs the benchmarks, prints a table, writes tests/bench/results.json.

    python -m tests.bench [--quick] [queue ...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

from . import (
    bigpolicy_bench,
    controller_bench,
    memory_bench,
    namespaces_bench,
    queue_bench,
    startup_bench,
)

RESULTS = Path(__file__).parent / "results.json"
SUITES = {"queue": queue_bench.run, "memory": memory_bench.run,
          "startup": startup_bench.run, "controller": controller_bench.run,
          "namespaces": namespaces_bench.run, "bigpolicy": bigpolicy_bench.run}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench")
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where to write the JSON")
    parser.add_argument("suites", nargs="*", default=list(SUITES),
                        help=f"which to run: {', '.join(SUITES)} (default: all)")
    args = parser.parse_args()
    unknown = set(args.suites) - set(SUITES)
    if unknown:
        parser.error(f"unknown suite {', '.join(sorted(unknown))}; choose from {', '.join(SUITES)}")
    results: dict[str, object] = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, "
                                             f"Python {platform.python_version()}"}
    for suite in args.suites:
        print(f">> {suite}", flush=True)
        figures = SUITES[suite](quick=args.quick)
        for name, value in figures.items():
            print(f"   {name:<40} {value:>14,.2f}")
        results.update(figures)
    args.results.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
