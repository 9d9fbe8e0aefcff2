"""Two replicas with --leader-elect: only the leader writes; SIGKILL of the leader hands over
within the lease duration; SIGTERM releases the Lease and the standby takes over within 2 s.
Through the fault proxy: a leader steps down at the first sight of another holder; a renewal
answered late does not stretch the leader's belief past the standby's; a write answered 504 (it
may have landed) keeps the Lease from being released early.

Every test runs with FAST's timings, client-go's proportions (15 s lease, 10 s renew deadline,
2 s retry) at a fifth of their length: each property is one of the ratios (takeover after the
lease, giving up at the renew deadline before the standby's lease runs out), not of the
absolute lengths, so it holds, and fails when broken, at this scale as at client-go's; the
timings of the faults injected are scaled with them."""

from __future__ import annotations

import datetime as dt
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import kr8s.asyncio
import pytest
import yaml
from prometheus_client import CollectorRegistry

from reconciler.kube import KubeClient
from reconciler.leaderelection import LeaderElectionConfig, LeaderElector
from reconciler.metrics import Metrics
from tests.controlplane.launcher import LocalControlPlane, wait_for
from tests.e2e.conftest import writes_by
from tests.e2e.nimbus import create_nimbus_policy, kubearmor_policies, rule
from tests.faultproxy import Delay, FaultProxy, Lost, Rule, SlowAnswer, Stall
from tests.process import ReconcilerProcess
from tests.waiting import eventually

REPO = Path(__file__).resolve().parents[2]
LEASE = "nimbus-kubearmor-leader"
LEASE_RULES = yaml.safe_load((REPO / "config" / "rbac" / "leader_election_role.yaml").read_text()
                             )["rules"]
# client-go's 15 s lease, 10 s renew deadline and 2 s retry, at a fifth (the retry rounded up)
LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = 3.0, 2.0, 0.5
FAST = ("--leader-elect-lease-duration", f"{LEASE_DURATION}s",
        "--leader-elect-renew-deadline", f"{RENEW_DEADLINE}s",
        "--leader-elect-retry-period", f"{RETRY_PERIOD}s")


def replica(control_plane: LocalControlPlane, name: str, namespace: str, *args: str,
            server: str | None = None) -> ReconcilerProcess:
    """A replica as its own identity, bound to config/rbac (the Lease Role in `namespace`);
    `server`: talk to the API server through this address (a fault proxy)."""
    rbac = REPO / "config" / "rbac"
    control_plane.grant(name, yaml.safe_load((rbac / "role.yaml").read_text())["rules"])
    control_plane.grant_in_namespace(
        name, namespace, yaml.safe_load((rbac / "leader_election_role.yaml").read_text())["rules"])
    return ReconcilerProcess(control_plane.identity_kubeconfig(name, server=server), namespace,
                             "--leader-elect", *args,
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
    with replica(control_plane, "replica-a", namespace, *FAST) as a, \
            replica(control_plane, "replica-b", namespace, *FAST) as b:
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
        # the lease duration, and a request
        assert takeover <= LEASE_DURATION + 1, f"took {takeover:.1f}s"
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


def _received(event: dict[str, Any]) -> dt.datetime:
    return dt.datetime.fromisoformat(event["requestReceivedTimestamp"].replace("Z", "+00:00"))


# Each slow write lands within the lease duration after the old leader stopped renewing, as the
# design needs (one landing later is beyond what any lease can cover). Cancelled: the creates go
# one after the other, the first sent before SIGTERM; a Delay between half the grace period (4 s)
# and all of it keeps the second under way when the grace period ends, and it lands at most 5 s
# after SIGTERM, 1.5 s before the lease, renewed until then, can have run out.
@pytest.mark.parametrize("slow_write", [Delay(2.5, lands_anyway=True), Lost(lands_after=1.5)],
                         ids=["cancelled", "answered-504"])
@pytest.mark.anyio  # at collection, for the anyio plugin to parametrize its backend with these
async def test_no_write_from_the_old_leader_after_the_new_leaders_first(
        api: httpx.AsyncClient, namespace: str, control_plane: LocalControlPlane,
        slow_write: Delay | Lost) -> None:
    """SIGTERM while the leader's writes are slow to land (a request sent is as good as applied,
    whatever its client hears): a slow webhook or etcd, so the leader cancels what is still
    under way after the grace period; or a gateway that answers 504 at once and passes the
    request on all the same. The leader takes no new keys, gives its reconciles the grace
    period, cancels the rest and, since a cancelled write or one answered 5xx may still land,
    does not hand the Lease over early: the standby takes it when it expires."""
    with FaultProxy.for_control_plane(control_plane, as_user="slow-a") as proxy, \
            replica(control_plane, "slow-a", namespace, *FAST, server=proxy.url) as a, \
            replica(control_plane, "slow-b", namespace, *FAST) as b:
        a.start()
        wait_for(lambda: holder(control_plane, namespace) == "slow-a", 30, "a to lead")
        b.start()
        wait_for(b.ready, 30, "the standby to be ready")
        slow = proxy.add(Rule(slow_write, kind="write", method="POST", path="/kubearmorpolicies"))
        mark = len(control_plane.audit_events())
        await create_nimbus_policy(api, namespace, "slow", [rule("escapeToHost")])
        wait_for(lambda: slow.hits >= 1, 30, "a's first create to be on its way")
        stopped = time.monotonic()
        assert a.stop(signal.SIGTERM) == 0
        print(f"the old leader stopped in {time.monotonic() - stopped:.1f}s")
        wait_for(lambda: holder(control_plane, namespace) == "slow-b", 30, "b to take over")
        wait_for(lambda: len(_policies(control_plane, namespace)) == 3, 30, "b to converge")
        wait_for(lambda: len([e for e in writes_by(control_plane, "slow-a", mark)
                              if e["verb"] == "create"]) >= slow.hits, 30,
                 "every create a sent to land")
        old = writes_by(control_plane, "slow-a", mark)
        new = writes_by(control_plane, "slow-b", mark)
        last_old, first_new = max(map(_received, old)), min(map(_received, new))
        print(f"{slow.hits} slow creates ({slow_write.name}); the old leader's last write "
              f"{(first_new - last_old).total_seconds():.2f}s before the new leader's first")
        assert last_old < first_new, [(e["verb"], e["objectRef"].get("resource"),
                                       e["requestReceivedTimestamp"]) for e in old]
        assert "not releasing the lease" in a.log_text()


# --- through the fault proxy ----------------------------------------------------------------------


async def elector(control_plane: LocalControlPlane, namespace: str, identity: str,
                  server: str | None = None) -> LeaderElector:
    """A LeaderElector in this event loop for the Lease config/rbac names, as `identity` (a user granted
    its Lease Role in `namespace`), talking to the API server at `server` (a proxy) or directly,
    with FAST's timings."""
    control_plane.grant_in_namespace(identity, namespace, LEASE_RULES)
    api = await kr8s.asyncio.api(kubeconfig=str(
        control_plane.identity_kubeconfig(identity, server=server)))
    return LeaderElector(KubeClient(api), LeaderElectionConfig(
        namespace=namespace, name=LEASE, identity=identity, lease_duration=LEASE_DURATION,
        renew_deadline=RENEW_DEADLINE, retry_period=RETRY_PERIOD), Metrics(CollectorRegistry()))


def take_lease(control_plane: LocalControlPlane, namespace: str, identity: str) -> None:
    """Write `identity` into the Lease as its holder, as another candidate that won it
    would (a forced takeover: its clock, or its lease duration, differs from ours)."""
    url = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{LEASE}"
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with control_plane.client() as admin:
        while True:
            lease = admin.get(url).json()
            lease["spec"].update({"holderIdentity": identity, "leaseDurationSeconds": 60,
                                  "acquireTime": now, "renewTime": now})
            response = admin.put(url, json=lease)
            if response.status_code != 409:  # the leader renewed meanwhile: read it again
                response.raise_for_status()
                return


async def test_the_leader_steps_down_at_the_first_sight_of_another_holder(
        namespace: str, control_plane: LocalControlPlane) -> None:
    """client-go: a renewal that finds another holder fails, and the leader stops. Here the
    leader reads the Lease once after another candidate took it, and gives up there and then,
    rather than retrying (and writing, as the leader) until its renew deadline."""
    with FaultProxy.for_control_plane(control_plane, as_user="seer") as proxy:
        leader = await elector(control_plane, namespace, "seer", proxy.url)
        with anyio.fail_after(10):  # a Lease it may not take would wait for ever
            await leader.acquire()
        renewing: list[bool] = []

        async def renew() -> None:
            renewing.append(await leader.keep_renewing())

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(renew)
            # the leader's Lease requests wait at the proxy while the Lease is taken, so each
            # one this rule lets through reaches the API server after it was
            after = proxy.add(Rule(Stall(), path=f"/leases/{LEASE}"))
            take_lease(control_plane, namespace, "someone-else")
            after.release()
            await eventually(lambda: renewing, 8, "the leader to give up")
            tasks.cancel_scope.cancel()
    reads = proxy.requests(kind="get", rule=after)
    writes = proxy.requests(kind="write", rule=after)
    assert renewing == [False] and not leader.is_leader
    # one read showed another holder: no second look, no renewal (one sent on what it read
    # before is refused: the Lease has changed since)
    assert len(reads) == 1 and all(w.status == 409 for w in writes), \
        (len(reads), [w.status for w in writes])


async def test_a_renewal_answered_late_does_not_stretch_the_leaders_belief(
        namespace: str, control_plane: LocalControlPlane) -> None:
    """The leader's renewal lands at once but its answer comes 1.1 s late (within the renew
    deadline of the try, sent a retry period after the last renewal), and every later request
    for the Lease hangs. The standby saw the renewal land and takes the Lease when it expires,
    3 s after. The leader counts its renew deadline (2 s) from when that renewal was sent, so it
    has given up 1 s before; counted from when the answer came it would believe it leads (and
    write) until 3.1 s."""
    with FaultProxy.for_control_plane(control_plane, as_user="late-a") as proxy:
        leader = await elector(control_plane, namespace, "late-a", proxy.url)
        standby = await elector(control_plane, namespace, "late-b")
        with anyio.fail_after(10):  # a Lease it may not take would wait for ever
            await leader.acquire()
        lost_at: list[float] = []
        acquired_at: list[float] = []

        async def lead() -> None:
            assert not await leader.keep_renewing()
            lost_at.append(time.monotonic())

        async def stand_by() -> None:
            await standby.acquire()
            acquired_at.append(time.monotonic())

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(stand_by)
            slow = proxy.add(Rule(SlowAnswer(1.1), kind="write", method="PUT",
                                  path=f"/leases/{LEASE}",
                                  times=1))
            tasks.start_soon(lead)
            await eventually(lambda: slow.hits, 5, "a renewal on its way")
            proxy.add(Rule(Stall(), path=f"/leases/{LEASE}"))  # what the leader asks next: no answer
            await eventually(lambda: lost_at and acquired_at, 15, "the leader to give up and "
                             "the standby to take over")
    (renewal,) = proxy.requests(rule=slow)
    print(f"the late renewal was sent; the leader gave up {lost_at[0] - renewal.at:.2f}s later, "
          f"the standby took over {acquired_at[0] - renewal.at:.2f}s later")
    assert lost_at[0] < acquired_at[0]
    assert lost_at[0] - renewal.at < RENEW_DEADLINE + 0.5  # the renew deadline, from when it was sent
