"""The Grafana dashboards in grafana/: each panel query's PromQL, and its template variables
filled in as Grafana would."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO / "grafana").glob("*.json"))
# Grafana's own variables, as it would set them for a 1 s scrape interval over the last hour
BUILT_INS = {"__rate_interval": "1m", "__interval": "15s", "__interval_ms": "15000",
             "__range": "1h", "__range_s": "3600", "__range_ms": "3600000"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")
_LABEL_VALUES = re.compile(r"^\s*label_values\((?:(.*),)?\s*(\w+)\s*\)\s*$")


@attrs.frozen
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard}: {self.panel!r} {self.ref_id}: {self.expr}"


@attrs.frozen
class LabelValuesVariable:
    """A query variable `label_values(selector, label)`: the values of `label` on the series
    `selector` matches."""

    name: str
    label: str
    selector: str


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # a collapsed row holds its panels


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def panel_queries(path: Path) -> list[PanelQuery]:
    dashboard = load(path)
    return [PanelQuery(path.name, panel.get("title", ""), target.get("refId", ""), target["expr"])
            for panel in _panels(dashboard.get("panels", []))
            for target in panel.get("targets", []) if target.get("expr")]


def variables(path: Path) -> list[LabelValuesVariable]:
    """The query variables; fails on a kind this test cannot fill in (add it here)."""
    found = []
    for variable in load(path).get("templating", {}).get("list", []):
        if variable["type"] in ("datasource", "interval", "constant", "custom", "textbox"):
            assert variable["type"] == "datasource", f"fill in {variable['type']} {variable['name']}"
            continue
        assert variable["type"] == "query", variable
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(text)
        assert match, f"variable {variable['name']}: only label_values(...) is understood: {text}"
        found.append(LabelValuesVariable(variable["name"], match.group(2), match.group(1) or ""))
    return found


def fill(expr: str, values: Mapping[str, str]) -> str:
    """`expr` with $var, ${var} and [[var]] replaced; fails on a variable it has no value for."""
    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        known = {**BUILT_INS, **values}
        assert name in known, f"no value for ${name} in {expr}"
        return known[name]
    return _VARIABLE.sub(value, expr)
