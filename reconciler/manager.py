"""The process's lifecycle, in one place (controller-runtime's manager is the model).

Start-up, in this order:
  1. the HTTP server: /healthz answers at once, /readyz says why it is not ready yet; secure
     /metrics answers 500 (nobody can be checked yet) until the next step is done;
  2. the connection to the API server (credentials, /version), tried again with a backoff
     while the API server cannot be reached, each try bounded in time; from then on secure
     /metrics asks it who the scraper is and whether it may read metrics;
  3. with leader election, wait to hold the Lease (a standby stays here, ready if it can reach
     the API server);
  4. the controller: its reflectors list and watch; its workers start once every cache has
     listed.

Shutdown, on SIGTERM or SIGINT, in this order (further signals meanwhile are only logged):
  1. the workers take no new keys;
  2. the reconciles under way finish, for at most the grace period, and are cancelled after it;
     nothing goes on until no worker runs;
  3. the reflectors stop;
  4. the Lease stops being renewed (a renewal under way is let finish) and is released, so a
     standby takes over at once; but only if every reconcile finished and no write is waiting
     for an answer that never came: such a request may still be applied by the API server, and
     a standby must not start writing before it lands. Then the Lease is left to expire
     (leaseDuration) instead;
  5. the HTTP server stops (and with it the watch on a mounted metrics certificate).

Losing the Lease cancels everything at once and the process exits 1 (the pod restarts as a
standby rather than write without the Lease), as controller-runtime does. So does credentials
that cannot be loaded (no source, a kubeconfig named but missing or malformed): logged in one
line, not tried again.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import kr8s

from .clock import MonotonicClock
from .controller import Controller, ControllerConfig
from .delegatedauth import ApiReviewer, DelegatedAuth
from .kube import KubeClient, api_error
from .leaderelection import LeaderElectionConfig, LeaderElector
from .metrics import Metrics
from .model import prepare_conversions
from .reflector import Backoff
from .server import Servers
from .servingcerts import ServingCertificate

log = logging.getLogger(__name__)
CONNECT_TIMEOUT = 30.0  # one try at reaching the API server


class Manager:
    def __init__(self, connect: Callable[[], Awaitable[KubeClient]], metrics: Metrics,
                 config: ControllerConfig, leader_election: LeaderElectionConfig | None,
                 metrics_address: str, probe_address: str, grace: float,
                 metrics_certificate: ServingCertificate | None = None) -> None:
        """`metrics_certificate`: serve /metrics over HTTPS with it, to those the API server
        authenticates and authorizes; None: plain HTTP to anyone."""
        self._connect = connect
        self.metrics = metrics
        self.config = config
        self.leader_election = leader_election
        self.grace = grace
        self.certificate = metrics_certificate
        self.reviewer: ApiReviewer | None = None  # once connected
        auth = DelegatedAuth(lambda: self.reviewer) if metrics_certificate is not None else None
        self.servers = Servers(metrics.registry, self.readiness, metrics_address, probe_address,
                               tls=metrics_certificate.listening if metrics_certificate else None,
                               auth=auth)
        self.controller: Controller | None = None  # once connected
        self.elector: LeaderElector | None = None
        self.leadership_lost = False
        self.credentials_failed = False
        self._controller_scope = anyio.CancelScope()
        self._controller_done = anyio.Event()
        self._renewal_stopped = anyio.Event()

    def readiness(self) -> list[str]:
        """Why this process is not ready; empty when it is. A standby is ready when it can
        reach the API server."""
        if self.leadership_lost:
            return ["leader election lost: stopping"]
        if self.controller is None:
            return ["connecting to the API server"]
        if self.elector is not None and not self.elector.is_leader:
            return [] if self.elector.healthy else ["leader election: the API server is unreachable"]
        return self.controller.readiness()

    async def run(self) -> int:
        """Until SIGTERM/SIGINT (exit status 0) or the loss of the Lease (1)."""
        prepare_conversions()  # before anything is served: it holds the event loop for ~40 ms
        await self.servers.start()
        log.info("started", extra={"listening": [f"{h}:{p}" for h, p in self.servers.bound],
                                   "namespaces": list(self.config.namespaces) or "all",
                                   "workers": self.config.workers,
                                   "leader_election": self.leader_election is not None})
        try:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async with anyio.create_task_group() as tasks:
                    if self.certificate is not None:
                        tasks.start_soon(self.certificate.watch)
                    tasks.start_soon(self._start, tasks.cancel_scope)
                    async for signum in signals:
                        log.info("stopping", extra={"signal": signal.Signals(signum).name})
                        break
                    tasks.start_soon(_log_more, signals)
                    await self._shutdown()
                    tasks.cancel_scope.cancel()
        finally:
            await self.servers.stop()
        log.info("stopped", extra={"leadership_lost": self.leadership_lost})
        return 1 if self.leadership_lost or self.credentials_failed else 0

    async def _start(self, everything: anyio.CancelScope) -> None:
        try:
            client = await self._connected()
        except Exception as failure:  # not the API server's: nothing to try again
            log.error("cannot load credentials", exc_info=log.isEnabledFor(logging.DEBUG),
                      extra={"error": str(failure) or type(failure).__name__,
                             "type": type(failure).__name__})
            self.credentials_failed = True
            everything.cancel()
            return
        self.reviewer = ApiReviewer(client)
        self.controller = Controller(client, self.metrics, self.config)
        if self.leader_election is not None:
            self.elector = LeaderElector(client, self.leader_election, self.metrics)
            await self.elector.acquire()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._run_controller, self.controller)
            if self.elector is not None:
                try:
                    if not await self.elector.keep_renewing():
                        self.leadership_lost = True  # stop every write at once
                        everything.cancel()
                finally:
                    self._renewal_stopped.set()

    async def _connected(self) -> KubeClient:
        backoff = Backoff(MonotonicClock(), initial=0.5, maximum=10.0, jitter=0.3)
        while True:
            try:
                with anyio.fail_after(CONNECT_TIMEOUT):
                    return await self._connect()
            except Exception as failure:
                if api_error(failure) is None and \
                        not isinstance(failure, TimeoutError | kr8s.ServerError):
                    raise  # no credentials, a bad kubeconfig: no use trying again
                delay = backoff.next_delay()
                log.warning("cannot reach the API server, retrying", extra={
                    "error": str(api_error(failure) or failure), "retry_in_s": round(delay, 2)})
                await anyio.sleep(delay)

    async def _run_controller(self, controller: Controller) -> None:
        try:
            with self._controller_scope:
                await controller.run()
        finally:
            self._controller_done.set()

    async def _shutdown(self) -> None:
        with anyio.CancelScope(shield=True):
            controller = self.controller
            finished = await controller.stop(self.grace) if controller is not None else True
            self._controller_scope.cancel()  # the reflectors, or a controller not yet synced
            if self.elector is None or not self.elector.is_leader or controller is None:
                return
            await self._controller_done.wait()
            self.elector.stop_renewing()
            await self._renewal_stopped.wait()
            if finished and not controller.client.writes_may_still_land():
                await self.elector.release()
            else:
                log.warning("not releasing the lease: a cancelled or unanswered write may still "
                            "land; a standby takes over when it expires",
                            extra={"lease_duration_s": self.elector.config.lease_duration})


async def _log_more(signals: AsyncIterator[int]) -> None:
    async for signum in signals:
        log.info("already stopping", extra={"signal": signal.Signals(signum).name})
