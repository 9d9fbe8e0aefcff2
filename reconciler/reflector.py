"""Keeps a Store equal to one resource type in one namespace scope, as client-go's reflector:
paginated LIST, then WATCH from the list's resourceVersion with bookmarks and a server timeout.
BOOKMARK only moves the resourceVersion; 410 Gone relists. A failed connection, a 429/5xx or a
stream silent for longer than the bookmark period backs off (jittered, doubling) and watches
again from the last resourceVersion (the server answers 410 if it is gone), so a blip costs no
LIST of everything; any other error backs off and relists."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import Any

import anyio

from .clock import Clock, MonotonicClock
from .kube import ApiError, KubeClient, Resource, api_error
from .metrics import Metrics
from .store import Change, Obj, Store, object_key

log = logging.getLogger(__name__)

# (change, old, new, from_list): from_list is True for what the first LIST found
Handler = Callable[[Change, Obj | None, Obj | None, bool], None]


class Backoff:
    """0.8 s doubling to 30 s, with jitter; back to the start after a healthy `reset_after`."""

    def __init__(self, clock: Clock, initial: float = 0.8, maximum: float = 30.0,
                 reset_after: float = 120.0, jitter: float = 1.0) -> None:
        self.initial, self.maximum, self.reset_after, self.jitter = initial, maximum, reset_after, jitter
        self._clock = clock
        self._next = initial
        self._last_failure: float | None = None

    def next_delay(self) -> float:
        now = self._clock.now()
        if self._last_failure is not None and now - self._last_failure > self.reset_after:
            self._next = self.initial
        self._last_failure = now
        delay = self._next
        self._next = min(self._next * 2, self.maximum)
        return delay * (1 + random.random() * self.jitter) if self.jitter else delay


class Reflector:
    def __init__(self, client: KubeClient, resource: Resource, namespace: str | None,
                 store: Store, handler: Handler, metrics: Metrics, *,
                 label_selector: str | None = None, page_size: int = 500,
                 watch_timeout: tuple[int, int] = (300, 600), read_timeout: float = 90.0,
                 clock: Clock | None = None, backoff: Backoff | None = None) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.store = store
        self.handler = handler
        self.metrics = metrics
        self.label_selector = label_selector
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.read_timeout = read_timeout
        self.clock = clock or MonotonicClock()
        self.backoff = backoff or Backoff(self.clock)
        self.synced = anyio.Event()  # set once the first LIST is in the store
        self.watching = False  # a watch stream is open and healthy
        self._label = resource.plural
        self._resource_version = ""  # the last resourceVersion seen: where a watch resumes

    @property
    def scope(self) -> str:
        return self.namespace or "all namespaces"

    async def run(self) -> None:
        resource_version: str | None = None  # None: the next step is a full LIST
        last_gone: float | None = None
        while True:
            try:
                if resource_version is None:
                    resource_version = await self._list()
                self._resource_version = resource_version
                await self._watch()
            except Exception as failure:
                self.watching = False
                error = api_error(failure) or ApiError(0, type(failure).__name__, str(failure))
                reason = "gone" if error.gone else (str(error.status) if error.status else error.reason)
                self.metrics.watch_restarts.labels(self._label, reason).inc()
                now = self.clock.now()
                if error.gone:
                    resource_version = None
                    # Expired: relist at once; expiring again straight after a relist would be
                    # a hot loop, so that waits like any other failure.
                    if last_gone is None or now - last_gone > 1.0:
                        last_gone = now
                        log.info("watch expired, relisting", extra={"resource": self._label,
                                                                   "scope": self.scope})
                        continue
                elif error.status == 0 or error.status == 429 or error.status >= 500:
                    # The connection, not our position, failed (refused, reset, silent, server
                    # busy): watch again from where we were; the server says 410 if that is gone.
                    resource_version = self._resource_version
                else:
                    resource_version = None
                delay = self.backoff.next_delay()
                log.warning("list/watch failed, retrying", exc_info=api_error(failure) is None,
                            extra={"resource": self._label, "scope": self.scope,
                                   "error": str(error), "retry_in_s": round(delay, 2),
                                   "relist": resource_version is None})
                await anyio.sleep(delay)

    async def list_once(self) -> str:
        """One full LIST into the store; returns its resourceVersion."""
        return await self._list()

    async def _list(self) -> str:
        items: list[Obj] = []
        continue_token: str | None = None
        while True:
            page = await self.client.list(self.resource, self.namespace,
                                          label_selector=self.label_selector,
                                          limit=self.page_size, continue_token=continue_token)
            items += page.get("items") or []
            continue_token = page.get("metadata", {}).get("continue")
            if not continue_token:
                break
        self.metrics.relists.labels(self._label).inc()
        for item in items:  # list items carry no kind
            item.setdefault("kind", self.resource.kind)
            item.setdefault("apiVersion", self.resource.api_version)
        first = not self.synced.is_set()
        for change, old, new in self.store.replace(items, self.namespace):
            self.handler(change, old, new, first)
        self.synced.set()
        return str(page["metadata"]["resourceVersion"])

    async def _watch(self) -> None:
        """Watch from self._resource_version, keeping it current, until the server says it is
        gone (ApiError 410) or the stream fails."""
        while True:
            timeout = random.randint(*self.watch_timeout)
            async with self.client.watch(self.resource, self.namespace,
                                         resource_version=self._resource_version,
                                         timeout_seconds=timeout, read_timeout=self.read_timeout,
                                         label_selector=self.label_selector) as events:
                self.watching = True
                async for event in events:
                    self._resource_version = self._apply(event, self._resource_version)
            # the server closed the stream after timeoutSeconds: watch again from where we are
            self.metrics.watch_restarts.labels(self._label, "timeout").inc()

    def _apply(self, event: dict[str, Any], resource_version: str) -> str:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            raise ApiError(int(obj.get("code") or 500), str(obj.get("reason") or "Error"),
                           str(obj.get("message") or obj))
        new_version = str(obj.get("metadata", {}).get("resourceVersion") or resource_version)
        if kind == "BOOKMARK":
            return new_version
        if kind in ("ADDED", "MODIFIED"):
            result = self.store.upsert(obj)
            if result is not None:
                change, old = result
                self.handler(change, old, self.store.get(object_key(obj)), False)
        elif kind == "DELETED":
            old = self.store.delete(object_key(obj))
            if old is not None:
                self.handler(Change.DELETED, old, None, False)
        return new_version

