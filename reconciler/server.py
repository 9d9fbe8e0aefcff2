"""The HTTP endpoints: /metrics for Prometheus, /healthz (alive) and /readyz (caches synced,
watches established) for the kubelet's probes."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from .bindaddress import parse_bind_address


def build_app(registry: CollectorRegistry | None, readiness: Callable[[], list[str]] | None
              ) -> web.Application:
    app = web.Application()
    if registry is not None:
        app.router.add_get("/metrics", make_aiohttp_handler(registry))
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
    """The metrics and probe listeners; one listener when both use the same address."""

    def __init__(self, registry: CollectorRegistry, readiness: Callable[[], list[str]],
                 metrics_address: str, probe_address: str) -> None:
        metrics_bind, probe_bind = parse_bind_address(metrics_address), parse_bind_address(probe_address)
        self._plan: list[tuple[tuple[str, int], web.Application]] = []
        if metrics_bind is not None and metrics_bind == probe_bind:
            self._plan.append((metrics_bind, build_app(registry, readiness)))
        else:
            if metrics_bind is not None:
                self._plan.append((metrics_bind, build_app(registry, None)))
            if probe_bind is not None:
                self._plan.append((probe_bind, build_app(None, readiness)))
        self._runners: list[web.AppRunner] = []
        self.bound: list[tuple[str, int]] = []

    async def start(self) -> None:
        for (host, port), app in self._plan:
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, host, port)
            await site.start()
            self._runners.append(runner)
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            self.bound += [sock.getsockname()[:2] for sock in sockets]

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
