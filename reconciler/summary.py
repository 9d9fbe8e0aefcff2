"""What `--once` reports: the summary for people (text) and for machines (`-o json`), and the exit
status. Pure: a Report in, text or a JSON document out.

The JSON document (one object on stdout; README "Running it" has the shape):

    {"dryRun": bool, "exitCode": int, "result": "ok" | "wouldChange" | "badInput" | "failed" |
     "notRun" | "interrupted" | "terminated", "message": the last line of the text summary,
     "error": why it could not run, or null,
     "counts": {"nimbusPolicies", "reconciled", "skipped", "created", "updated", "deleted",
                "unchanged", "statusWritten", "failed", "problems", "cancelled"},
     "nimbusPolicies": [{"namespace", "name", "created": [name], "updated": [{"name",
                         "fields": [spec | labels | annotations | owner]}], "deleted": [name],
                         "statusWritten": bool, "unchanged": int, "skipped": str | null,
                         "failed": bool, "errors": [{"code", "reason", "message"}],
                         "problems": [{"kind", "field", "message", "rule", "ruleId"}]}],
     "cancelled": ["namespace/name"],
     "diff": [{"verb": create | patch | delete, "apiVersion", "kind", "namespace", "name",
               "subresource": "status" | null, "unifiedDiff": str, "error": str | null}]}

`diff` is there with --dry-run only; `counts.nimbusPolicies` is null when the LIST never
completed."""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

import attrs

from .exitcode import ExitCode
from .logs import escape_control

if TYPE_CHECKING:
    from .controller import Outcome

_UPDATED = re.compile(r"^(?P<name>\S+) \((?P<fields>[^)]*)\)$")
_RESULT = {ExitCode.OK: "ok", ExitCode.WOULD_CHANGE: "wouldChange",
           ExitCode.BAD_INPUT: "badInput", ExitCode.FAILED: "failed", ExitCode.NOT_RUN: "notRun",
           ExitCode.INTERRUPTED: "interrupted", ExitCode.TERMINATED: "terminated"}


@attrs.frozen
class ObjectDiff:
    """One write of a dry run, as a unified diff (objdiff.py)."""

    verb: str
    api_version: str
    kind: str
    namespace: str
    name: str
    subresource: str | None
    text: str
    error: str | None = None  # the patch would not apply to the object as listed


@attrs.frozen
class Report:
    dry_run: bool
    outcomes: Sequence[Outcome] = ()  # in key order
    listed: int | None = None  # NimbusPolicies listed; None: the LISTs did not complete
    error: str | None = None  # why it could not run
    interrupted: str | None = None  # the signal that stopped it: "SIGINT" or "SIGTERM"
    cancelled: Sequence[str] = ()  # reconciles cut short (a write they sent may have landed)
    diffs: Sequence[ObjectDiff] = ()


def failed(outcome: Outcome) -> bool:
    """Failed, for --once: an error, or writes refused because the namespace is being deleted
    (the controller does not retry those, but the NimbusPolicy did not converge)."""
    return outcome.failed or outcome.namespace_terminating


def exit_code(report: Report) -> ExitCode:
    if report.interrupted is not None:
        return ExitCode.TERMINATED if report.interrupted == "SIGTERM" else ExitCode.INTERRUPTED
    if report.error is not None:
        return ExitCode.NOT_RUN
    if any(failed(o) for o in report.outcomes):
        return ExitCode.FAILED
    if report.dry_run and any(o.wrote for o in report.outcomes):
        return ExitCode.WOULD_CHANGE
    if any(o.problems for o in report.outcomes):
        return ExitCode.BAD_INPUT
    return ExitCode.OK


def split_updated(entry: str) -> tuple[str, list[str]]:
    """Outcome.updated's "name (spec, labels)" as ("name", ["spec", "labels"])."""
    match = _UPDATED.match(entry)
    if match is None:
        return entry, []
    return match["name"], [f for f in match["fields"].split(", ") if f]


def counts(report: Report) -> dict[str, Any]:
    outcomes = report.outcomes
    return {
        "nimbusPolicies": report.listed,
        "reconciled": len(outcomes),
        "skipped": sum(1 for o in outcomes if o.skipped),
        "created": sum(len(o.created) for o in outcomes),
        "updated": sum(len(o.updated) for o in outcomes),
        "deleted": sum(len(o.deleted) for o in outcomes),
        "unchanged": sum(o.unchanged for o in outcomes),
        "statusWritten": sum(1 for o in outcomes if o.status_written),
        "failed": sum(1 for o in outcomes if failed(o)),
        "problems": sum(len(o.problems) for o in outcomes),
        "cancelled": len(report.cancelled),
    }


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def verdict(report: Report) -> str:
    """The last line of the text summary: the exit status and what it means."""
    code = exit_code(report)
    n = counts(report)
    if code in (ExitCode.INTERRUPTED, ExitCode.TERMINATED):
        what = f"interrupted by {report.interrupted}"
        if report.cancelled:
            what += (f"; {len(report.cancelled)} reconciles cut short, a write they sent may "
                     f"have been made: {', '.join(report.cancelled)}")
    elif code is ExitCode.NOT_RUN:
        what = f"could not run: {report.error}"
    elif code is ExitCode.FAILED:
        what = f"{_count(n['failed'], 'NimbusPolicy', 'NimbusPolicies')} failed"
    elif code is ExitCode.WOULD_CHANGE:
        what = "changes would be made"
    elif code is ExitCode.BAD_INPUT:
        bad = sum(1 for o in report.outcomes if o.problems)
        what = f"bad input in {_count(bad, 'NimbusPolicy', 'NimbusPolicies')}, " + \
            ("nothing would change" if report.dry_run else "everything else converged")
    else:
        what = "nothing would change" if report.dry_run else "converged"
    return escape_control(f"exit {int(code)}: {what}")


def text(report: Report) -> str:
    """The summary for people: with --dry-run the diffs, then a line per NimbusPolicy that has
    something to say, the problems, the counts, and the verdict."""
    out: list[str] = [d.text.rstrip("\n") for d in report.diffs if d.text]
    out += [escape_control(f"{d.kind} {d.namespace}/{d.name}: the {d.verb} would fail: {d.error}")
            for d in report.diffs if d.error]
    would = "would " if report.dry_run else ""
    for o in report.outcomes:
        actions = ([f"{would}create {n}" for n in o.created] +
                   [f"{would}patch {n}" for n in o.updated] +
                   [f"{would}delete {n}" for n in o.deleted] +
                   ([f"{would}write status"] if o.status_written else []) +
                   [f"FAILED: {e}" for e in o.errors])
        if o.skipped:
            actions.append(f"skipped ({o.skipped})")
        if actions:
            out.append(escape_control(f"NimbusPolicy {o.key}: " + "; ".join(actions)))
    problems = [p for o in report.outcomes for p in o.problems]
    if problems:
        out.append("problems:")
        out += [f"  {escape_control(str(problem))}" for problem in problems]
    n = counts(report)
    if report.listed is None:
        out.append("nothing reconciled")
    else:
        of = f" of {report.listed}" if len(report.outcomes) != report.listed else ""
        verb = ("would create", "would update", "would delete") if report.dry_run else \
            ("created", "updated", "deleted")
        statuses = _count(n["statusWritten"], "status", "statuses")
        out.append(
            f"{'dry run: ' if report.dry_run else ''}{len(report.outcomes)}{of} NimbusPolicies "
            f"({n['skipped']} skipped): {verb[0]} {n['created']}, {verb[1]} {n['updated']}, "
            f"{verb[2]} {n['deleted']}, unchanged {n['unchanged']}, failed {n['failed']}, "
            f"problems {n['problems']}; {statuses} {'would be ' if report.dry_run else ''}"
            "written")
    out.append(verdict(report))
    return "\n".join(out) + "\n"


def _outcome_json(o: Outcome) -> dict[str, Any]:
    namespace, _, name = o.key.partition("/")
    updated = [split_updated(entry) for entry in o.updated]
    return {
        "namespace": namespace, "name": name,
        "created": list(o.created),
        "updated": [{"name": n, "fields": fields} for n, fields in updated],
        "deleted": list(o.deleted),
        "statusWritten": o.status_written,
        "unchanged": o.unchanged,
        "skipped": o.skipped,
        "failed": failed(o),
        "errors": [{"code": e.status, "reason": e.reason, "message": e.message} for e in o.errors],
        "problems": [{"kind": p.kind.value, "field": p.field, "message": p.message,
                      "rule": p.rule_index, "ruleId": p.rule_id} for p in o.problems],
    }


def document(report: Report) -> dict[str, Any]:
    """The summary for machines (`-o json`)."""
    code = exit_code(report)
    doc: dict[str, Any] = {
        "dryRun": report.dry_run,
        "exitCode": int(code),
        "result": _RESULT[code],
        "message": verdict(report),
        "error": report.error,
        "counts": counts(report),
        "nimbusPolicies": [_outcome_json(o) for o in report.outcomes],
        "cancelled": list(report.cancelled),
    }
    if report.dry_run:
        doc["diff"] = [{"verb": d.verb, "apiVersion": d.api_version, "kind": d.kind,
                        "namespace": d.namespace, "name": d.name, "subresource": d.subresource,
                        "unifiedDiff": d.text, "error": d.error} for d in report.diffs]
    return doc


def write(report: Report, output: str, out: TextIO) -> int:
    """Print the report as `output` ("text" or "json"); return the exit status. A reader that
    went away (`| head`) changes neither: the rest is dropped quietly."""
    try:
        if output == "json":
            json.dump(document(report), out, indent=2)
            out.write("\n")
        else:
            out.write(text(report))
        out.flush()
    except BrokenPipeError:
        with contextlib.suppress(AttributeError, OSError, ValueError):
            # what is still buffered must not fail again when Python flushes it at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
    return int(exit_code(report))
