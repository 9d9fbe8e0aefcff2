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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if inspect.iscoroutinefunction(getattr(item, "function", None)):
            item.add_marker(pytest.mark.anyio)
        if "control_plane" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.e2e)
