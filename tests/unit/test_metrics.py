"""The series Prometheus needs from the start: every known label value of a counter, at 0."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from reconciler.metrics import CONFLICT_RESOURCES, DRIFT_FIELDS, POLICY_WRITES, Metrics
from reconciler.problems import ProblemKind

RECONCILER = Path(__file__).resolve().parents[2] / "reconciler"


def source(module: str) -> str:
    """A module's text: the label values it counts under are string literals in it."""
    return (RECONCILER / module).read_text()


def test_every_problem_kind_and_drift_field_is_exported_at_zero_from_the_start() -> None:
    registry = Metrics(CollectorRegistry()).registry
    for kind in ProblemKind:
        assert registry.get_sample_value("nimbus_kubearmor_problems_total", {"kind": kind.value}) == 0
    for field in DRIFT_FIELDS:
        assert registry.get_sample_value("nimbus_kubearmor_drift_corrections_total",
                                         {"field": field}) == 0
    for verb, resource in POLICY_WRITES:
        assert registry.get_sample_value("nimbus_kubearmor_policy_writes_total",
                                         {"verb": verb, "resource": resource}) == 0
    for resource in CONFLICT_RESOURCES:
        assert registry.get_sample_value("nimbus_kubearmor_write_conflicts_total",
                                         {"resource": resource}) == 0


def test_drift_fields_name_every_field_a_correction_is_counted_under() -> None:
    fields = set(re.findall(r'fields\.append\("(\w+)"\)', source("diff.py")))
    counted = set(re.findall(r'drift_corrections\.labels\("(\w+)"\)', source("controller.py")))
    assert fields | counted == set(DRIFT_FIELDS)  # "missing" is counted by the controller


def test_policy_writes_name_every_write_the_controller_counts() -> None:
    counted = set(re.findall(r'_wrote\("(\w+)", "([\w/]+)"\)', source("controller.py")))
    assert counted == set(POLICY_WRITES)

