"""End-to-end fixtures: a namespace per test, an async admin client, and the reconciler running
in the test's event loop as its own least-privilege identity (bound to config/rbac/role.yaml
only, so every test also proves the RBAC is sufficient, and the audit log tells its requests
from the test's)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry

from reconciler.app import connect
from reconciler.controller import Controller, ControllerConfig
from reconciler.metrics import Metrics
from tests.controlplane.launcher import LocalControlPlane, wait_for
from tests.waiting import eventually

REPO = Path(__file__).resolve().parents[2]
__all__ = ["RECONCILER_USER", "RunningReconciler", "eventually", "writes_by"]
RECONCILER_USER = "nimbus-kubearmor-e2e"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
T = TypeVar("T")


def rbac_rules(name: str) -> list[dict[str, Any]]:
    """The rules of config/rbac/<name>.yaml."""
    rules: list[dict[str, Any]] = yaml.safe_load(
        (REPO / "config" / "rbac" / f"{name}.yaml").read_text())["rules"]
    return rules


@pytest.fixture(scope="session")
def reconciler_kubeconfig(control_plane: LocalControlPlane) -> Path:
    control_plane.grant(RECONCILER_USER, rbac_rules("role"))
    return control_plane.identity_kubeconfig(RECONCILER_USER)


def grant_metrics_auth(control_plane: LocalControlPlane, user: str = RECONCILER_USER) -> None:
    """What secure /metrics needs besides config/rbac/role.yaml: its own ClusterRole."""
    control_plane.grant(user, rbac_rules("metrics_auth_role"), role="metrics-auth")


def metrics_reader_token(control_plane: LocalControlPlane, namespace: str,
                         name: str = "prometheus") -> str:
    """A token of the ServiceAccount `namespace`/`name`, bound to config/rbac's metrics-reader
    (as a Prometheus's would be)."""
    control_plane.service_account_kubeconfig(namespace, name, rbac_rules("metrics_reader_role"))
    return control_plane.service_account_token(namespace, name)


# What a test's reconciler lists first. An earlier test may have left the API server's watch
# cache of them re-initializing (etcd compacted under it, the server restarted): until it is
# ready the server answers their LISTs 429 "storage is (re)initializing", which a reconciler
# waits out but a test's own first request would not.
SERVED_FROM_CACHE = ("/apis/intent.security.nimbus.com/v1alpha1/nimbuspolicies",
                     "/apis/security.kubearmor.com/v1/kubearmorpolicies")


@pytest.fixture
def namespace(control_plane: LocalControlPlane) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    with control_plane.client() as client:
        client.post("/api/v1/namespaces", json={"metadata": {"name": name}}).raise_for_status()
        wait_for(lambda: all(client.get(path, params={"limit": 1}).status_code == 200
                             for path in SERVED_FROM_CACHE),
                 30, "the API server's caches to serve LISTs")
    yield name


MANY_NAMESPACES = 200


@pytest.fixture(scope="session")
def many_namespaces(control_plane: LocalControlPlane) -> list[str]:
    """200 namespaces (`many-000` ... `many-199`), made once for the whole session by 16
    requests at a time (about a second), shared by the tests of that shape: they create what
    they need in them under names of their own."""
    names = [f"many-{i:03d}" for i in range(MANY_NAMESPACES)]
    with control_plane.client() as client, ThreadPoolExecutor(16) as pool:
        def create(name: str) -> None:
            response = client.post("/api/v1/namespaces", json={"metadata": {"name": name}})
            assert response.status_code in (201, 409), response.text
        list(pool.map(create, names))
    return names


@pytest.fixture
async def api(control_plane: LocalControlPlane) -> AsyncIterator[httpx.AsyncClient]:
    async with control_plane.async_client() as client:
        yield client


class RunningReconciler:
    """The controller running as a task of the test's event loop."""

    def __init__(self, kubeconfig: Path, config: ControllerConfig) -> None:
        self.kubeconfig = kubeconfig
        self.config = config
        self.metrics = Metrics(CollectorRegistry())
        self.controller: Controller | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.start_unsynced()
        assert self.controller is not None
        await asyncio.wait_for(self.controller.wait_synced(), 30)

    async def start_unsynced(self) -> None:
        """Start it without waiting for its caches to list."""
        client = await connect(str(self.kubeconfig))  # (leaves no copy of the key in /tmp)
        self.metrics = Metrics(CollectorRegistry())
        self.controller = Controller(client, self.metrics, self.config)
        self._task = asyncio.create_task(self.controller.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def reconciler(reconciler_kubeconfig: Path, namespace: str
                     ) -> AsyncIterator[RunningReconciler]:
    running = RunningReconciler(reconciler_kubeconfig,
                                ControllerConfig(namespaces=(namespace,), workers=4))
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


def writes_by(control_plane: LocalControlPlane, user: str, since: int = 0) -> list[dict[str, Any]]:
    """Write requests `user` made, from the API server's audit log (entries after `since`)."""
    return [e for e in control_plane.audit_events()[since:]
            if e["user"].get("username") == user and e["verb"] in WRITE_VERBS]
