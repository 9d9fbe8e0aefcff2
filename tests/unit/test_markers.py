"""The markers tests/conftest.py gives: a misspelt name in ONE_VERSION would mark nothing."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import ONE_VERSION

E2E = Path(__file__).resolve().parents[1] / "e2e"


def test_every_one_version_module_exists() -> None:
    assert all((E2E / f"{name}.py").exists() for name in ONE_VERSION), ONE_VERSION
