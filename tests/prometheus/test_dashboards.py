"""The dashboards cover what the README promises, and the helpers that take their PromQL apart
read it right (tests/e2e/test_prometheus.py evaluates it against a live reconciler)."""

from __future__ import annotations

import pytest

from tests.prometheus import dashboards
from tests.prometheus.promql import metric_family, range_function_metrics, vector_selectors


def test_the_dashboard_covers_every_topic() -> None:
    (path,) = [p for p in dashboards.DASHBOARDS if p.name == "nimbus-kubearmor.json"]
    titles = " ".join(q.panel.lower() for q in dashboards.panel_queries(path))
    for topic in ("reconciles", "errors", "latency", "queue depth", "queue wait", "work duration",
                  "retries", "writes", "drift", "watch restarts", "leader", "bad input", "memory"):
        assert topic in titles, topic


def test_every_query_is_scoped_to_the_job_variable() -> None:
    for path in dashboards.DASHBOARDS:
        assert [v.name for v in dashboards.variables(path)] == ["job"]
        for query in dashboards.panel_queries(path):
            assert all('job=~"$job"' in s for s in vector_selectors(query.expr)), query


def test_fill() -> None:
    assert dashboards.fill('rate(x{job=~"$job"}[$__rate_interval]) + ${job} + [[job]]',
                           {"job": "j"}) == 'rate(x{job=~"j"}[1m]) + j + j'
    with pytest.raises(AssertionError, match="no value for \\$other"):
        dashboards.fill("x{a=\"$other\"}", {})


@pytest.mark.parametrize(("expr", "selectors"), [
    ('sum by (le) (rate(a_bucket{b="c", d=~"e|}"}[5m]))', ['a_bucket{b="c", d=~"e|}"}']),
    ("x and y or on (a) z unless bool w", ["x", "y", "z", "w"]),
    ("histogram_quantile(0.99, sum(rate(h_bucket[5m] offset 1h)))", ["h_bucket"]),
    ('max(up{job="a"}) < 1 or absent(up{job="a"})', ['up{job="a"}', 'up{job="a"}']),
    ('{__name__="x"} > 0', ['{__name__="x"}']),
])
def test_vector_selectors(expr: str, selectors: list[str]) -> None:
    assert vector_selectors(expr) == selectors


def test_range_function_metrics_and_families() -> None:
    assert range_function_metrics("rate(a_total[5m]) / increase( b_bucket{x=\"y\"}[1h])") == [
        ("rate", "a_total"), ("increase", "b_bucket")]
    families = {"a": "counter", "b": "histogram", "c_total": "counter"}
    assert [metric_family(m, families) for m in ("a_total", "b_bucket", "c_total", "d")] == [
        "a", "b", "c_total", None]
