"""Leader election on a coordination.k8s.io/v1 Lease, with client-go's algorithm and defaults.

Only the holder of the Lease reconciles. A candidate takes the Lease when it is free or when its
holder has not renewed it for leaseDurationSeconds, judged by this process's own clock from the
moment it last saw the record change (clocks of different machines are never compared). Every
update carries the resourceVersion it read, so two candidates can never both win. The leader
renews every retryPeriod and gives up (the process exits) if it could not renew within
renewDeadline, counted from when its last successful renewal was *sent*: the others count the
lease from when they see that renewal, which is later, so a slow answer cannot stretch our
belief past theirs (client-go counts from when the answer came). A leader that finds another
holder in the Lease steps down at once (client-go's IsLeader() turns false on that read, but its
renewal loop tries again until the renew deadline, and its callers go on meanwhile). On shutdown
the leader releases the Lease. Beyond client-go, a standby also watches the Lease, so a released
Lease is taken within a request's time rather than at the next jittered retry.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import os
import random
import socket
import uuid
from pathlib import Path
from typing import Any

import anyio
import attrs

from .clock import Clock, MonotonicClock
from .kube import LEASES, ApiError, KubeClient, api_error
from .metrics import Metrics
from .reflector import SHORT_WATCH_SECONDS

log = logging.getLogger(__name__)
FIELD_MANAGER = "nimbus-kubearmor"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@attrs.frozen
class LeaderElectionConfig:
    namespace: str
    name: str = "nimbus-kubearmor-leader"
    identity: str = attrs.field(factory=lambda: default_identity())
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0


def default_identity() -> str:
    """The pod's name (downward API), else hostname_uuid as client-go does."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}_{uuid.uuid4()}"


def default_namespace() -> str | None:
    """The pod's namespace (downward API or the service account), else None."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
    except OSError:
        return None


class Attempt(enum.Enum):
    """What one try at acquiring or renewing the Lease found."""

    HOLDING = "we hold the Lease"  # created, taken over or renewed
    HELD_BY_ANOTHER = "another holder's lease runs"
    FAILED = "no answer, or a conflict: try again"


def _micro_time(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, client: KubeClient, config: LeaderElectionConfig, metrics: Metrics,
                 clock: Clock | None = None) -> None:
        self.client = client
        self.config = config
        self.clock = clock or MonotonicClock()
        self._status = metrics.leader_election_master_status.labels(config.name)
        self._status.set(0)
        self.leading = anyio.Event()
        # The last Lease record read and the local time it was first seen as it is: expiry is
        # judged from here, never from the timestamps another machine wrote.
        self._observed: dict[str, Any] | None = None
        self._observed_at = 0.0
        self._lease: dict[str, Any] | None = None  # the object, for its resourceVersion
        self._changed = anyio.Event()  # the watch saw the Lease change
        self._expires_at: float | None = None  # local time another holder's lease runs out
        # Local time our last successful acquire or renewal was sent: it holds the Lease for
        # renewDeadline from then, whenever its answer came.
        self._renewed_at = 0.0
        self.healthy = False  # the last attempt reached the API server
        self._stop_renewing = anyio.Event()
        client.expect_streams(1)  # a standby's watch of the Lease

    @property
    def is_leader(self) -> bool:
        return self.leading.is_set()

    async def acquire(self) -> None:
        """Return once this process holds the Lease."""
        cfg = self.config
        log.info("waiting to become leader", extra={"lease": f"{cfg.namespace}/{cfg.name}",
                                                    "identity": cfg.identity})
        async with anyio.create_task_group() as watcher:
            watcher.start_soon(self._watch_lease)
            while await self._try_acquire_or_renew() is not Attempt.HOLDING:
                self._changed = anyio.Event()
                # the next try: after the retry period, when the holder's lease runs out (a
                # watched Lease tells us each renewal), or as soon as the Lease changes
                wait = cfg.retry_period * (1 + random.random() * 0.2)
                if self._expires_at is not None:
                    wait = min(wait, max(0.01, self._expires_at - self.clock.now() + 0.01))
                with anyio.move_on_after(wait):
                    await self._changed.wait()
            watcher.cancel_scope.cancel()
        self.leading.set()
        self._status.set(1)
        log.info("became leader", extra={"lease": f"{cfg.namespace}/{cfg.name}",
                                         "identity": cfg.identity})

    async def keep_renewing(self) -> bool:
        """Renew a retryPeriod after the last renewal was sent, until stop_renewing() (returns
        True); return False (leadership lost) as soon as the Lease is found held by another,
        or once renewDeadline has passed since the last successful renewal was sent. A renewal
        under way is never cut short by stop_renewing(): a request cancelled mid-flight may
        still be applied, and the release that follows would then carry a stale
        resourceVersion."""
        cfg = self.config
        while True:
            with anyio.move_on_after(self._renewed_at + cfg.retry_period - self.clock.now()):
                await self._stop_renewing.wait()
            if self._stop_renewing.is_set():
                return True
            attempt = Attempt.FAILED
            with anyio.move_on_after(self._renewed_at + cfg.renew_deadline - self.clock.now()):
                while (attempt := await self._try_acquire_or_renew()) is Attempt.FAILED:
                    if self._stop_renewing.is_set():
                        return True
                    await anyio.sleep(cfg.retry_period / 4)
            if attempt is Attempt.HOLDING:
                continue
            self.leading = anyio.Event()
            self._status.set(0)
            log.error("leader election lost", extra={
                "lease": f"{cfg.namespace}/{cfg.name}",
                "reason": "held by another" if attempt is Attempt.HELD_BY_ANOTHER else
                          "not renewed within the renew deadline",
                "holder": (self._observed or {}).get("holderIdentity")})
            return False

    def stop_renewing(self) -> None:
        self._stop_renewing.set()

    async def release(self) -> None:
        """Give the Lease up so a standby takes over at once (best effort)."""
        if not self.is_leader or self._lease is None:
            return
        record = dict(self._lease.get("spec") or {})
        now = _micro_time(dt.datetime.now(dt.UTC))
        record.update({"holderIdentity": None, "leaseDurationSeconds": 1, "renewTime": now,
                       "acquireTime": now})
        body = {**self._lease, "spec": record}
        try:
            with anyio.fail_after(self.config.retry_period):
                await self.client.replace(LEASES, self.config.namespace, self.config.name, body,
                                          FIELD_MANAGER)
            log.info("released the lease", extra={"lease": self.config.name})
        except (ApiError, TimeoutError) as error:
            log.warning("could not release the lease", extra={"error": str(error)})
        self.leading = anyio.Event()
        self._status.set(0)

    async def _try_acquire_or_renew(self) -> Attempt:
        cfg = self.config
        now_wall = _micro_time(dt.datetime.now(dt.UTC))
        try:
            lease = await self.client.get(LEASES, cfg.namespace, cfg.name)
            if lease is None:
                first: dict[str, Any] = {
                    "holderIdentity": cfg.identity, "leaseDurationSeconds": int(cfg.lease_duration),
                    "acquireTime": now_wall, "renewTime": now_wall, "leaseTransitions": 0}
                sent = self.clock.now()
                self._lease = await self.client.create(LEASES, cfg.namespace, {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": cfg.name, "namespace": cfg.namespace},
                    "spec": first}, FIELD_MANAGER)
                self._observe(first, sent)
                self._renewed_at = sent
                self.healthy = True
                return Attempt.HOLDING
            record: dict[str, Any] = lease.get("spec") or {}
            self._observe(record)
            self.healthy = True
            holder = record.get("holderIdentity") or ""
            duration = float(record.get("leaseDurationSeconds") or cfg.lease_duration)
            self._expires_at = self._observed_at + duration
            if holder and holder != cfg.identity and self.clock.now() <= self._expires_at:
                return Attempt.HELD_BY_ANOTHER
            mine = holder == cfg.identity
            new_record = {
                "holderIdentity": cfg.identity,
                "leaseDurationSeconds": int(cfg.lease_duration),
                "acquireTime": record.get("acquireTime") if mine else now_wall,
                "renewTime": now_wall,
                "leaseTransitions": int(record.get("leaseTransitions") or 0) + (0 if mine else 1),
            }
            sent = self.clock.now()
            self._lease = await self.client.replace(LEASES, cfg.namespace, cfg.name,
                                                    {**lease, "spec": new_record}, FIELD_MANAGER)
            self._observe(new_record, sent)
            self._renewed_at = sent
            return Attempt.HOLDING
        except Exception as failure:
            error = api_error(failure)
            if error is None:
                raise
            self.healthy = error.status != 0
            if not error.conflict and not error.already_exists:
                log.warning("lease update failed", extra={"error": str(error)})
            return Attempt.FAILED

    def _observe(self, record: dict[str, Any], at: float | None = None) -> None:
        """Remember `record` and, if it changed, when it was seen (`at`: our own write of it,
        the moment it was sent)."""
        if record != self._observed:
            self._observed = dict(record)
            self._observed_at = self.clock.now() if at is None else at

    async def _watch_lease(self) -> None:
        """Wake the acquire loop whenever the Lease changes; errors just end the speed-up. A
        stream that fails, or ends within a second, is opened again only after the retry
        period: a proxy closing every stream at once must not make this a hot loop.
        No bookmarks: only changes matter here, and kube-apiserver v1.37.2 sends a watch from
        resourceVersion "" that asked for them its current state and one BOOKMARK, then nothing
        more (v1.30 to v1.35 go on with the changes)."""
        cfg = self.config
        while True:
            started, failed = self.clock.now(), False
            try:
                async with self.client.watch(LEASES, cfg.namespace, resource_version="",
                                             timeout_seconds=300, read_timeout=90,
                                             field_selector=f"metadata.name={cfg.name}",
                                             bookmarks=False) as events:
                    async for _ in events:
                        self._changed.set()
            except ApiError:
                failed = True
            if failed or self.clock.now() - started < SHORT_WATCH_SECONDS:
                await anyio.sleep(cfg.retry_period)
