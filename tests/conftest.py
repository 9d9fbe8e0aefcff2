"""Shared fixtures. `control_plane` is one real local control plane for the whole session,
started on first use (so unit-only runs never start it) and always torn down."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator

import pytest

from tests.controlplane.assets import build
from tests.controlplane.launcher import LocalControlPlane


@pytest.fixture(scope="session")
def control_plane() -> Iterator[LocalControlPlane]:
    assets = build(log=sys.stderr)
    with LocalControlPlane(assets, log=sys.stderr) as running:
        yield running


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # kr8s, httpx and aiohttp all run on asyncio


# End-to-end tests whose subject is the same on every Kubernetes release (the benchmarks'
# smoke run, the demo, the dashboards and alerts on Prometheus): `.ci/run` runs them on the
# newest only, the rest again on the oldest. Everything that exercises the API server's
# behaviour (the harness's own contract tests, the perturbation points, the soak, the sizes)
# runs on both.
ONE_VERSION = {"test_bench_smoke", "test_demo", "test_prometheus"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if inspect.iscoroutinefunction(getattr(item, "function", None)):
            item.add_marker(pytest.mark.anyio)
        if "control_plane" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)
        if item.path.stem in ONE_VERSION:
            item.add_marker(pytest.mark.one_version)
