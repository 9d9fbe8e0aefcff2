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


# End-to-end tests whose subject is the same on every Kubernetes release (the test harness, the
# benchmarks, the dashboards, our own event loop and connection pool, the perturbation harness):
# `.ci/run` runs them on the newest only, the rest again on the oldest.
ONE_VERSION = {"test_bench_smoke", "test_big_policy", "test_controlplane", "test_demo",
               "test_many_namespaces", "test_prometheus", "test_sieve", "test_soak"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if inspect.iscoroutinefunction(getattr(item, "function", None)):
            item.add_marker(pytest.mark.anyio)
        if "control_plane" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)
            if item.path.stem in ONE_VERSION:
                item.add_marker(pytest.mark.one_version)
