"""Our CRDs enforce exactly what upstream's enforce: same names, scope, subresources, printer
columns, and for every field the same type, enum, pattern, bounds, format, default and required
list. Descriptions may differ (ours are our own words)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
OURS = REPO / "config" / "crd" / "bases"
UPSTREAM = REPO.parent / "shared" / "reference" / "crds"
VALIDATION_KEYS = ("type", "enum", "pattern", "minimum", "maximum", "maxLength", "format",
                   "default", "x-kubernetes-preserve-unknown-fields")


def validation(schema: dict[str, Any], path: str = "") -> dict[str, Any]:
    found = {path: {k: schema[k] for k in VALIDATION_KEYS if k in schema}
             | {"required": sorted(schema.get("required", []))}}
    for name, sub in (schema.get("properties") or {}).items():
        found |= validation(sub, f"{path}.{name}")
    if "items" in schema:
        found |= validation(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        found |= validation(schema["additionalProperties"], f"{path}{{*}}")
    return found


def shape(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    return {
        "name": crd["metadata"]["name"],
        "group": crd["spec"]["group"],
        "scope": crd["spec"]["scope"],
        "names": crd["spec"]["names"],
        "version": (version["name"], version["served"], version["storage"]),
        "subresources": version.get("subresources"),
        "columns": sorted(
            (c["name"], c["type"], c["jsonPath"], c.get("priority", 0))
            for c in version.get("additionalPrinterColumns", [])
        ),
        "validation": validation(version["schema"]["openAPIV3Schema"]),
    }


def load(directory: Path) -> dict[str, dict[str, Any]]:
    crds = [yaml.safe_load(p.read_text()) for p in sorted(directory.glob("*.yaml"))]
    return {c["metadata"]["name"]: c for c in crds}


def test_generated_manifests_are_up_to_date() -> None:
    check = subprocess.run([sys.executable, str(REPO / "config/crd/generate.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


@pytest.mark.skipif(not UPSTREAM.is_dir(), reason=f"upstream CRDs not found at {UPSTREAM}")
def test_every_upstream_crd_has_an_equivalent_of_ours() -> None:
    ours, upstream = load(OURS), load(UPSTREAM)
    assert sorted(ours) == sorted(upstream)
    for name in upstream:
        mine, theirs = shape(ours[name]), shape(upstream[name])
        for key in theirs:
            if key == "validation":
                for path in sorted(set(theirs[key]) | set(mine[key])):
                    assert mine[key].get(path) == theirs[key].get(path), f"{name} {path}"
            else:
                assert mine[key] == theirs[key], f"{name} {key}"


def test_our_manifests_are_not_upstream_copies() -> None:
    for path in OURS.glob("*.yaml"):
        assert "controller-gen.kubebuilder.io" not in path.read_text(), path
