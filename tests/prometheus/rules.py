"""The PrometheusRule in config/prometheus/ as the rule files Prometheus and promtool read, and
the Prometheus binaries the tests run (Debian's `prometheus` package: .ci/run and `make test`
install it when missing)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_RULE = REPO / "config" / "prometheus" / "rules.yaml"


def rule_groups(manifest: Path = PROMETHEUS_RULE) -> dict[str, Any]:
    """The PrometheusRule's spec: a rule file's content ({"groups": [...]})."""
    document = yaml.safe_load(manifest.read_text())
    assert document["kind"] == "PrometheusRule", manifest
    return {"groups": document["spec"]["groups"]}


def alerts(groups: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Alerting rules by name."""
    return {rule["alert"]: rule for group in groups["groups"] for rule in group["rules"]
            if "alert" in rule}


def write_rule_file(groups: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(groups, sort_keys=False))
    return path


def binary(name: str) -> str:
    """The path of `prometheus` or `promtool`; fails the test when it is not installed."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install Debian's prometheus package "
                    "(`apt-get install prometheus`; .ci/run and `make test` do it when missing)")
    return found


def job_patterns(groups: dict[str, Any]) -> set[str]:
    """The job=~"..." regexes the alerts select the reconciler's series by."""
    return {pattern for rule in alerts(groups).values()
            for pattern in re.findall(r'\bjob=~"([^"]*)"', rule["expr"])}
