"""The HTTP endpoints: /metrics for Prometheus, /healthz (alive) and /readyz (caches synced,
watches established) for the kubelet's probes. With --metrics-secure (the default) /metrics is
served over HTTPS and answers only those the API server authenticates and authorizes
(delegatedauth.py), on a listener that holds at most MAX_TLS_CONNECTIONS connections
(tlslistener.py); the probes stay plain HTTP on their own listener. A connection idle for
IDLE_TIMEOUT is closed, as controller-runtime's metrics server closes it."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from .bindaddress import parse_bind_address
from .tlslistener import ConnectionSlots, serve_tls, stop

if TYPE_CHECKING:
    from .delegatedauth import DelegatedAuth

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Connections the HTTPS listener holds at once (Prometheus needs one per replica scraping it).
MAX_TLS_CONNECTIONS = 64
TLS_HANDSHAKE_TIMEOUT = 10.0
# A connection without a request for this long is closed (controller-runtime's metrics server's
# IdleTimeout; aiohttp's own default is an hour), whether or not it ever sent one.
IDLE_TIMEOUT = 90.0
# At shutdown, requests under way get this long to finish, then are cancelled and get as long
# again (aiohttp's two steps; its default is 60 s each): a scrape may be waiting up to 10 s for
# its review, and the pod's grace period is 10 s for everything.
SHUTDOWN_TIMEOUT = 1.0


def protected(handler: Handler, auth: DelegatedAuth) -> Handler:
    """`handler`, for those the API server lets `get` the path (the request's method, lower
    case, is the verb, as controller-runtime asks it)."""
    async def checked(request: web.Request) -> web.StreamResponse:
        decision = await auth.check(request.headers.get("Authorization"), request.method.lower(),
                                    request.path)
        if not decision.allowed:
            return web.Response(status=decision.status, text=decision.message + "\n")
        return await handler(request)
    return checked


def build_app(registry: CollectorRegistry | None, readiness: Callable[[], list[str]] | None,
              auth: DelegatedAuth | None = None) -> web.Application:
    app = web.Application()
    if registry is not None:
        metrics: Handler = make_aiohttp_handler(registry)
        app.router.add_get("/metrics", metrics if auth is None else protected(metrics, auth))
    if readiness is not None:
        async def healthz(_: web.Request) -> web.Response:
            return web.Response(text="ok")

        async def readyz(_: web.Request) -> web.Response:
            reasons = readiness()
            if reasons:
                return web.Response(status=503, text="not ready:\n" + "\n".join(reasons) + "\n")
            return web.Response(text="ok")

        app.router.add_get("/healthz", healthz)
        app.router.add_get("/livez", healthz)
        app.router.add_get("/readyz", readyz)
    return app


class Servers:
    """The metrics and probe listeners; one listener when both use the same address (plain
    HTTP only: the kubelet's probes carry no token)."""

    def __init__(self, registry: CollectorRegistry, readiness: Callable[[], list[str]],
                 metrics_address: str, probe_address: str, *,
                 tls: ssl.SSLContext | None = None, auth: DelegatedAuth | None = None,
                 max_tls_connections: int = MAX_TLS_CONNECTIONS,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        metrics_bind, probe_bind = parse_bind_address(metrics_address), parse_bind_address(probe_address)
        self._plan: list[tuple[tuple[str, int], web.Application, ssl.SSLContext | None]] = []
        if metrics_bind is not None and metrics_bind == probe_bind and metrics_bind[1] != 0:
            if tls is not None or auth is not None:
                raise ValueError("secure metrics need their own address: the probes are plain "
                                 "HTTP without authentication")
            self._plan.append((metrics_bind, build_app(registry, readiness), None))
        else:
            if metrics_bind is not None:
                self._plan.append((metrics_bind, build_app(registry, None, auth), tls))
            if probe_bind is not None:
                self._plan.append((probe_bind, build_app(None, readiness), None))
        self.tls_slots = ConnectionSlots(max_tls_connections)
        self._idle_timeout = idle_timeout
        self._runners: list[web.AppRunner] = []
        self._tls_servers: list[asyncio.Server] = []
        self.bound: list[tuple[str, int]] = []

    async def start(self) -> None:
        for (host, port), app, tls in self._plan:
            runner = web.AppRunner(app, access_log=None, keepalive_timeout=self._idle_timeout,
                                   shutdown_timeout=SHUTDOWN_TIMEOUT)
            await runner.setup()
            self._runners.append(runner)
            if tls is not None:
                assert runner.server is not None
                server = await serve_tls(runner.server, host, port, tls, self.tls_slots,
                                         TLS_HANDSHAKE_TIMEOUT)
                self._tls_servers.append(server)
                sockets = list(server.sockets)
            else:
                site = web.TCPSite(runner, host, port)
                await site.start()
                sockets = list(getattr(site._server, "sockets", None) or [])
            self.bound += [sock.getsockname()[:2] for sock in sockets]

    async def stop(self) -> None:
        for server in self._tls_servers:
            await stop(server, self.tls_slots)
        self._tls_servers.clear()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
