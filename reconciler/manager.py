"""The process's lifecycle, in one place (controller-runtime's manager is the model).

Start-up, in this order:
  1. the HTTP server: /healthz answers at once, /readyz says why it is not ready yet;
  2. with leader election, wait to hold the Lease (a standby stays here, ready if it can reach
     the API server);
  3. the controller: its reflectors list and watch; its workers start once every cache has
     listed.

Shutdown, on SIGTERM or SIGINT, in this order:
  1. the workers take no new keys;
  2. the reconciles under way finish, for at most the grace period, and are cancelled after it;
     nothing goes on until no worker runs;
  3. the reflectors stop;
  4. the Lease stops being renewed and is released, so a standby takes over at once; but only
     if every reconcile finished: a cancelled request may still be applied by the API server
     after we gave up on it, and a standby must not start writing before that lands. Then
     the Lease is left to expire (leaseDuration) instead;
  5. the HTTP server stops.

Losing the Lease cancels everything at once and the process exits 1 (the pod restarts as a
standby rather than write without the Lease), as controller-runtime does.
"""

from __future__ import annotations

import logging
import signal

import anyio

from .controller import Controller
from .leaderelection import LeaderElector
from .server import Servers

log = logging.getLogger(__name__)


class Manager:
    def __init__(self, controller: Controller, servers: Servers,
                 elector: LeaderElector | None, grace: float) -> None:
        self.controller = controller
        self.servers = servers
        self.elector = elector
        self.grace = grace
        self.leadership_lost = False
        self._controller_scope = anyio.CancelScope()
        self._controller_done = anyio.Event()
        self._renewing = anyio.CancelScope()

    def readiness(self) -> list[str]:
        """Why this process is not ready; empty when it is. A standby is ready when it can
        reach the API server."""
        if self.elector is not None and not self.elector.is_leader:
            return [] if self.elector.healthy else ["leader election: the API server is unreachable"]
        return self.controller.readiness()

    async def run(self) -> int:
        """Until SIGTERM/SIGINT (exit status 0) or the loss of the Lease (1)."""
        await self.servers.start()
        log.info("started", extra={"listening": [f"{h}:{p}" for h, p in self.servers.bound],
                                   "namespaces": list(self.controller.config.namespaces) or "all",
                                   "workers": self.controller.config.workers,
                                   "leader_election": self.elector is not None})
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._lead, tasks.cancel_scope)
                await _signalled()
                await self._shutdown()
                tasks.cancel_scope.cancel()
        finally:
            await self.servers.stop()
        log.info("stopped", extra={"leadership_lost": self.leadership_lost})
        return 1 if self.leadership_lost else 0

    async def _lead(self, everything: anyio.CancelScope) -> None:
        if self.elector is not None:
            await self.elector.acquire()
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(self._run_controller)
            if self.elector is not None:
                with self._renewing:
                    await self.elector.keep_renewing()
                    self.leadership_lost = True  # stop every write at once
                    everything.cancel()

    async def _run_controller(self) -> None:
        try:
            with self._controller_scope:
                await self.controller.run()
        finally:
            self._controller_done.set()

    async def _shutdown(self) -> None:
        with anyio.CancelScope(shield=True):
            finished = await self.controller.stop(self.grace)
            self._controller_scope.cancel()  # the reflectors, or a controller not yet synced
            if self.elector is None or not self.elector.is_leader:
                return
            await self._controller_done.wait()
            self._renewing.cancel()
            if finished:
                await self.elector.release()
            else:
                log.warning("not releasing the lease: a cancelled write may still land; a "
                            "standby takes over when it expires",
                            extra={"lease_duration_s": self.elector.config.lease_duration})


async def _signalled() -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("stopping", extra={"signal": signal.Signals(signum).name})
            return
