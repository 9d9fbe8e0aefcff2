"""Keeps a Store equal to one resource type in one namespace scope: client-go's ListAndWatch,
as one explicit loop.

    needs list ──LIST (paginated; each page slimmed and stored as it arrives)──▶ watching
    watching ──WATCH from the resourceVersion──▶ events applied, resourceVersion kept current
    any failure ──next_step()──▶ relist at once | back off, then watch again | back off, then list

There is one resourceVersion, `self.resource_version`: None means "needs a list". A watch is
only ever opened from a resourceVersion a LIST or a watch event gave us, never from "" (which
would make the server replay the whole collection as ADDED events, without a LIST ever
completing). `synced` is set when a LIST has completed: until then the controller is not ready.
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Callable
from typing import Any, Generic

import anyio

from .clock import Clock, MonotonicClock
from .kube import ApiError, KubeClient, Resource, api_error, one_at_a_time
from .memory import release_free_memory
from .metrics import Metrics
from .store import Change, Store, V

log = logging.getLogger(__name__)


class Source(enum.Enum):
    """Where the news of a change came from."""

    FIRST_LIST = "first list"  # there when we started: a backlog, made who knows when
    RELIST = "relist"  # a LIST after the first (a watch that could not go on): made meanwhile
    WATCH = "watch"  # an event of the watch: made, changed or deleted just now
    OWN_WRITE = "own write"  # the answer to a write of ours, told before the watch tells it


# (change, old, new, source)
Handler = Callable[[Change, Any, Any, Source], None]
Obj = dict[str, Any]

# client-go's guard: a watch that ends within a second having delivered nothing is a failure
# (a proxy or an overloaded server closing streams at once), not a normal end to reopen at once.
SHORT_WATCH_SECONDS = 1.0
# A second 410 this soon after the last one relists only after a backoff: never a hot loop.
GONE_AGAIN_SECONDS = 1.0


class Backoff:
    """Doubling delays with jitter; back to the start after a healthy `reset_after`."""

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


def startup_backoff(clock: Clock) -> Backoff:
    """Before the first LIST has completed nothing works, so keep asking often (at most every
    ~4 s): the controller is ready within seconds of the API server answering again."""
    return Backoff(clock, initial=0.5, maximum=3.0, jitter=0.3)


class WatchClosedAtOnce(Exception):
    pass


class Step(enum.Enum):
    RELIST = "relist at once"
    RELIST_AFTER_BACKOFF = "relist after a backoff"
    REWATCH_AFTER_BACKOFF = "watch again after a backoff"


def next_step(failure: BaseException, *, listed: bool, gone_recently: bool) -> Step:
    """What follows a failed LIST or WATCH.

    - 410 Gone (our resourceVersion was compacted away): only a LIST can say where we are.
    - The connection or the server's load failed (refused, reset, silent, 429, 5xx) or the
      watch closed at once: our position is still good, so watch again from it after a backoff
      (the server answers 410 if it is gone meanwhile). A blip costs no LIST of everything.
    - Anything else (403, 404: permissions or the CRD changed), or no LIST yet: list again,
      after a backoff."""
    if isinstance(failure, WatchClosedAtOnce):
        return Step.REWATCH_AFTER_BACKOFF
    error = api_error(failure)
    if error is not None and error.gone:
        return Step.RELIST_AFTER_BACKOFF if gone_recently else Step.RELIST
    if listed and error is not None and error.transient:
        return Step.REWATCH_AFTER_BACKOFF
    return Step.RELIST_AFTER_BACKOFF


def failure_reason(failure: BaseException) -> str:
    """The `reason` label of nimbus_kubearmor_watch_restarts_total."""
    if isinstance(failure, WatchClosedAtOnce):
        return "closed-at-once"
    error = api_error(failure)
    if error is None:
        return type(failure).__name__
    if error.gone:
        return "gone"
    return str(error.status) if error.status else error.reason


class Reflector(Generic[V]):
    def __init__(self, client: KubeClient, resource: Resource, namespace: str | None,
                 store: Store[V], transform: Callable[[Obj], V], handler: Handler,
                 metrics: Metrics, *, page_size: int = 500,
                 watch_timeout: tuple[int, int] = (300, 600), read_timeout: float = 90.0,
                 clock: Clock | None = None, backoff: Backoff | None = None,
                 startup: Backoff | None = None, page_lock: anyio.Lock | None = None) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self.store = store
        self.transform = transform
        self.handler = handler
        self.metrics = metrics
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.read_timeout = read_timeout
        self.clock = clock or MonotonicClock()
        self.backoff = backoff or Backoff(self.clock)
        self.startup_backoff = startup or startup_backoff(self.clock)
        # Held while a page is fetched and slimmed; reflectors sharing it hold one page at a time.
        self.page_lock = page_lock or anyio.Lock()
        self.synced = anyio.Event()  # set once a LIST has completed
        self.watching = False  # a watch stream is open
        # Where the next watch starts; None: the next step is a LIST.
        self.resource_version: str | None = None
        self._label = resource.plural
        self._synced_gauge = metrics.cache_synced.labels(resource.plural, namespace or "")
        self._synced_gauge.set(0)

    @property
    def scope(self) -> str:
        return self.namespace or "all namespaces"

    async def run(self) -> None:
        last_gone: float | None = None
        while True:
            try:
                if self.resource_version is None:
                    await self.list_once()
                await self._watch()
            except Exception as failure:
                self._set_watching(False)
                now = self.clock.now()
                step = next_step(failure, listed=self.resource_version is not None,
                                 gone_recently=last_gone is not None
                                 and now - last_gone < GONE_AGAIN_SECONDS)
                reason = failure_reason(failure)
                if reason == "gone":
                    last_gone = now
                self.metrics.watch_restarts.labels(self._label, reason).inc()
                if step is not Step.REWATCH_AFTER_BACKOFF:
                    self.resource_version = None
                if step is Step.RELIST:
                    log.info("watch expired, relisting", extra={"resource": self._label,
                                                               "scope": self.scope})
                    continue
                delay = self._delay(failure)
                error = api_error(failure)
                log.warning("list/watch failed, retrying", exc_info=error is None and not
                            isinstance(failure, WatchClosedAtOnce),
                            extra={"resource": self._label, "scope": self.scope,
                                   "error": str(error or failure), "retry_in_s": round(delay, 2),
                                   "next": step.value})
                await anyio.sleep(delay)

    def _delay(self, failure: BaseException) -> float:
        backoff = self.backoff if self.synced.is_set() else self.startup_backoff
        delay = backoff.next_delay()
        error = api_error(failure)
        if error is not None and error.retry_after:  # the server said when to come back
            delay = max(delay, min(error.retry_after, backoff.maximum))
        return delay

    def _set_watching(self, watching: bool) -> None:
        self.watching = watching
        self._synced_gauge.set(1 if watching and self.synced.is_set() else 0)

    async def list_once(self) -> str:
        """One full LIST into the store, page by page; sets and returns the resourceVersion
        to watch from. Each page's objects are slimmed and stored as they arrive, and each
        object's JSON is let go as soon as it is slimmed; with the other reflectors sharing
        `page_lock`, no more than one page of full objects is held in the process at a time.
        At the end the store drops what the LIST did not name and is not newer than it."""
        source = Source.RELIST if self.synced.is_set() else Source.FIRST_LIST
        named, continue_token, expired = self._naming(), None, False
        list_version = ""
        while True:
            async with self.page_lock:
                try:
                    page = await self.client.list(self.resource, self.namespace,
                                                  limit=self.page_size,
                                                  continue_token=continue_token)
                except ApiError as error:
                    if not (error.gone and continue_token and not expired):
                        raise
                    # The snapshot being paged through was compacted away: page through a
                    # new one from the start (client-go's pager lists everything in one
                    # request instead: 46 MB and ~300 MB parsed at 25,000 policies). Once per
                    # LIST: a second expiry fails it, and the run loop relists as after any 410
                    # (after a backoff if within a second of the last), never in a hot loop.
                    log.info("list continuation expired, listing again from the first page",
                             extra={"resource": self._label, "scope": self.scope})
                    named, continue_token, expired = self._naming(), None, True
                    continue
                metadata = page.get("metadata") or {}
                list_version = str(metadata.get("resourceVersion") or "")
                items = page.pop("items", None) or []
                del page
                # the JSON goes as soon as it is slimmed (a large page's is decoded item by item)
                async for item in one_at_a_time(items):
                    key = named.add(item)
                    if self._known(key, item, as_of=list_version):
                        continue
                    item.setdefault("apiVersion", self.resource.api_version)  # list items carry none
                    value = self.transform(item)
                    del item
                    self._store(value, source, as_of=list_version)
                del items
            continue_token = metadata.get("continue") or None
            if not continue_token:
                break
        if not list_version:  # a broken proxy or aggregated API: nowhere to watch from
            raise ApiError(502, "NoResourceVersion", "the LIST's answer had no resourceVersion")
        for old in self.store.relisted(self.namespace, list_version, named.keys):
            self.handler(Change.DELETED, old, None, source)
        self.metrics.relists.labels(self._label).inc()
        self.resource_version = list_version
        self.synced.set()
        release_free_memory()  # what the pages took from the C allocator
        return list_version

    def _naming(self) -> Named:
        return Named(self.store.keys_in(self.namespace))

    def _known(self, key: str, obj: Obj, as_of: str | None = None) -> bool:
        """Whether the store already knows this version of `obj` or something newer of its key
        (the watch echoing our own write, a relist of what did not change, an event older than
        a deletion): nothing to slim then."""
        metadata = obj.get("metadata") or {}
        return self.store.ignores(key, str(metadata.get("uid") or ""),
                                  str(metadata.get("resourceVersion") or ""), as_of)

    def _store(self, value: V, source: Source, as_of: str | None = None) -> None:
        result = self.store.upsert(value, as_of)
        if result is not None:
            change, old = result
            self.handler(change, old, value, source)

    async def _watch(self) -> None:
        """Watch from self.resource_version, keeping it current, until the server ends the
        stream (normally after timeoutSeconds) or it fails."""
        assert self.resource_version is not None
        started, events = self.clock.now(), 0
        async with self.client.watch(self.resource, self.namespace,
                                     resource_version=self.resource_version,
                                     timeout_seconds=random.randint(*self.watch_timeout),
                                     read_timeout=self.read_timeout) as stream:
            self._set_watching(True)
            async for event in stream:
                events += 1
                self._apply(event)
        self._set_watching(False)
        if events == 0 and self.clock.now() - started < SHORT_WATCH_SECONDS:
            raise WatchClosedAtOnce(f"the watch of {self._label} in {self.scope} ended at once "
                                    "without an event")

    def _apply(self, event: Obj) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            reason = str(obj.get("reason") or "Error")
            code = obj.get("code") or (410 if reason in ("Expired", "Gone") else 500)
            raise ApiError(int(code), reason, str(obj.get("message") or obj))
        metadata = obj.get("metadata") or {}
        version = str(metadata.get("resourceVersion") or "")
        if kind in ("ADDED", "MODIFIED"):
            if not self._known(_key(metadata), obj):
                self._store(self.transform(obj), Source.WATCH)
        elif kind == "DELETED":
            old = self.store.delete(_key(metadata), str(metadata.get("uid") or ""),
                                    version or None)
            if old is not None:
                self.handler(Change.DELETED, old, None, Source.WATCH)
        # BOOKMARK only moves the resourceVersion
        if version:
            self.resource_version = version
            self.store.observed(self.namespace, version)


def _key(metadata: Obj) -> str:
    return f"{metadata.get('namespace') or ''}/{metadata.get('name')}"


class Named:
    """The keys a LIST has named so far. Keys the store held when the LIST began are kept as
    the store's own strings (nothing new is allocated for 25,000 keys in a relist)."""

    def __init__(self, stored: set[str]) -> None:
        self._stored = {key: key for key in stored}
        self.keys: set[str] = set()

    def add(self, obj: Obj) -> str:
        key = _key(obj.get("metadata") or {})
        self.keys.add(self._stored.get(key, key))
        return key
