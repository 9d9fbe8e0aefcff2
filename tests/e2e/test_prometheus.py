"""Prometheus, for real, against a running reconciler: Debian's prometheus on 127.0.0.1 scrapes
the reconciler every second, as config/'s ServiceMonitor has it (HTTPS, insecureSkipVerify, the
token of a ServiceAccount bound to config/rbac's metrics-reader; the reconciler reviews it with
the API server, and the audit log shows one review of each for the whole run), with the
alerting rules loaded, while a workload like the demo's
runs (policies created, a bad rule, a policy edited and one deleted by hand, creates that
admission refuses in a second namespace, every watch cut by the fault proxy it talks through).
Then every PromQL expression of grafana/*.json
(variables filled in as Grafana would) and every alert is evaluated through Prometheus's HTTP
API: none errors, every selector matches series, rate() and increase() read counters only,
each panel query returns series and the workload shows in them, and Prometheus evaluates every
rule without error, the bad-input alert firing."""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.controlplane.launcher import LocalControlPlane, wait_for
from tests.e2e.conftest import RECONCILER_USER, grant_metrics_auth, metrics_reader_token
from tests.e2e.nimbus import create_nimbus_policy, kubearmor_policies, rule
from tests.e2e.refusals import admission_denies, ksp_probe, make_namespace
from tests.e2e.test_metrics_auth import reviews_by
from tests.faultproxy import FaultProxy
from tests.process import ReconcilerProcess
from tests.prometheus import dashboards
from tests.prometheus.promql import (
    COUNTER_FUNCTIONS,
    metric_family,
    range_function_metrics,
    vector_selectors,
)
from tests.prometheus.rules import alerts, rule_groups, write_rule_file
from tests.prometheus.server import PrometheusServer, PromQLError
from tests.prometheus.servicemonitor import scrape_config as operator_scrape_config

REPO = Path(__file__).resolve().parents[2]
JOB = "nimbus-kubearmor-metrics"  # a ServiceMonitor target's job: the metrics Service's name
POD = "nimbus-kubearmor-7d9f8-abcde"
# What the workload must show on the dashboard: (panel, refId) -> label sets that must each be
# on a series whose value is above 0.
SHOWN: dict[tuple[str, str], list[dict[str, str]]] = {
    ("Reconciles by result", "A"): [{"result": "success"}, {"result": "error"}],
    ("Reconcile errors", "A"): [{}],
    ("Reconcile errors", "B"): [{"verb": "create", "code": "403"}],
    ("Retries", "A"): [{}],
    ("API writes by verb", "A"): [{"verb": "create", "resource": "kubearmorpolicies"},
                                  {"verb": "patch", "resource": "kubearmorpolicies"},
                                  {"verb": "patch", "resource": "nimbuspolicies/status"}],
    ("Drift corrections", "A"): [{"field": "spec"}, {"field": "missing"}],
    ("Watch restarts and relists", "A"): [{}],
    ("Leader", "A"): [{"pod": POD}],
    ("Bad input by kind", "A"): [{"kind": "UnknownIntent"}],
    ("Memory", "A"): [{"pod": POD}],
}


def through(proxy: FaultProxy, kubeconfig: Path, directory: Path) -> Path:
    """A copy of `kubeconfig` that connects through `proxy`."""
    config = yaml.safe_load(kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = proxy.url
    path = directory / "through-proxy.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def scrape_config(reconciler: ReconcilerProcess, namespace: str, token_file: Path
                  ) -> dict[str, Any]:
    """The target as the Prometheus operator makes it from config/'s ServiceMonitor (the
    token its bearerTokenFile names read from `token_file`)."""
    monitor = yaml.safe_load((REPO / "config/prometheus/monitor.yaml").read_text())
    (endpoint,) = monitor["spec"]["endpoints"]
    return operator_scrape_config(
        endpoint, JOB, f"127.0.0.1:{reconciler.metrics_port}",
        {"namespace": namespace, "service": JOB, "pod": POD, "endpoint": endpoint["port"]},
        token_file=str(token_file))


def sample(scrape: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in scrape.splitlines()
               if line.startswith(name + "{"))


async def run_workload(api: httpx.AsyncClient, control_plane: LocalControlPlane, namespace: str,
                       denied: str, reconciler: ReconcilerProcess, proxy: FaultProxy) -> None:
    policies = kubearmor_policies(namespace)

    def names() -> dict[str, dict[str, Any]]:
        with control_plane.client() as client:
            return {p["metadata"]["name"]: p for p in client.get(policies).json()["items"]}

    await create_nimbus_policy(api, namespace, "web", [rule("escapeToHost"), rule("dnsManipulation")])
    await create_nimbus_policy(api, namespace, "bad", [rule("dnsManipulation"), rule("nope")])
    await create_nimbus_policy(api, denied, "refused", [rule("pkgMgrs")])
    wanted = {"web-escapetohost-disallowchroot", "web-escapetohost-disallowcapabilities",
              "web-escapetohost-swdeploymenttools", "web-dnsmanipulation", "bad-dnsmanipulation"}
    wait_for(lambda: set(names()) == wanted, 30, "the policies")
    wait_for(lambda: sample(reconciler.metrics(), "controller_runtime_reconcile_errors_total") >= 2,
             30, "the refused create to fail and be retried")

    # Every watch breaks mid-stream. Twice: a watch restart's reason is an open-ended label, so
    # its series starts at 1 and increase() counts from the second.
    restarts = 0.0
    for _ in range(2):
        assert proxy.reset_open(kind="watch") > 0
        wait_for(lambda: sample(reconciler.metrics(), "nimbus_kubearmor_watch_restarts_total")
                 > restarts, 30, "the watches to restart")  # noqa: B023 (called at once)
        wait_for(reconciler.ready, 30, "the watches to be established again")
        restarts = sample(reconciler.metrics(), "nimbus_kubearmor_watch_restarts_total")

    # drift, after the cut: repaired only if the watches came back
    edited, deleted = "web-dnsmanipulation", "web-escapetohost-disallowchroot"
    old_uid = names()[deleted]["metadata"]["uid"]
    with control_plane.client() as client:
        client.patch(f"{policies}/{edited}", json={"spec": {"action": "Audit"}},
                     headers={"Content-Type": "application/merge-patch+json"}).raise_for_status()
        client.delete(f"{policies}/{deleted}").raise_for_status()
    wait_for(lambda: (p := names()).get(edited, {}).get("spec", {}).get("action") == "Block"
             and deleted in p and p[deleted]["metadata"]["uid"] != old_uid,
             30, "the edited policy to be reverted and the deleted one recreated")


class Selectors:
    """Whether a vector selector matches series, asked once."""

    def __init__(self, prometheus: PrometheusServer) -> None:
        self.prometheus = prometheus
        self.matching: set[str] = set()

    def unmatched(self, expr: str) -> list[str]:
        for selector in set(vector_selectors(expr)) - self.matching:
            if self.prometheus.query(selector):
                self.matching.add(selector)
        return [f"{s} matches no series" for s in vector_selectors(expr) if s not in self.matching]


def dashboard_problems(prometheus: PrometheusServer, selectors: Selectors,
                       values: dict[str, str]) -> list[str]:
    """What is wrong with the dashboards' queries now; empty when nothing is."""
    problems = []
    families = prometheus.metric_types()
    for query in (q for path in dashboards.DASHBOARDS for q in dashboards.panel_queries(path)):
        expr = dashboards.fill(query.expr, values)
        try:
            result = prometheus.query(expr)
            problems += [f"{query}: {error}" for error in selectors.unmatched(expr)]
        except PromQLError as error:
            problems.append(f"{query}: {error}")
            continue
        problems += [f"{query}: {error}" for error in counter_problems(expr, families)]
        if not result or any(math.isnan(value) for _, value in result):
            problems.append(f"{query}: returns {result or 'no series'}")
        for shown in SHOWN.get((query.panel, query.ref_id), []):
            if not any(shown.items() <= labels.items() and value > 0 for labels, value in result):
                problems.append(f"{query}: no series {shown} above 0 in {result}")
    return problems


def counter_problems(expr: str, families: dict[str, str]) -> list[str]:
    """rate(), irate() and increase() of anything but a counter (or a histogram's buckets),
    and the gauge functions of anything but a gauge."""
    problems = []
    for function, metric in range_function_metrics(expr):
        family = metric_family(metric, families)
        kind = families.get(family or "")
        allowed = {"counter", "histogram", "summary"} if function in COUNTER_FUNCTIONS else {"gauge"}
        if kind not in allowed:
            problems.append(f"{function}({metric}): {metric} is a {kind or 'metric of no known type'}")
    return problems


def alert_problems(prometheus: PrometheusServer, selectors: Selectors) -> list[str]:
    problems = []
    families = prometheus.metric_types()
    evaluated = prometheus.rules()
    for name, alert in alerts(rule_groups()).items():
        try:
            prometheus.query(alert["expr"])
            problems += [f"{name}: {error}" for error in selectors.unmatched(alert["expr"])]
        except PromQLError as error:
            problems.append(f"{name}: {error}")
        problems += [f"{name}: {error}" for error in counter_problems(alert["expr"], families)]
        rule = evaluated.get(name, {})
        if rule.get("health") != "ok":
            problems.append(f"{name}: Prometheus evaluates it as {rule.get('health')}: "
                            f"{rule.get('lastError')}")
    states = {name: evaluated.get(name, {}).get("state") for name in alerts(rule_groups())}
    expected = {"NimbusKubeArmorBadInput": "firing", "NimbusKubeArmorNoLeader": "inactive",
                "NimbusKubeArmorQueueBacklog": "inactive"}
    problems += [f"{name} is {states[name]}, not {state}" for name, state in expected.items()
                 if states[name] != state]
    return problems


async def test_dashboards_and_alerts_on_a_live_reconciler(
        api: httpx.AsyncClient, control_plane: LocalControlPlane, namespace: str,
        reconciler_kubeconfig: Path, tmp_path: Path) -> None:
    queries = {(q.panel, q.ref_id) for path in dashboards.DASHBOARDS
               for q in dashboards.panel_queries(path)}
    assert set(SHOWN) <= queries, set(SHOWN) - queries  # a renamed panel is not silently skipped
    control_plane.grant_in_namespace(RECONCILER_USER, namespace, yaml.safe_load(
        (REPO / "config/rbac/leader_election_role.yaml").read_text())["rules"])
    grant_metrics_auth(control_plane)
    token = metrics_reader_token(control_plane, namespace)
    token_file = tmp_path / "token"
    token_file.write_text(token)
    rules = write_rule_file(rule_groups(), tmp_path / "rules.yaml")
    denied = make_namespace(control_plane, "e2e-denied")  # where creating policies is refused
    with FaultProxy.for_control_plane(control_plane, as_user=RECONCILER_USER) as proxy, \
            ReconcilerProcess(through(proxy, reconciler_kubeconfig, tmp_path), namespace,
                              "--namespace", denied, "--leader-elect", metrics_token=token,
                              env={"POD_NAME": POD, "POD_NAMESPACE": namespace}) as reconciler:
        mark, started = len(control_plane.audit_events()), time.monotonic()
        reconciler.start()
        async with contextlib.AsyncExitStack() as stack:
            prometheus = stack.enter_context(
                PrometheusServer([scrape_config(reconciler, namespace, token_file)], [rules]))
            await stack.enter_async_context(admission_denies(  # while Prometheus discovers (5 s)
                control_plane, namespace=denied, group="security.kubearmor.com",
                resource="kubearmorpolicies", operations=("CREATE",), probe=ksp_probe(denied)))
            # scraped and leading before anything happens: every counter's first sample is 0
            try:
                wait_for(lambda: prometheus.query(
                    'leader_election_master_status{name="nimbus-kubearmor-leader"} == 1'),
                    30, "Prometheus to scrape a leading reconciler")
            except Exception as error:
                pytest.fail(f"{error}\nreconciler:\n{reconciler.log_text()[-3000:]}\n"
                            f"prometheus:\n{prometheus.log_tail()}")
            await run_workload(api, control_plane, namespace, denied, reconciler, proxy)

            values: dict[str, str] = {}
            for variable in (v for path in dashboards.DASHBOARDS for v in dashboards.variables(path)):
                found = prometheus.label_values(variable.label, variable.selector)
                assert found == [JOB], (variable, found)  # the reconciler's job, and only it
                values[variable.name] = JOB

            last: list[str] = []
            selectors = Selectors(prometheus)

            def settled() -> bool:
                last[:] = (dashboard_problems(prometheus, selectors, values)
                           + alert_problems(prometheus, selectors))
                return not last

            try:
                wait_for(settled, 30, "every query to show the workload", interval=0.5)
            except Exception:
                pytest.fail("\n".join(last))

            # Scrapes every second, for one review of each: the decisions are remembered for a
            # minute (one more per minute, should the run last longer).
            ((_, scraped),) = prometheus.query(f'sum(sum_over_time(up{{job="{JOB}"}}[10m]))')
            reviews = reviews_by(control_plane, RECONCILER_USER, mark)
            minutes = (time.monotonic() - started) / 60
            print(f"{scraped:.0f} scrapes in {minutes * 60:.0f} s cost {dict(reviews)}")
            assert scraped >= 5
            assert set(reviews) == {"tokenreviews", "subjectaccessreviews"}, reviews
            assert max(reviews.values()) <= 1 + int(minutes), reviews
