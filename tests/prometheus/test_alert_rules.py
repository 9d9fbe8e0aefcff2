"""promtool on config/prometheus/rules.yaml: the rules are valid, and alerts_test.yaml's unit
tests pass: every alert fires after its `for:` where it should and stays silent on healthy
series. The tests are also shown to catch a wrong rule."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.prometheus.rules import alerts, binary, rule_groups, write_rule_file

UNIT_TESTS = Path(__file__).with_name("alerts_test.yaml")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary("promtool"), *args], capture_output=True, text=True, timeout=60)


def run_unit_tests(groups: dict[str, Any], directory: Path) -> subprocess.CompletedProcess[str]:
    """alerts_test.yaml against `groups`, each expected alert given its rule's annotations."""
    rules = alerts(groups)
    tests = yaml.safe_load(UNIT_TESTS.read_text())
    for group in tests["tests"]:
        for case in group["alert_rule_test"]:
            for expected in case["exp_alerts"]:
                expected.setdefault("exp_annotations", rules[case["alertname"]]["annotations"])
    write_rule_file(groups, directory / "rules.yaml")
    (directory / "alerts_test.yaml").write_text(yaml.safe_dump(tests, sort_keys=False))
    return promtool("test", "rules", str(directory / "alerts_test.yaml"))


def test_promtool_check_rules(tmp_path: Path) -> None:
    groups = rule_groups()
    result = promtool("check", "rules", str(write_rule_file(groups, tmp_path / "rules.yaml")))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts(groups))} rules found" in result.stdout


def test_every_alert_is_unit_tested_firing_and_silent() -> None:
    cases = [case for group in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
             for case in group["alert_rule_test"]]
    for name in alerts(rule_groups()):
        expectations = [bool(c["exp_alerts"]) for c in cases if c["alertname"] == name]
        assert True in expectations, f"{name}: no test where it fires"
        assert False in expectations, f"{name}: no test where it stays silent"


def test_promtool_unit_tests_pass(tmp_path: Path) -> None:
    result = run_unit_tests(rule_groups(), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_unit_tests_catch_a_wrong_alert(tmp_path: Path) -> None:
    """The reconcile-errors alert as it was (a 5-minute rate, for 15 minutes) never fires for a
    NimbusPolicy that keeps failing on client-go's backoff; and a backlog alert that waits too
    long, or one that ignores the job, fails its tests too."""
    for rule_name, field, wrong in [
        ("NimbusKubeArmorReconcileErrors", "expr",
         'sum(rate(controller_runtime_reconcile_errors_total{controller="nimbuspolicy"}[5m])) > 0'),
        ("NimbusKubeArmorQueueBacklog", "for", "20m"),
        ("NimbusKubeArmorQueueBacklog", "expr", 'max(workqueue_depth{name="nimbuspolicy"}) > 100'),
    ]:
        groups = copy.deepcopy(rule_groups())
        rule = alerts(groups)[rule_name]
        rule[field] = wrong
        if rule_name == "NimbusKubeArmorReconcileErrors":
            rule["for"] = "15m"
        case = tmp_path / f"{rule_name}-{field}"
        case.mkdir()
        result = run_unit_tests(groups, case)
        assert result.returncode != 0, (rule_name, field, wrong)
        assert f"alertname: {rule_name}" in result.stdout + result.stderr, result.stdout
