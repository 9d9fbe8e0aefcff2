"""NimbusPolicies at the API server's object-size limit, for the e2e test and the benchmark: the
policy, the reconciler leader-elected in the caller's event loop, and what is read back.

The limit is etcd's request limit (--max-request-bytes, 1.5 MiB by default): the API server
answers "etcdserver: request is too large" past about 32,000 rules of the shape below (1.57 MB
as stored); its own limit on a request body (3 MiB) is never the one reached. The policies
here are 31,500 rules, 1.54 MB: room is left for the status the reconciler writes.
"""

from __future__ import annotations

import contextlib
import enum
import gc
import itertools
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
from prometheus_client import CollectorRegistry

from reconciler.app import connect
from reconciler.controller import Controller, ControllerConfig
from reconciler.leaderelection import LeaderElectionConfig, LeaderElector
from reconciler.manager import Manager
from reconciler.memory import freeze_startup_objects
from reconciler.metrics import Metrics
from tests.controlplane.launcher import LocalControlPlane

RULES = 31_500  # 1.54 MB stored; etcd refuses past about 32,000 (1.57 MB)
RETRY_PERIOD = 2.0  # client-go's default, and ours
GROUP = "intent.security.nimbus.com/v1alpha1"
PATH = f"/apis/{GROUP}"


def nimbus_policies(namespace: str) -> str:
    return f"{PATH}/namespaces/{namespace}/nimbuspolicies"


def rule(intent: str) -> dict[str, Any]:
    return {"id": intent, "rule": {"action": "Block"}}


def body(name: str, owner: dict[str, Any], rules: list[dict[str, Any]]) -> bytes:
    """A NimbusPolicy as the Nimbus core writes it (its binding as controller), as JSON."""
    return json.dumps({
        "apiVersion": GROUP, "kind": "NimbusPolicy",
        "metadata": {"name": name, "ownerReferences": [{
            "apiVersion": owner["apiVersion"], "kind": owner["kind"],
            "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}]},
        "spec": {"selector": {"matchLabels": {"app": name}}, "rules": rules}},
        separators=(",", ":")).encode()


def big_body(name: str, owner: dict[str, Any]) -> bytes:
    """A NimbusPolicy of RULES rules: a good one first, unknown intents, and a good one last
    (past the rules read, so not applied)."""
    rules = [rule("dnsManipulation")]
    rules += [{"id": f"unknown-{i:05d}", "rule": {"action": "Block"}} for i in range(RULES - 2)]
    rules.append(rule("escapeToHost"))
    return body(name, owner, rules)


async def post(api: httpx.AsyncClient, namespace: str, content: bytes) -> None:
    """Create it; its answer (the object, 1.5 MB for a big one) is read but not decoded: the
    caller's event loop is the one measured."""
    response = await api.post(nimbus_policies(namespace), content=content, timeout=120,
                              headers={"Content-Type": "application/json"})
    assert response.status_code == 201, response.text[:300]


async def create_binding(api: httpx.AsyncClient, namespace: str) -> dict[str, Any]:
    response = await api.post(f"{PATH}/namespaces/{namespace}/securityintentbindings", json={
        "apiVersion": GROUP, "kind": "SecurityIntentBinding", "metadata": {"name": "owner"},
        "spec": {"intents": [{"name": "dnsManipulation"}], "selector": {}}})
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]


class AuditTail:
    """`user`'s requests in `namespace` from now on, from the API server's audit log (read as it
    grows: tests/controlplane/auditlog.py parses only the lines written since its last read),
    kept as they are read. Asking the API server instead would make it decode 1.5 MB objects
    again (a second or more each, here). Read it in a worker thread (anyio.to_thread.run_sync)
    when the caller's event loop is the one measured."""

    def __init__(self, control_plane: LocalControlPlane, user: str, namespace: str) -> None:
        self.control_plane = control_plane
        self.user, self.namespace = user, namespace
        self.mark = len(control_plane.audit_events())
        self.events: list[dict[str, Any]] = []

    def read(self) -> list[dict[str, Any]]:
        """Every one of the requests (that has completed) so far."""
        logged = self.control_plane.audit_events()
        for event in logged[self.mark:]:
            if event["user"].get("username") == self.user and event["stage"] == \
                    "ResponseComplete" and (event.get("objectRef") or {}).get("namespace") \
                    == self.namespace:
                self.events.append(event)
        self.mark = len(logged)
        return self.events

    def status_writes(self) -> set[str]:
        """The NimbusPolicies whose status was written (successfully)."""
        return {event["objectRef"]["name"] for event in self.read()
                if event["objectRef"].get("resource") == "nimbuspolicies"
                and event["verb"] == "patch" and event["objectRef"].get("subresource") == "status"
                and event["responseStatus"]["code"] == 200}

    def lease_updates(self) -> list[int]:
        """The status of each update of a Lease."""
        return [event["responseStatus"]["code"] for event in self.read()
                if event["objectRef"].get("resource") == "leases" and event["verb"] == "update"]


def deep_size(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes held by `obj` and everything it refers to (values shared with every other object,
    like enum members and classes, excepted)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, type | enum.Enum) or obj is None:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, list | tuple | set | frozenset):
        size += sum(deep_size(item, seen) for item in obj)
    elif attrs.has(type(obj)):
        size += sum(deep_size(getattr(obj, a.name), seen) for a in attrs.fields(type(obj)))
    return size


def kept_for(controller: Controller, key: str) -> int:
    """What the controller keeps for one NimbusPolicy: its cached value and its key state."""
    return deep_size(controller.nimbus_policies.get(key)) + deep_size(controller.states.get(key))


@contextlib.contextmanager
def started_process() -> Iterator[None]:
    """This process's objects as `python -m reconciler` has them once started: what exists so
    far frozen (memory.freeze_startup_objects), so that a full collection walks only what
    comes after. A test process without it holds 300,000 more objects (pytest's, the tests'),
    and a full collection of them (45-100 ms here) would stall the loop measured."""
    freeze_startup_objects()
    try:
        yield
    finally:
        gc.unfreeze()


class LeadingReconciler:
    """The manager of `python -m reconciler --leader-elect`, in the caller's event loop."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self.manager = Manager(
            lambda: connect(str(kubeconfig)), Metrics(CollectorRegistry()),
            ControllerConfig(namespaces=(namespace,), workers=4),
            LeaderElectionConfig(namespace=namespace, identity="big-policy-test",
                                 retry_period=RETRY_PERIOD),
            "127.0.0.1:0", "127.0.0.1:0", grace=1.0)
        self.exit_status: int | None = None

    @property
    def controller(self) -> Controller:
        assert self.manager.controller is not None
        return self.manager.controller

    async def run(self) -> None:
        self.exit_status = await self.manager.run()

    def leading(self) -> bool:
        elector = self.manager.elector
        return elector is not None and elector.is_leader and self.manager.controller is not None \
            and not self.controller.readiness()


class RenewalClock:
    """When the elector began each attempt to renew the Lease and when each succeeded, by the
    reconciler's own clock: how late an attempt began after the retry period is what this
    process's delays add (its event loop, or the machine not running it), not the API server's
    time to answer. Observes the elector; changes nothing it does."""

    def __init__(self, elector: LeaderElector) -> None:
        self.attempts: list[tuple[float, float, bool]] = []  # (began, ended, renewed)
        self.began: list[float] = []  # of every attempt, those under way included
        attempt = elector._try_acquire_or_renew

        async def observed() -> bool:
            began = time.monotonic()
            self.began.append(began)
            renewed = await attempt()
            self.attempts.append((began, time.monotonic(), renewed))
            return renewed

        elector._try_acquire_or_renew = observed  # type: ignore[method-assign]

    def lateness(self) -> list[float]:
        """For each attempt after the first: seconds past the retry period since the last."""
        return [began - ended - RETRY_PERIOD for (_, ended, _), (began, _, _)
                in itertools.pairwise(self.attempts)]

    def failed(self) -> int:
        return sum(not renewed for _, _, renewed in self.attempts)
