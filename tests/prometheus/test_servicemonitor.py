"""The ServiceMonitor check itself, on config/'s YAML as kustomize renders it and on broken
variants of it: each break is reported. (tests/e2e/test_manifests.py runs it on the output of
`kubectl kustomize config/default`.)"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from tests.prometheus.rules import REPO, job_patterns, rule_groups
from tests.prometheus.servicemonitor import service_monitor_problems

NAMESPACE = "nimbus-kubearmor-system"
Docs = list[dict[str, Any]]


def rendered() -> Docs:
    """config/manager and config/prometheus's monitor, in the namespace config/default sets."""
    documents = [d for path in ("config/manager/manager.yaml", "config/prometheus/monitor.yaml")
                 for d in yaml.safe_load_all((REPO / path).read_text()) if d]
    for document in documents:
        if document["kind"] != "Namespace":
            document["metadata"]["namespace"] = NAMESPACE
    return documents


def of(documents: Docs, kind: str) -> dict[str, Any]:
    return next(d for d in documents if d["kind"] == kind)


def container(documents: Docs) -> dict[str, Any]:
    return of(documents, "Deployment")["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def test_config_passes() -> None:
    assert service_monitor_problems(rendered(), job_patterns(rule_groups())) == []
    assert job_patterns(rule_groups()) == {".*nimbus-kubearmor.*"}


BREAKS: dict[str, tuple[Callable[[Docs], None], str]] = {
    "selector": (lambda d: of(d, "ServiceMonitor")["spec"]["selector"]["matchLabels"].update(
        {"app.kubernetes.io/name": "other"}), "selects no Service"),
    "expression": (lambda d: of(d, "ServiceMonitor")["spec"]["selector"].update(
        {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}), "selects no Service"),
    "namespace": (lambda d: of(d, "ServiceMonitor")["spec"].update(
        {"namespaceSelector": {"matchNames": ["monitoring"]}}), "selects no Service"),
    "other namespace": (lambda d: of(d, "ServiceMonitor")["metadata"].update(
        {"namespace": "monitoring"}), "selects no Service"),
    "port name": (lambda d: of(d, "ServiceMonitor")["spec"]["endpoints"][0].update(
        {"port": "metrics"}), "no port named 'metrics'"),
    "target port": (lambda d: of(d, "Service")["spec"]["ports"][0].update(
        {"targetPort": "metrics"}), "targetPort 'metrics' is no container port"),
    "pods": (lambda d: of(d, "Service")["spec"].update({"selector": {"app": "x"}}),
             "selects no pods"),
    "bind address": (lambda d: container(d)["args"].__setitem__(
        1, "--metrics-bind-address=:9090"), "serves /metrics on 9090"),
    "job": (lambda d: of(d, "Service")["metadata"].update({"name": "metrics"}),
            "job 'metrics' does not match '.*nimbus-kubearmor.*'"),
    "path": (lambda d: of(d, "ServiceMonitor")["spec"]["endpoints"][0].update(
        {"path": "/stats"}), "endpoint path /stats is not /metrics"),
    "scheme": (lambda d: of(d, "ServiceMonitor")["spec"]["endpoints"][0].pop("scheme"),
               "scheme http, but /metrics is served over HTTPS"),
    "token": (lambda d: of(d, "ServiceMonitor")["spec"]["endpoints"][0].pop("bearerTokenFile"),
              "no bearer token"),
    "tls": (lambda d: of(d, "ServiceMonitor")["spec"]["endpoints"][0].pop("tlsConfig"),
            "neither skips verification nor names a CA"),
    "plain": (lambda d: container(d)["args"].append("--metrics-secure=false"),
              "scheme https, but /metrics is plain HTTP"),
    "CA": (lambda d: of(d, "ServiceMonitor")["spec"]["endpoints"][0].update({"tlsConfig": {
        "ca": {"secret": {"name": "metrics-cert", "key": "ca.crt"}}}}),
           "CA is from Secret 'metrics-cert', but the reconciler's certificate is self-signed"),
}


@pytest.mark.parametrize("name", BREAKS)
def test_each_break_is_reported(name: str) -> None:
    documents = copy.deepcopy(rendered())
    assert container(documents)["args"][1].startswith("--metrics-bind-address=")
    breaking, reported = BREAKS[name]
    breaking(documents)
    problems = service_monitor_problems(documents, job_patterns(rule_groups()))
    assert any(reported in problem for problem in problems), problems


def test_plain_http_scraped_plainly() -> None:
    documents = copy.deepcopy(rendered())
    container(documents)["args"][1:2] = ["--metrics-bind-address=:8080", "--metrics-secure=false"]
    container(documents)["ports"][0]["containerPort"] = 8080
    endpoint = of(documents, "ServiceMonitor")["spec"]["endpoints"][0]
    for field in ("scheme", "bearerTokenFile", "tlsConfig"):
        del endpoint[field]
    assert service_monitor_problems(documents, job_patterns(rule_groups())) == []


def test_any_namespace_and_a_job_label() -> None:
    documents = copy.deepcopy(rendered())
    monitor = of(documents, "ServiceMonitor")
    monitor["metadata"]["namespace"] = "monitoring"
    monitor["spec"]["namespaceSelector"] = {"any": True}
    monitor["spec"]["jobLabel"] = "app.kubernetes.io/name"  # job: the Service's label's value
    assert service_monitor_problems(documents, job_patterns(rule_groups())) == []
