"""The HTTP endpoints: /metrics for Prometheus, /healthz (alive) and /readyz (caches synced,
watches established) for the kubelet's probes. With --metrics-secure (the default) /metrics is
served over HTTPS and answers only those the API server authenticates and authorizes
(delegatedauth.py); the probes stay plain HTTP on their own listener."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from .bindaddress import parse_bind_address

if TYPE_CHECKING:
    from .delegatedauth import DelegatedAuth

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]




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
                 tls: ssl.SSLContext | None = None, auth: DelegatedAuth | None = None) -> None:
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
        self._runners: list[web.AppRunner] = []
        self.bound: list[tuple[str, int]] = []

    async def start(self) -> None:
        for (host, port), app, tls in self._plan:
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, host, port, ssl_context=tls)
            await site.start()
            self._runners.append(runner)
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            self.bound += [sock.getsockname()[:2] for sock in sockets]

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
