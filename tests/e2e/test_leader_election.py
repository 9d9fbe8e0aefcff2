"""Two replicas with --leader-elect (client-go's defaults: 15 s lease, 10 s renew deadline,
2 s retry): only the leader writes; SIGKILL of the leader hands over within the lease duration;
SIGTERM releases the Lease and the standby takes over within 2 s."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.controlplane.launcher import LocalControlPlane, wait_for
from tests.e2e.conftest import writes_by
from tests.e2e.nimbus import create_nimbus_policy, kubearmor_policies, rule
from tests.process import ReconcilerProcess

REPO = Path(__file__).resolve().parents[2]
LEASE = "nimbus-kubearmor-leader"


def replica(control_plane: LocalControlPlane, name: str, namespace: str) -> ReconcilerProcess:
    """A replica as its own identity, bound to config/rbac (the Lease Role in `namespace`)."""
    rbac = REPO / "config" / "rbac"
    control_plane.grant(name, yaml.safe_load((rbac / "role.yaml").read_text())["rules"])
    control_plane.grant_in_namespace(
        name, namespace, yaml.safe_load((rbac / "leader_election_role.yaml").read_text())["rules"])
    return ReconcilerProcess(control_plane.identity_kubeconfig(name), namespace, "--leader-elect",
                             env={"POD_NAME": name, "POD_NAMESPACE": namespace})


def holder(control_plane: LocalControlPlane, namespace: str) -> str | None:
    with control_plane.client() as client:
        lease = client.get(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{LEASE}")
        return lease.json()["spec"].get("holderIdentity") if lease.status_code == 200 else None


def policy_writers(control_plane: LocalControlPlane, since: int, users: list[str]) -> set[str]:
    return {e["user"]["username"] for u in users for e in writes_by(control_plane, u, since)
            if e.get("objectRef", {}).get("resource") == "kubearmorpolicies"}


async def test_only_the_leader_writes_and_failover(api: httpx.AsyncClient, namespace: str,
                                                   control_plane: LocalControlPlane) -> None:
    mark = len(control_plane.audit_events())
    with replica(control_plane, "replica-a", namespace) as a, \
            replica(control_plane, "replica-b", namespace) as b:
        a.start()
        wait_for(lambda: holder(control_plane, namespace) == "replica-a", 30, "a to lead")
        b.start()
        wait_for(b.ready, 30, "the standby to be ready")
        await create_nimbus_policy(api, namespace, "one", [rule("escapeToHost")])
        wait_for(lambda: len(_policies(control_plane, namespace)) == 3, 30, "a to converge")
        assert policy_writers(control_plane, mark, ["replica-a", "replica-b"]) == {"replica-a"}

        # the leader dies without a word: the standby waits out the lease, then converges
        killed = time.monotonic()
        a.stop(signal.SIGKILL)
        await create_nimbus_policy(api, namespace, "two", [rule("dnsManipulation")])
        wait_for(lambda: holder(control_plane, namespace) == "replica-b", 30, "b to take over")
        wait_for(lambda: len(_policies(control_plane, namespace)) == 4, 30, "b to converge")
        takeover = time.monotonic() - killed
        assert takeover <= 15 + 1, f"took {takeover:.1f}s"  # the lease duration, and a request
        print(f"SIGKILL failover took {takeover:.1f}s")

        # a clean stop releases the lease: the standby (a, restarted) takes it at once
        a.start()
        wait_for(a.ready, 30, "the new standby to be ready")
        stopped = time.monotonic()
        assert b.stop(signal.SIGTERM) == 0
        wait_for(lambda: holder(control_plane, namespace) == "replica-a", 10, "a to lead again",
                 interval=0.02)
        handover = time.monotonic() - stopped
        assert handover <= 2.0, f"took {handover:.2f}s"
        print(f"SIGTERM handover took {handover:.2f}s")


def _policies(control_plane: LocalControlPlane, namespace: str) -> list[dict[str, Any]]:
    with control_plane.client() as client:
        return client.get(kubearmor_policies(namespace)).json()["items"]  # type: ignore[no-any-return]
