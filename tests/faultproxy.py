"""A fault-injecting HTTPS reverse proxy in front of the local control plane's kube-apiserver.

Clients talk to the proxy exactly as to the API server (its serving certificate comes from the
control plane's CA, so only `server:` in a kubeconfig changes); every request is forwarded with
its credentials unless a rule says otherwise, and responses, WATCH streams included, are passed
through chunk by chunk as they arrive. The proxy runs its own event loop in its own thread, so it
serves sync tests, async tests and reconcilers run as processes alike.

    with FaultProxy.for_control_plane(control_plane) as proxy:
        kubeconfig = control_plane.service_account_kubeconfig(
            "nk-system", "nimbus-kubearmor", rules, server=proxy.url)
        lists = proxy.add(Rule(Status(503, retry_after=1), kind="list",
                               path=r"/nimbuspolicies", times=3))
        cut = proxy.add(Rule(ResetAfter(events=2), kind="watch", path=r"/kubearmorpolicies"))
        held = proxy.add(Rule(Stall(), kind="write", method="DELETE"))
        ...
        held.release()                    # the held DELETEs go through now
        proxy.remove(cut)                 # rules come and go while requests flow
        assert lists.hits == 3
        assert proxy.requests(kind="watch", path=r"/kubearmorpolicies", answer="reset-after")

Rules are tried in the order they were added; the first that matches the request and has budget
left answers it, else the request is forwarded unchanged. Matching: `kind` ("list", "watch",
"get", "write", "other" for discovery and other non-resource paths, "any"), `method`, a `path`
regex (searched, not anchored; the query string is not part of it), `user_token` (the exact
bearer token), `when` (any predicate on the aiohttp request) and `where` (a predicate on the
`Exchange` being logged, its `body` included: to match writes by content; it is called under the
proxy's lock, in the order requests arrive, so it may count them). Budget: `after=K` lets the
first K matching requests through to the next rules, `times=N` answers the N following ones,
`window=(start, end)` limits it to seconds since the rule was added.

Answers (the `answer` of a Rule):
  Forward()                       pass through (shields a request from later rules; counts it)
  Status(code, reason, message, retry_after, causes, details)
                                  a Kubernetes Status body, with Retry-After when given
  Reset()                         TCP reset before any response
  ResetAfter(events=N | bytes=N)  forward, then reset after N watch events / N body bytes
  Stall()                         hold the request until `release()` (then forward) or until the
                                  client gives up
  Delay(seconds)                  wait, then forward
  SlowAnswer(seconds, until=gate)  forward at once, pass the answer on `seconds` later and not
                                  before gate.release()
  Trickle(every, size)            forward, then pass the answer on `size` bytes every `every`
                                  seconds (a slow link or proxy: each read is quick, the whole
                                  answer takes as long as it takes)
  Lost(status, lands_after)       the request lands, the client gets `status` (504) instead of
                                  the API server's answer (a gateway that gave up upstream)
  CloseWatch(after_events=N)      N=0: 200 with an empty watch body, upstream never asked;
                                  N>0: forward, end the body cleanly after N events
  ErrorEvent(Status(410), after_events=N)
                                  the watch ends with an ERROR event carrying that Status after
                                  N forwarded events (N=0: upstream never asked)
  ResetAnswered(then=f)           forward, read the whole answer, call f(exchange) (e.g. SIGKILL
                                  the client), then reset: the write landed, its answer is lost
  Steer(decide=f, query=g)        forward with the query rewritten by g(params) (e.g. an older
                                  resourceVersion); for a watch, f(exchange, WatchEvent) decides
                                  each event: Pass(), Hold(gate) (late: the stream waits, in
                                  order, until gate.release()), Drop() (never delivered, the
                                  stream goes on), Cut() (reset before it), EndWith(Status(410))

Stream answers count "events" as newline-terminated lines of the body (BOOKMARKs included) and
apply to 200 answers only; other statuses are passed through. A request whose client goes away
while it is delayed or stalled is never forwarded (aiohttp's handler cancellation); the log
shows it as `cancelled` and `forwarded=False`. When the upstream cannot be reached the client's
connection is reset, as a direct connection to a stopped API server would fail.

Observing: `proxy.requests(kind=, method=, path=, answer=, rule=)` returns snapshots of every
request seen (`Exchange`: at, method, path, query, kind, answer, rule, status, forwarded, events,
reset, cancelled, done, finished, rewritten); `rule.matched` / `rule.hits` count per rule. Rules
act on requests as they arrive; `reset_open(kind=, path=, ...)` resets the ones already in flight
(open watches).
`end_open(status, path=)` ends the open watches that match with an ERROR event (410 Expired by
default), as the API server does when it no longer has their resourceVersion.
`add`, `remove`, `clear`, `release`, `requests`, `reset_open` and `end_open` are thread-safe.

Recording: a proxy made with `record=True` also keeps, per exchange, the request's `body`, the
`answer_body` (not of watches) and the `watch_events` passed on to the client (`WatchEvent`: type,
kind, namespace, name, uid, resource_version, at): what a client sent and what it saw.
`stop()` (or leaving the `with`) aborts every open connection, drops held requests unforwarded,
and ends the thread.

Identities: bearer tokens pass through (`control_plane.service_account_kubeconfig(...,
server=proxy.url)`). The proxy asks clients for no certificate, so for certificate identities it
presents its own upstream: `FaultProxy.for_control_plane(cp, as_user="u")` with a client using
`cp.identity_kubeconfig("u", server=proxy.url)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import attrs
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from tests.controlplane.launcher import LocalControlPlane
from tests.controlplane.pki import KeyPair

# RFC 9110 7.6.1 hop-by-hop headers, plus the ones the proxy computes itself per hop.
_HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length",
})
_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound",
            405: "MethodNotAllowed", 409: "Conflict", 410: "Expired", 415: "UnsupportedMediaType",
            422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
            503: "ServiceUnavailable", 504: "Timeout"}
KINDS = frozenset({"list", "watch", "get", "write", "other", "any"})
_WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_FLUSH_TIMEOUT = 2.0
_RECORDED_BODY = 1 << 20  # of an answer, with record=True


# --- answers ----------------------------------------------------------------------------------


@attrs.frozen
class Forward:
    """Pass the request through unchanged."""

    name = "forward"


@attrs.frozen
class Status:
    """Answer `code` with a Kubernetes Status body (and a Retry-After header if `retry_after`)."""

    code: int
    reason: str | None = None
    message: str | None = None
    retry_after: int | None = None
    causes: tuple[dict[str, str], ...] = ()
    details: dict[str, Any] | None = None
    name = "status"

    def body(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message or f"injected by the fault proxy: {self.code}",
            "reason": self.reason if self.reason is not None else _REASONS.get(self.code, ""),
            "code": self.code,
        }
        details = dict(self.details or {})
        if self.causes:
            details["causes"] = [dict(c) for c in self.causes]
        if self.retry_after is not None:
            details["retryAfterSeconds"] = self.retry_after
        if details:
            status["details"] = details
        return status


@attrs.frozen
class Reset:
    """Reset the TCP connection before any response."""

    name = "reset"


@attrs.frozen
class ResetAfter:
    """Forward, then reset the connection after `events` watch events or `bytes` body bytes."""

    events: int | None = None
    bytes: int | None = None
    name = "reset-after"

    def __attrs_post_init__(self) -> None:
        if (self.events is None) == (self.bytes is None):
            raise ValueError("ResetAfter needs exactly one of events= or bytes=")


@attrs.define(eq=False)
class Gate:
    """Closed until `release()` (from any thread), then open for good; `wait()` from any event
    loop. What `Stall` holds requests on and `Hold` holds watch events on."""

    _released: bool = attrs.field(default=False, init=False)
    _waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = attrs.field(
        factory=list, init=False)
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)

    def release(self) -> None:
        """Thread-safe: let every held request (and every later one) through."""
        with self._lock:
            self._released = True
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(_resolve, future)

    @property
    def released(self) -> bool:
        with self._lock:
            return self._released

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._released:
                return
            self._waiters.append((loop, future))
        try:
            await future
        finally:
            with self._lock, contextlib.suppress(ValueError):
                self._waiters.remove((loop, future))


@attrs.define(eq=False)
class Stall(Gate):
    """Hold the request, unanswered, until `release()` (then forward it) or the client leaves.
    Once released it lets every later request through at once."""

    name = "stall"


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@attrs.frozen
class Delay:
    """Wait `seconds`, then forward (not at all if the client leaves meanwhile). With
    `lands_anyway=True` the request is as good as at the API server already (a slow webhook,
    a slow etcd): it is forwarded after the delay even if its client has given up on it."""

    seconds: float
    lands_anyway: bool = False
    name = "delay"


@attrs.frozen
class SlowAnswer:
    """Forward at once (the API server applies the request at once), and pass its answer on
    only `seconds` later, and (with `until`) not before that gate is released: the client
    learns late what has long been done (a LIST served now and read after later writes)."""

    seconds: float = 0.0
    until: Gate | None = None
    name = "slow-answer"


@attrs.frozen
class Trickle:
    """Forward at once, then pass the answer on `size` bytes at a time, `every` seconds apart:
    no read waits long, but the whole answer takes as long as the body is big."""

    every: float = attrs.field(validator=attrs.validators.ge(0))
    size: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    name = "trickle"


@attrs.frozen
class Lost:
    """The API server's answer is lost on its way back, as when a gateway or load balancer gives
    up on its upstream: the client is answered `status` (504 by default) and the request is
    applied all the same. `lands_after=None`: forwarded first, and `status` answered once the
    API server has answered (so it has been applied); a number of seconds: `status` answered at
    once, and the request forwarded that much later, whatever its client does meanwhile."""

    status: Status = Status(504, message="Gateway Timeout (injected by the fault proxy)")
    lands_after: float | None = None
    name = "lost"


@attrs.frozen
class CloseWatch:
    """End the response body cleanly: at once without asking upstream (after_events=0), or
    after forwarding `after_events` events."""

    after_events: int = 0
    name = "close-watch"


@attrs.frozen
class ErrorEvent:
    """End the watch with `{"type": "ERROR", "object": <status>}` after `after_events`
    forwarded events (0: answered by the proxy alone), as the API server does for 410 Expired."""

    status: Status = Status(410, message="too old resource version (injected by the fault proxy)")
    after_events: int = 0
    name = "error-event"


@attrs.frozen
class ResetAnswered:
    """Forward, read the API server's whole answer, call `then(exchange)` (in the proxy's thread:
    e.g. SIGKILL the client), then reset the client's connection instead of answering: the
    request landed, its answer never arrives (a client killed right after the server answered)."""

    then: Callable[[Exchange], None] | None = None
    name = "reset-answered"


# What a Steer's `decide` says about one watch event.
@attrs.frozen
class Pass:
    """Pass the event on."""


@attrs.frozen
class Hold:
    """Pass the event on once `gate` is released; the events after it wait behind it (the stream
    stays open and in order: an event delivered late)."""

    gate: Gate


@attrs.frozen
class Drop:
    """Never pass the event on; the stream goes on with the next one."""


@attrs.frozen
class Cut:
    """Reset the connection before the event (it and everything after it never arrive)."""


@attrs.frozen
class EndWith:
    """End the stream before the event with `{"type": "ERROR", "object": <status>}`."""

    status: Status = Status(410, message="too old resource version (injected by the fault proxy)")


Verdict = Pass | Hold | Drop | Cut | EndWith


@attrs.frozen
class WatchEvent:
    """What a watch event line says, in short (type "" for a line that is not a JSON event)."""

    type: str
    kind: str = ""
    namespace: str = ""
    name: str = ""
    uid: str = ""
    resource_version: str = ""
    at: float = 0.0  # time.monotonic() when it was passed on to the client (recorded events)

    @classmethod
    def parse(cls, line: bytes) -> WatchEvent:
        try:
            event = json.loads(line)
            obj = event.get("object") or {}
            metadata = obj.get("metadata") or {}
            return cls(str(event.get("type") or ""), str(obj.get("kind") or ""),
                       str(metadata.get("namespace") or ""), str(metadata.get("name") or ""),
                       str(metadata.get("uid") or ""), str(metadata.get("resourceVersion") or ""))
        except (ValueError, AttributeError):
            return cls("")


@attrs.frozen
class Steer:
    """Forward with the query string rewritten by `query` (a function of the query's parameters,
    returning the ones to send), and for a watch the API server answers 200, ask
    `decide(exchange, event)` about each event line before passing it on (a `Verdict`). Both are
    called in the proxy's thread, outside its lock: they may add rules or release gates."""

    decide: Callable[[Exchange, WatchEvent], Verdict] | None = None
    query: Callable[[dict[str, str]], dict[str, str]] | None = None
    name = "steer"


Answer = (Forward | Status | Reset | ResetAfter | Stall | Delay | SlowAnswer | Trickle | Lost
          | CloseWatch | ErrorEvent | ResetAnswered | Steer)


# --- rules ------------------------------------------------------------------------------------


def request_kind(method: str, path: str, query: dict[str, str] | Any) -> str:
    """list / watch / get / write, or "other" for paths that name no resource (discovery,
    /version, /healthz, /openapi)."""
    method = method.upper()
    if method in _WRITE_METHODS:
        return "write"
    segments = [s for s in path.split("/") if s]
    if segments[:1] == ["api"] and len(segments) >= 2:
        rest = segments[2:]
    elif segments[:1] == ["apis"] and len(segments) >= 3:
        rest = segments[3:]
    else:
        return "other"
    if not rest:
        return "other"
    if rest[0] == "watch" or str(query.get("watch", "")).lower() in ("true", "1"):
        return "watch"
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        rest = rest[2:]  # namespaced resource: drop "namespaces/<ns>"
    return "list" if len(rest) == 1 else "get"


@attrs.define(eq=False)
class Rule:
    """Which requests to answer how, and how often. Counters are read-only for tests:
    `matched` counts every request the rule matched, `hits` the ones it answered."""

    answer: Answer
    kind: str = "any"
    method: str | Iterable[str] | None = None
    path: str | None = None
    user_token: str | None = None
    when: Callable[[web.BaseRequest], bool] | None = None
    where: Callable[[Exchange], bool] | None = None
    times: int | None = None
    after: int = 0
    window: tuple[float, float] | None = None
    matched: int = attrs.field(default=0, init=False)
    hits: int = attrs.field(default=0, init=False)
    added_at: float = attrs.field(default=0.0, init=False)
    _methods: frozenset[str] | None = attrs.field(default=None, init=False, repr=False)
    _path: re.Pattern[str] | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, not {self.kind!r}")
        if self.method is not None:
            methods = [self.method] if isinstance(self.method, str) else list(self.method)
            self._methods = frozenset(m.upper() for m in methods)
        if self.path is not None:
            self._path = re.compile(self.path)

    def release(self) -> None:
        """Release the requests a Stall answer holds."""
        if not isinstance(self.answer, Stall):
            raise TypeError(f"only a Stall can be released, this rule answers {self.answer!r}")
        self.answer.release()

    def _matches(self, request: web.BaseRequest, kind: str, now: float,
                 exchange: Exchange) -> bool:
        if self.kind != "any" and self.kind != kind:
            return False
        if self._methods is not None and request.method not in self._methods:
            return False
        if self._path is not None and not self._path.search(request.path):
            return False
        if self.user_token is not None and \
                request.headers.get("Authorization") != f"Bearer {self.user_token}":
            return False
        if self.window is not None and not (self.window[0] <= now - self.added_at < self.window[1]):
            return False
        if self.when is not None and not self.when(request):
            return False
        return self.where is None or bool(self.where(exchange))

    def _take(self) -> bool:
        """Count a match; True if this one is within the budget."""
        self.matched += 1
        if self.matched <= self.after:
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        self.hits += 1
        return True


@attrs.define(eq=False)
class Exchange:
    """One request the proxy saw, and what became of it."""

    at: float  # time.monotonic() when it arrived
    method: str
    path: str
    query: str
    kind: str
    answer: str  # the answer's name: forward, status, reset, ...
    rule: Rule | None = None
    status: int | None = None  # the status the client got, if it got one
    forwarded: bool = False  # sent to the API server (an unreachable one: then reset)
    events: int = 0  # event lines passed to the client (watches)
    reset: bool = False  # the proxy reset the client's connection
    cancelled: bool = False  # the client went away before the proxy finished with it
    done: bool = False
    finished: float | None = None  # time.monotonic() when the proxy was done with it
    rewritten: str | None = None  # the query string sent upstream, if a Steer changed it
    # Recorded by a proxy made with record=True (else empty): the request's body, the API
    # server's answer (not for watches; the first MB), the events passed on to a watch client.
    body: bytes = b""
    answer_body: bytes = b""
    watch_events: list[WatchEvent] = attrs.Factory(list)


# --- the proxy --------------------------------------------------------------------------------


class FaultProxy:
    """See the module docstring. `upstream`: the API server URL; `ca_pem`: the CA that signed
    its serving certificate; `serving`: the proxy's own serving key pair; `client_cert`: the
    identity presented upstream (for clients that authenticate by certificate)."""

    def __init__(self, upstream: str, ca_pem: bytes, serving: KeyPair,
                 client_cert: KeyPair | None = None, *, record: bool = False) -> None:
        self.upstream = upstream.rstrip("/")
        self.record = record
        self._ca_pem = ca_pem
        self._serving = serving
        self._client_cert = client_cert
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._log: list[Exchange] = []
        self._open: dict[Exchange, asyncio.BaseTransport] = {}  # requests in flight
        # Open streams (watches answered 200) and how end_open() ends them: with this Status.
        self._ending: dict[Exchange, asyncio.Future[Status]] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._startup_error: BaseException | None = None
        self._files = Path()
        self._web: web.Server | None = None
        self._listener: asyncio.Server | None = None
        self._session: aiohttp.ClientSession | None = None
        # Requests delayed with lands_anyway whose client may be gone: sent all the same.
        self._landing: set[asyncio.Future[aiohttp.ClientResponse]] = set()
        self.port = 0

    @classmethod
    def for_control_plane(cls, control_plane: LocalControlPlane, *, as_user: str | None = None,
                          groups: tuple[str, ...] = (), record: bool = False) -> FaultProxy:
        """A proxy for `control_plane`'s API server; `as_user`: authenticate upstream with a
        client certificate for that user (for clients whose own certificate the proxy, which
        asks for none, cannot pass on); `record`: keep bodies and watch events in the log."""
        identity = control_plane.ca.client(as_user, groups) if as_user is not None else None
        return cls(control_plane.server, control_plane.ca.cert_pem, control_plane.ca.serving(),
                   identity, record=record)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # --- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def start(self, timeout: float = 10) -> None:
        self._files = Path(tempfile.mkdtemp(prefix="nimbus-kubearmor-faultproxy-"))
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError("the fault proxy did not start")
        if self._startup_error is not None:
            self.stop()
            raise RuntimeError("the fault proxy did not start") from self._startup_error

    def stop(self, timeout: float = 10) -> None:
        """Close the listener and every open connection (held requests are dropped, never
        forwarded), then end the thread."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop already stopped
                asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout)
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise RuntimeError("the fault proxy thread did not end")
        self._thread = None
        if self._files != Path():
            shutil.rmtree(self._files, ignore_errors=True)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as error:  # reported to start(), which raises it
            self._startup_error = error
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        cert, key = self._serving.write(self._files, "serving")
        server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_tls.load_cert_chain(str(cert), str(key))
        upstream_tls = ssl.create_default_context(cadata=self._ca_pem.decode())
        if self._client_cert is not None:
            upstream_tls.load_cert_chain(*map(str, self._client_cert.write(self._files, "client")))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=upstream_tls, limit=0),
            timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10),
            auto_decompress=False, skip_auto_headers=("User-Agent",))
        self._web = web.Server(self._handle, handler_cancellation=True, access_log=None)
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(self._web, "127.0.0.1", 0, ssl=server_tls)
        self.port = self._listener.sockets[0].getsockname()[1]

    def _landed(self, sending: asyncio.Future[aiohttp.ClientResponse]) -> None:
        """The answer to a request that landed after its client left: nobody reads it."""
        self._landing.discard(sending)
        if not sending.cancelled() and sending.exception() is None:
            sending.result().close()

    async def _shutdown(self) -> None:
        assert self._listener is not None and self._web is not None and self._session is not None
        for sending in list(self._landing):
            sending.cancel()
        self._listener.close()
        for connection in list(self._web.connections):
            if connection.transport is not None:
                connection.transport.abort()  # cancels its handler (handler_cancellation)
        await self._web.shutdown(1)
        await self._listener.wait_closed()
        await self._session.close()

    # --- rules and log (any thread) -----------------------------------------------------------

    def add(self, rule: Rule) -> Rule:
        """Append `rule` (tried after the ones already there); returns it."""
        with self._lock:
            rule.added_at = time.monotonic()
            self._rules.append(rule)
        return rule

    def remove(self, rule: Rule) -> None:
        with self._lock:
            self._rules.remove(rule)

    def clear(self) -> None:
        """Remove every rule (the log stays)."""
        with self._lock:
            self._rules.clear()

    def requests(self, kind: str | None = None, method: str | None = None,
                 path: str | None = None, answer: str | None = None,
                 rule: Rule | None = None) -> list[Exchange]:
        """Snapshots of the requests seen so far, oldest first, filtered (`path`: a regex)."""
        with self._lock:
            return [attrs.evolve(e, watch_events=list(e.watch_events))
                    for e in self._select(self._log, kind, method, path, answer, rule)]

    def reset_open(self, kind: str | None = None, method: str | None = None,
                   path: str | None = None, answer: str | None = None,
                   rule: Rule | None = None) -> int:
        """Reset the connection of every request in flight that matches (a watch already
        open, a held request, ...), as an API server restart or a load balancer does; returns
        how many. Rules only act on requests that arrive after they are added: this cuts the
        ones already there."""
        assert self._loop is not None
        with self._lock:
            chosen = self._select(list(self._open), kind, method, path, answer, rule)
            transports = [self._open[e] for e in chosen]
            for exchange in chosen:
                exchange.reset = True
        for transport in transports:
            self._loop.call_soon_threadsafe(_abort, transport)
        return len(chosen)

    def end_open(self, status: Status | None = None, path: str | None = None,
                 rule: Rule | None = None) -> int:
        """End every open watch stream that matches with an ERROR event carrying `status` (410
        Expired by default), as the API server ends a watch whose resourceVersion it no longer
        has; returns how many. Events already read from upstream and not passed on are lost."""
        assert self._loop is not None
        status = status or EndWith().status
        with self._lock:
            chosen = self._select(list(self._ending), "watch", None, path, None, rule)
            endings = [self._ending[e] for e in chosen]
        for ending in endings:
            self._loop.call_soon_threadsafe(_end, ending, status)
        return len(chosen)

    @staticmethod
    def _select(exchanges: list[Exchange], kind: str | None, method: str | None,
                path: str | None, answer: str | None, rule: Rule | None) -> list[Exchange]:
        pattern = re.compile(path) if path is not None else None
        return [e for e in exchanges
                if (kind is None or e.kind == kind)
                and (method is None or e.method == method.upper())
                and (pattern is None or pattern.search(e.path))
                and (answer is None or e.answer == answer)
                and (rule is None or e.rule is rule)]

    def _choose(self, request: web.BaseRequest, kind: str, body: bytes) -> Exchange:
        now = time.monotonic()
        exchange = Exchange(now, request.method, request.path, request.query_string, kind,
                            Forward.name, body=body)
        with self._lock:
            chosen = next((r for r in self._rules
                           if r._matches(request, kind, now, exchange) and r._take()), None)
            if chosen is not None:
                exchange.answer, exchange.rule = chosen.answer.name, chosen
            if not self.record:
                exchange.body = b""
            self._log.append(exchange)
        return exchange

    def _client_left(self, exchange: Exchange) -> None:
        with self._lock:
            exchange.cancelled = not exchange.reset

    def _update(self, exchange: Exchange, **changes: Any) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(exchange, name, value)

    def _record_event(self, exchange: Exchange, event: WatchEvent) -> None:
        with self._lock:
            exchange.watch_events.append(attrs.evolve(event, at=time.monotonic()))

    def _record_body(self, exchange: Exchange, data: bytes) -> None:
        with self._lock:
            room = _RECORDED_BODY - len(exchange.answer_body)
            if room > 0:
                exchange.answer_body += data[:room]

    def _stream_ending(self, exchange: Exchange,
                       upstream: aiohttp.ClientResponse) -> asyncio.Future[Status] | None:
        """For a watch answered 200: the future end_open() resolves to end it."""
        if exchange.kind != "watch" or upstream.status != 200:
            return None
        ending: asyncio.Future[Status] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._ending[exchange] = ending
        return ending

    # --- answering (the proxy's loop) ---------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        # All of the body, before a rule is chosen (rules may match on it; no client_max_size
        # for the proxy).
        body = await request.content.read() if request.body_exists else b""
        exchange = self._choose(request, request_kind(request.method, request.path, request.query),
                                body)
        answer: Answer = exchange.rule.answer if exchange.rule else Forward()
        if request.transport is not None:
            with self._lock:
                self._open[exchange] = request.transport
        try:
            return await self._answer(request, answer, exchange, body)
        except asyncio.CancelledError:  # the client went away, or the proxy cut or stopped it
            self._client_left(exchange)
            raise
        finally:
            with self._lock:
                exchange.done = True
                exchange.finished = time.monotonic()
                self._open.pop(exchange, None)
                self._ending.pop(exchange, None)

    async def _answer(self, request: web.BaseRequest, answer: Answer,
                      exchange: Exchange, body: bytes) -> web.StreamResponse:
        match answer:
            case Status():
                return self._status_response(answer, exchange)
            case Reset():
                return await self._reset(request, web.StreamResponse(), exchange)
            case Stall():
                await answer.wait()
            case Delay(lands_anyway=True):
                return await self._forward(request, answer, exchange, body, delay=answer.seconds)
            case Delay():
                await asyncio.sleep(answer.seconds)
            case SlowAnswer():
                return await self._forward(request, answer, exchange, body, hold=answer.seconds,
                                           until=answer.until)
            case Lost():
                return await self._lose_answer(request, answer, exchange, body)
            case CloseWatch(after_events=0) | ErrorEvent(after_events=0):
                return await self._empty_watch(request, answer, exchange)
        return await self._forward(request, answer, exchange, body)

    def _status_response(self, answer: Status, exchange: Exchange) -> web.Response:
        headers = {"Retry-After": str(answer.retry_after)} if answer.retry_after is not None else {}
        self._update(exchange, status=answer.code)
        return web.Response(body=_json(answer.body()), status=answer.code,
                            headers={"Content-Type": "application/json", **headers})

    async def _empty_watch(self, request: web.BaseRequest, answer: CloseWatch | ErrorEvent,
                           exchange: Exchange) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        self._update(exchange, status=200)
        await response.prepare(request)
        if isinstance(answer, ErrorEvent):
            await response.write(_error_event(answer.status))
        await response.write_eof()
        return response

    async def _lose_answer(self, request: web.BaseRequest, answer: Lost,
                           exchange: Exchange, body: bytes) -> web.StreamResponse:
        """Forward the request (at once or `lands_after` seconds later), whatever its client
        does, read and drop the API server's answer, and answer `answer.status` instead."""
        session = self._session
        assert session is not None
        headers = CIMultiDict((k, v) for k, v in request.headers.items()
                              if k.lower() not in _HOP_BY_HOP)
        url = URL(self.upstream + request.raw_path, encoded=True)

        async def send() -> aiohttp.ClientResponse:
            await asyncio.sleep(answer.lands_after or 0)
            self._update(exchange, forwarded=True)
            upstream = await session.request(request.method, url, headers=headers,
                                             data=body if body else None, allow_redirects=False)
            await upstream.read()
            return upstream

        sending = asyncio.ensure_future(send())
        self._landing.add(sending)
        sending.add_done_callback(self._landed)
        if answer.lands_after is None:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                await asyncio.shield(sending)
        return self._status_response(answer.status, exchange)

    async def _forward(self, request: web.BaseRequest, answer: Answer, exchange: Exchange,
                       body: bytes, delay: float | None = None, hold: float | None = None,
                       until: Gate | None = None) -> web.StreamResponse:
        """`delay`: send upstream after this long, whether or not the client is still there;
        `hold`: pass the API server's answer on this long after it came; `until`: and not
        before this gate is released."""
        session = self._session
        assert session is not None
        target = request.raw_path
        if isinstance(answer, Steer) and answer.query is not None:
            target = request.rel_url.with_query(answer.query(dict(request.query))).raw_path_qs
            self._update(exchange, rewritten=target.partition("?")[2])
        headers = CIMultiDict((k, v) for k, v in request.headers.items()
                              if k.lower() not in _HOP_BY_HOP)
        # Uncompressed bodies, so stream answers can count events in them.
        headers["Accept-Encoding"] = "identity"

        async def send() -> aiohttp.ClientResponse:
            if delay is not None:
                await asyncio.sleep(delay)
            self._update(exchange, forwarded=True)
            return await session.request(
                request.method, URL(self.upstream + target, encoded=True),
                headers=headers, data=body if body else None, allow_redirects=False)

        try:
            if delay is None:
                upstream = await send()
            else:
                sending = asyncio.ensure_future(send())
                try:
                    upstream = await asyncio.shield(sending)
                except asyncio.CancelledError:  # the client left: the request lands all the same
                    self._landing.add(sending)
                    sending.add_done_callback(self._landed)
                    raise
        except (aiohttp.ClientError, OSError):
            return await self._reset(request, web.StreamResponse(), exchange)
        try:
            if hold is not None or until is not None:
                self._update(exchange, status=upstream.status)  # answered, not passed on yet
            if hold is not None:
                await asyncio.sleep(hold)
            if until is not None:
                await until.wait()
            if isinstance(answer, ResetAnswered):
                return await self._reset_answered(request, upstream, answer, exchange)
            if isinstance(answer, Steer) and answer.decide is not None and \
                    exchange.kind == "watch" and upstream.status == 200:
                return await self._relay_steered(request, upstream, answer, exchange)
            return await self._relay(request, upstream, answer, exchange)
        finally:
            # Closed, not returned to the pool, unless read to the end: an upstream watch must
            # end when its client's does.
            if upstream.content.at_eof():
                upstream.release()
            else:
                upstream.close()

    async def _relay(self, request: web.BaseRequest, upstream: aiohttp.ClientResponse,
                     answer: Answer, exchange: Exchange) -> web.StreamResponse:
        cuts = isinstance(answer, ResetAfter | CloseWatch | ErrorEvent) and upstream.status == 200
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in upstream.headers.items():
            if name.lower() not in _HOP_BY_HOP or (name.lower() == "content-length" and not cuts):
                response.headers.add(name, value)
        self._update(exchange, status=upstream.status)
        events_left, bytes_left = _limits(answer) if cuts else (None, None)
        events = 0
        ending = self._stream_ending(exchange, upstream)
        recording = _Recording(exchange, self) if self.record else None
        if ending is not None:
            response.headers.popall("Content-Length", None)
        try:
            await response.prepare(request)
            while events_left != 0 and bytes_left != 0:
                try:
                    chunk = await _next_chunk(upstream, ending)
                except (aiohttp.ClientError, OSError):  # upstream broke mid-body: so does this
                    return await self._reset(request, response, exchange)
                if isinstance(chunk, Status):  # end_open()
                    await response.write(_error_event(chunk))
                    break
                if not chunk:
                    break
                cut, newlines = _through_nth_newline(chunk, events_left)
                if bytes_left is not None:
                    cut = min(cut, bytes_left)
                    bytes_left -= cut
                if events_left is not None:
                    events_left -= newlines
                size = answer.size if isinstance(answer, Trickle) else max(cut, 1)
                for start in range(0, cut, size):  # the whole chunk at once, unless trickled
                    piece = chunk[start:min(cut, start + size)]
                    await response.write(piece)
                    if recording is not None:
                        recording.add(piece)
                    if isinstance(answer, Trickle):
                        await asyncio.sleep(answer.every)
                events += newlines
                self._update(exchange, events=events)
            if cuts and isinstance(answer, ResetAfter):
                return await self._reset(request, response, exchange)
            if cuts and isinstance(answer, ErrorEvent):
                await response.write(_error_event(answer.status))
            await response.write_eof()
        except ConnectionError:  # the client went away, or reset_open() cut it
            self._client_left(exchange)
        return response

    async def _reset_answered(self, request: web.BaseRequest, upstream: aiohttp.ClientResponse,
                              answer: ResetAnswered, exchange: Exchange) -> web.StreamResponse:
        """The API server's answer, read whole and never passed on (the log keeps its status)."""
        try:
            content = await upstream.read()
        except (aiohttp.ClientError, OSError):
            content = b""
        self._update(exchange, status=upstream.status)
        if self.record:
            self._record_body(exchange, content)
        if answer.then is not None:
            answer.then(exchange)
        return await self._reset(request, web.StreamResponse(), exchange)

    async def _relay_steered(self, request: web.BaseRequest, upstream: aiohttp.ClientResponse,
                             answer: Steer, exchange: Exchange) -> web.StreamResponse:
        """A watch passed on event by event, each as `answer.decide` says."""
        decide = answer.decide
        assert decide is not None
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for name, value in upstream.headers.items():
            if name.lower() not in _HOP_BY_HOP:
                response.headers.add(name, value)
        self._update(exchange, status=upstream.status)
        ending = self._stream_ending(exchange, upstream)
        lines: deque[bytes] = deque()
        partial, events = b"", 0
        try:
            await response.prepare(request)
            while True:
                while not lines:
                    try:
                        chunk = await _next_chunk(upstream, ending)
                    except (aiohttp.ClientError, OSError):
                        return await self._reset(request, response, exchange)
                    if isinstance(chunk, Status):
                        return await _end_with(response, chunk)
                    if not chunk:
                        await response.write_eof()
                        return response
                    complete, partial = _split_lines(partial + chunk)
                    lines.extend(complete)
                line = lines.popleft()
                event = WatchEvent.parse(line)
                verdict = decide(exchange, event)
                if isinstance(verdict, Hold):
                    ended = await _gate_or_ending(verdict.gate, ending)
                    if ended is not None:
                        return await _end_with(response, ended)
                elif isinstance(verdict, Drop):
                    continue
                elif isinstance(verdict, Cut):
                    return await self._reset(request, response, exchange)
                elif isinstance(verdict, EndWith):
                    return await _end_with(response, verdict.status)
                await response.write(line)
                events += 1
                self._update(exchange, events=events)
                if self.record:
                    self._record_event(exchange, event)
        except ConnectionError:  # the client went away, or reset_open() cut it
            self._client_left(exchange)
        return response

    async def _reset(self, request: web.BaseRequest, response: web.StreamResponse,
                     exchange: Exchange) -> web.StreamResponse:
        """Flush what was written, then close with a TCP RST (SO_LINGER 0). aiohttp then fails
        quietly to finish `response` on the closed transport."""
        self._update(exchange, reset=True)
        transport = request.transport
        if transport is not None:
            deadline = time.monotonic() + _FLUSH_TIMEOUT
            # asyncio signals no "write buffer empty"; the event loop writes the rest meanwhile.
            while _unsent(transport) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
            _abort(transport)
        return response


class _Recording:
    """What a response passes on to its client, kept in the log of a proxy made with
    record=True: a watch's events one by one, anything else's body (its first MB)."""

    def __init__(self, exchange: Exchange, proxy: FaultProxy) -> None:
        self._exchange, self._proxy = exchange, proxy
        self._stream = exchange.kind == "watch" and exchange.status == 200
        self._partial = b""

    def add(self, data: bytes) -> None:
        if not self._stream:
            self._proxy._record_body(self._exchange, data)
            return
        lines, self._partial = _split_lines(self._partial + data)
        for line in lines:
            self._proxy._record_event(self._exchange, WatchEvent.parse(line))


def _split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """(the complete lines of `data`, each with its newline; what follows the last one)."""
    lines = data.split(b"\n")
    rest = lines.pop()
    return [line + b"\n" for line in lines], rest


async def _next_chunk(upstream: aiohttp.ClientResponse,
                      ending: asyncio.Future[Status] | None) -> bytes | Status:
    """The next chunk of the body, or the Status end_open() ended the stream with first."""
    if ending is None:
        return await upstream.content.readany()
    if ending.done():
        return ending.result()
    reading = asyncio.ensure_future(upstream.content.readany())
    racing: set[asyncio.Future[Any]] = {reading, ending}
    try:
        await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not reading.done():
            reading.cancel()
    if reading.done() and not reading.cancelled():
        return reading.result()  # data (or EOF) wins over an ending that came at the same time
    return ending.result()


async def _gate_or_ending(gate: Gate, ending: asyncio.Future[Status] | None) -> Status | None:
    """Wait for `gate`; the Status if end_open() ends the stream first."""
    if ending is None:
        await gate.wait()
        return None
    waiting = asyncio.ensure_future(gate.wait())
    racing: set[asyncio.Future[Any]] = {waiting, ending}
    try:
        await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not waiting.done():
            waiting.cancel()
    return None if waiting.done() and not waiting.cancelled() else ending.result()


async def _end_with(response: web.StreamResponse, status: Status) -> web.StreamResponse:
    await response.write(_error_event(status))
    await response.write_eof()
    return response


def _end(ending: asyncio.Future[Status], status: Status) -> None:
    if not ending.done():
        ending.set_result(status)


def _abort(transport: asyncio.BaseTransport) -> None:
    """Close with a TCP RST (SO_LINGER 0), dropping whatever is still unsent."""
    sock = transport.get_extra_info("socket")
    if sock is not None and not transport.is_closing():
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _limits(answer: Answer) -> tuple[int | None, int | None]:
    match answer:
        case ResetAfter():
            return answer.events, answer.bytes
        case CloseWatch() | ErrorEvent():
            return answer.after_events, None
    return None, None


def _through_nth_newline(chunk: bytes, n: int | None) -> tuple[int, int]:
    """(length of `chunk` up to and including its n-th newline or all of it, newlines in that);
    n=None: no limit."""
    if n is None:
        return len(chunk), chunk.count(b"\n")
    position, found = 0, 0
    while found < n:
        index = chunk.find(b"\n", position)
        if index < 0:
            return len(chunk), found
        position, found = index + 1, found + 1
    return position, found


def _unsent(transport: asyncio.BaseTransport) -> bool:
    """Bytes still buffered in user space: in the TLS layer, and in the socket transport under it
    (asyncio offers no public way to reach that one)."""
    sizes = [getattr(transport, "get_write_buffer_size", lambda: 0)()]
    inner = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
    if inner is not None:
        sizes.append(inner.get_write_buffer_size())
    return any(sizes)


def _error_event(status: Status) -> bytes:
    return _json({"type": "ERROR", "object": status.body()}) + b"\n"


def _json(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()  # compact, as the API server
