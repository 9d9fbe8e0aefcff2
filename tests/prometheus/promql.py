"""Just enough of PromQL's syntax to take expressions apart: the vector selectors they read, and
the metric each range function (rate, increase, ...) is applied to. Prometheus 2.42 has no
parse API, and these expressions are simple; tested on all of them in test_promql.py."""

from __future__ import annotations

import re

# by (...), without (...), on (...), ignoring (...), group_left (...), group_right (...)
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_RANGE_OR_OFFSET = re.compile(r"\[[^\]]*\]|\boffset\s+-?\w+")
_STRING = r'"(?:[^"\\]|\\.)*"'
_SELECTOR = re.compile(r"(?:\b([a-zA-Z_:][a-zA-Z0-9_:]*))?\s*(\{(?:[^}\"]|" + _STRING + r")*\})|"
                       r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
             "group_left", "group_right", "inf", "nan"}
_RANGE_FUNCTION = re.compile(r"\b(rate|irate|increase|delta|idelta|deriv|predict_linear)\(\s*"
                             r"([a-zA-Z_:][a-zA-Z0-9_:]*)")
# what each range function needs: counters for rate/irate/increase, gauges for the others
COUNTER_FUNCTIONS = frozenset({"rate", "irate", "increase"})


def vector_selectors(expr: str) -> list[str]:
    """Every vector selector in `expr`, e.g. 'up{job="x"}', in order."""
    text = _RANGE_OR_OFFSET.sub(" ", _GROUPING.sub(" ", expr))
    found = []
    for match in _SELECTOR.finditer(text):
        name, matchers, bare = match.group(1), match.group(2), match.group(3)
        if matchers is not None:
            found.append((name or "") + matchers)
        elif bare not in _KEYWORDS and not re.fullmatch(r"\d.*", bare or ""):
            found.append(bare)
    return found


def range_function_metrics(expr: str) -> list[tuple[str, str]]:
    """(function, metric name) for each rate(), increase(), ... applied to a selector."""
    return _RANGE_FUNCTION.findall(expr)


def metric_family(name: str, families: dict[str, str]) -> str | None:
    """The family a sample name belongs to (foo_total -> foo in OpenMetrics, foo_bucket ->
    foo), among the families Prometheus knows."""
    for suffix in ("", "_total", "_bucket", "_count", "_sum"):
        if name.endswith(suffix) and (family := name.removesuffix(suffix) if suffix else name) \
                in families:
            return family
    return None
