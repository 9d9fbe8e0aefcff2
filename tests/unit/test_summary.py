"""What `--once` prints and the exit status it returns, from outcomes made by hand (the e2e
tests in tests/e2e/test_once.py run it on the real server)."""

from __future__ import annotations

import io
import json

import pytest

from reconciler.controller import Outcome
from reconciler.exitcode import ExitCode
from reconciler.kube import ApiError
from reconciler.problems import Problem, ProblemKind
from reconciler.summary import ObjectDiff, Report, document, exit_code, split_updated, text, write

BAD = Problem(ProblemKind.UNKNOWN_INTENT, "ns/bad", "spec.rules[0].id", "unknown intent 'x'",
              rule_index=0, rule_id="x")


def converged(key: str = "ns/a") -> Outcome:
    return Outcome(key, unchanged=2)


def created(key: str = "ns/b") -> Outcome:
    return Outcome(key, created=["b-dnsmanipulation"], status_written=True)


def bad_input() -> Outcome:
    return Outcome("ns/bad", problems=[BAD])


def failed() -> Outcome:
    return Outcome("ns/c", created=["c-pkgmgrs"],
                   errors=[ApiError(403, "Forbidden", "cannot patch nimbuspolicies/status")])


def terminating() -> Outcome:
    return Outcome("ns/d", skipped="its namespace is being deleted", namespace_terminating=True)


@pytest.mark.parametrize(("report", "code"), [
    (Report(dry_run=False, outcomes=[converged()], listed=1), ExitCode.OK),
    (Report(dry_run=False, outcomes=[], listed=0), ExitCode.OK),
    (Report(dry_run=False, outcomes=[converged(), created()], listed=2), ExitCode.OK),
    (Report(dry_run=True, outcomes=[converged()], listed=1), ExitCode.OK),
    (Report(dry_run=True, outcomes=[converged(), created()], listed=2), ExitCode.WOULD_CHANGE),
    (Report(dry_run=False, outcomes=[created(), bad_input()], listed=2), ExitCode.BAD_INPUT),
    (Report(dry_run=True, outcomes=[converged(), bad_input()], listed=2), ExitCode.BAD_INPUT),
    # a change pending outranks bad input elsewhere: the drift check still sees it
    (Report(dry_run=True, outcomes=[created(), bad_input()], listed=2), ExitCode.WOULD_CHANGE),
    (Report(dry_run=False, outcomes=[failed(), bad_input()], listed=2), ExitCode.FAILED),
    (Report(dry_run=True, outcomes=[failed(), created()], listed=2), ExitCode.FAILED),
    (Report(dry_run=False, outcomes=[terminating()], listed=1), ExitCode.FAILED),
    (Report(dry_run=False, error="could not list nimbuspolicies"), ExitCode.NOT_RUN),
    (Report(dry_run=False, outcomes=[failed()], listed=3, interrupted="SIGINT"),
     ExitCode.INTERRUPTED),
    (Report(dry_run=False, error="x", interrupted="SIGTERM"), ExitCode.TERMINATED),
])
def test_exit_code(report: Report, code: ExitCode) -> None:
    assert exit_code(report) is code
    assert text(report).splitlines()[-1].startswith(f"exit {int(code)}: ")
    assert document(report)["exitCode"] == int(code)


def test_exit_codes_are_kubectl_diffs_for_a_dry_run_and_stable() -> None:
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4, 130, 143]


def test_text_summary() -> None:
    report = Report(dry_run=False, outcomes=[converged(), created(), bad_input(), failed(),
                                             terminating()], listed=5)
    assert text(report).splitlines() == [
        "NimbusPolicy ns/b: create b-dnsmanipulation; write status",
        "NimbusPolicy ns/c: create c-pkgmgrs; FAILED: 403 Forbidden: cannot patch "
        "nimbuspolicies/status",
        "NimbusPolicy ns/d: skipped (its namespace is being deleted)",
        "problems:",
        "  NimbusPolicy ns/bad: spec.rules[0].id: unknown intent 'x'",
        "5 NimbusPolicies (1 skipped): created 2, updated 0, deleted 0, unchanged 2, failed 2, "
        "problems 1; 1 status written",
        "exit 3: 2 NimbusPolicies failed",
    ]


def test_dry_run_text_has_the_diffs_first() -> None:
    diff = ObjectDiff("create", "security.kubearmor.com/v1", "KubeArmorPolicy", "ns",
                      "b-dnsmanipulation", None, "diff -u -N LIVE/x MERGED/x\n--- LIVE/x\n"
                      "+++ MERGED/x\n@@ -0,0 +1 @@\n+a: 1\n")
    refused = ObjectDiff("patch", "security.kubearmor.com/v1", "KubeArmorPolicy", "ns", "e",
                         None, "", "test failed at '/spec'")
    lines = text(Report(dry_run=True, outcomes=[created()], listed=1,
                        diffs=[diff, refused])).splitlines()
    assert lines == [
        "diff -u -N LIVE/x MERGED/x", "--- LIVE/x", "+++ MERGED/x", "@@ -0,0 +1 @@", "+a: 1",
        "KubeArmorPolicy ns/e: the patch would fail: test failed at '/spec'",
        "NimbusPolicy ns/b: would create b-dnsmanipulation; would write status",
        "dry run: 1 NimbusPolicies (0 skipped): would create 1, would update 0, would delete 0, "
        "unchanged 0, failed 0, problems 0; 1 status would be written",
        "exit 1: changes would be made",
    ]


def test_not_run_and_interrupted() -> None:
    assert text(Report(dry_run=False, error="cannot reach the API server: ConnectError: "
                       "refused")).splitlines() == [
        "nothing reconciled",
        "exit 4: could not run: cannot reach the API server: ConnectError: refused"]
    interrupted = Report(dry_run=False, outcomes=[created()], listed=10, interrupted="SIGINT",
                         cancelled=["ns/x", "ns/y"])
    assert text(interrupted).splitlines()[-2:] == [
        "1 of 10 NimbusPolicies (0 skipped): created 1, updated 0, deleted 0, unchanged 0, "
        "failed 0, problems 0; 1 status written",
        "exit 130: interrupted by SIGINT; 2 reconciles cut short, a write they sent may have "
        "been made: ns/x, ns/y"]


def test_json_document() -> None:
    outcome = Outcome("ns/a", updated=["a-dnsmanipulation (spec, labels)"], deleted=["a-old"],
                      status_written=True, unchanged=1, problems=[BAD],
                      errors=[ApiError(409, "Conflict", "the object has been modified")])
    diff = ObjectDiff("delete", "security.kubearmor.com/v1", "KubeArmorPolicy", "ns", "a-old",
                      None, "diff ...\n")
    doc = document(Report(dry_run=True, outcomes=[outcome], listed=1, diffs=[diff]))
    assert json.loads(json.dumps(doc)) == doc
    assert doc == {
        "dryRun": True, "exitCode": 3, "result": "failed",
        "message": "exit 3: 1 NimbusPolicy failed", "error": None,
        "counts": {"nimbusPolicies": 1, "reconciled": 1, "skipped": 0, "created": 0,
                   "updated": 1, "deleted": 1, "unchanged": 1, "statusWritten": 1, "failed": 1,
                   "problems": 1, "cancelled": 0},
        "nimbusPolicies": [{
            "namespace": "ns", "name": "a", "created": [],
            "updated": [{"name": "a-dnsmanipulation", "fields": ["spec", "labels"]}],
            "deleted": ["a-old"], "statusWritten": True, "unchanged": 1, "skipped": None,
            "failed": True,
            "errors": [{"code": 409, "reason": "Conflict",
                        "message": "the object has been modified"}],
            "problems": [{"kind": "UnknownIntent", "field": "spec.rules[0].id",
                          "message": "unknown intent 'x'", "rule": 0, "ruleId": "x"}]}],
        "cancelled": [],
        "diff": [{"verb": "delete", "apiVersion": "security.kubearmor.com/v1",
                  "kind": "KubeArmorPolicy", "namespace": "ns", "name": "a-old",
                  "subresource": None, "unifiedDiff": "diff ...\n", "error": None}],
    }
    assert "diff" not in document(Report(dry_run=False, outcomes=[outcome], listed=1))
    assert document(Report(dry_run=False, error="x"))["counts"]["nimbusPolicies"] is None


def test_split_updated() -> None:
    assert split_updated("p (spec, owner)") == ("p", ["spec", "owner"])
    assert split_updated("p") == ("p", [])


def test_user_text_is_escaped() -> None:
    outcome = Outcome("ns/a", problems=[Problem(ProblemKind.UNKNOWN_INTENT, "ns/a",
                                                "spec.rules[0].id", "unknown intent 'x\nexit 0'")])
    lines = text(Report(dry_run=False, outcomes=[outcome], listed=1)).splitlines()
    assert "  NimbusPolicy ns/a: spec.rules[0].id: unknown intent 'x\\nexit 0'" in lines
    assert lines[-1].startswith("exit 2: ")


class ClosedPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError


def test_a_reader_gone_away_changes_not_the_exit_status() -> None:
    assert write(Report(dry_run=True, outcomes=[created()], listed=1), "text", ClosedPipe()) == 1
