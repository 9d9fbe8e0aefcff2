"""The Kubernetes API as this controller uses it, on kr8s's `Api.call_api`: paginated LIST,
streaming WATCH with a read timeout, and the writes, with errors as one `ApiError` type. Large
answers are decoded without stalling the event loop (jsondecode.py)."""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping
from resource import RLIM_INFINITY, RLIMIT_NOFILE, getrlimit, setrlimit
from typing import Any

import anyio
import attrs
import httpx
import kr8s

from .inlinecredentials import remove_written_files
from .jsondecode import ListItems, loads, loads_list
from .names import KUBEARMOR_GROUP, KUBEARMOR_VERSION, NIMBUS_GROUP, NIMBUS_VERSION
from .tokenfile import TokenFile

log = logging.getLogger(__name__)
Obj = dict[str, Any]
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
# kube-apiserver's whole message when a JSON patch does not apply to the object (apimachinery's
# generic words for a 422): what tells a failed `test` from a webhook's 422 without details.
PATCH_NOT_APPLIED = "the server rejected our request due to an error in our request"


@attrs.frozen
class Resource:
    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


NIMBUS_POLICIES = Resource(NIMBUS_GROUP, NIMBUS_VERSION, "nimbuspolicies", "NimbusPolicy")
KUBEARMOR_POLICIES = Resource(KUBEARMOR_GROUP, KUBEARMOR_VERSION, "kubearmorpolicies",
                              "KubeArmorPolicy")
EVENTS = Resource("", "v1", "events", "Event")
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
VERSION = Resource("", "", "", "Info")  # /version: no group, no version


class ApiError(Exception):
    """A failed request. `status` is the HTTP status, or 0 when no response came back
    (connection refused or reset, timeout). `causes` are the Status body's
    details.causes[].reason values (e.g. NamespaceTerminating; "" for a cause without one);
    `object_named`: its details name the object (every refusal by the schema, an admission
    policy or a webhook does)."""

    def __init__(self, status: int, reason: str, message: str,
                 retry_after: float | None = None, causes: tuple[str, ...] = (),
                 object_named: bool = False) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else f"{reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        self.causes = causes
        self.object_named = object_named

    @classmethod
    def from_response(cls, response: httpx.Response,
                      wall_clock: Callable[[], float] = time.time) -> ApiError:
        """The error a non-2xx answer stands for, from its Kubernetes Status body when it has
        one (a proxy or load balancer may answer with plain text or HTML instead, or cut the
        body short). `wall_clock`: the time a Retry-After date is counted from when the answer
        has no Date header."""
        body: dict[str, Any] = {}
        with contextlib.suppress(ValueError):  # not JSON, not UTF-8, truncated
            parsed = response.json()
            if isinstance(parsed, dict):
                body = parsed
        raw_details = body.get("details")
        details: dict[str, Any] = raw_details if isinstance(raw_details, dict) else {}
        raw_causes = details.get("causes")
        # A StatusCause's type is sent as "reason" (metav1.StatusCause.Type's JSON name).
        causes = tuple(str(c.get("reason") or "") for c in raw_causes
                       if isinstance(c, dict)) if isinstance(raw_causes, list) else ()
        retry_after = _retry_after(response, wall_clock)
        seconds = details.get("retryAfterSeconds")
        if retry_after is None and isinstance(seconds, int | float) and \
                not isinstance(seconds, bool) and 0 <= seconds < math.inf:
            retry_after = float(seconds)
        message = body.get("message")
        if not isinstance(message, str) or not message:
            message = " ".join(response.text[:200].split()) or response.reason_phrase
        reason = body.get("reason")
        if not isinstance(reason, str) or not reason:
            reason = response.reason_phrase or "Error"
        return cls(response.status_code, reason, message, retry_after, causes,
                   object_named=bool(details.get("name") or details.get("kind")))

    @property
    def gone(self) -> bool:
        return self.status == 410

    @property
    def conflict(self) -> bool:
        return self.status == 409 and self.reason == "Conflict"

    @property
    def patch_test_failed(self) -> bool:
        """A JSON patch that did not apply to the object as it now is: one of its `test`
        operations did not hold (or a path it names is gone). The API server answers that with
        422 Invalid, empty details and its generic words for a 422 (the patch library's are
        dropped). Other refusals are 422 Invalid too: the schema's and an admission policy's
        name the object and the causes; an admission webhook's may have no details at all, but
        say which webhook denied the request. Only the first is retried on a fresh read."""
        return self.status == 422 and self.reason == "Invalid" and not self.causes \
            and not self.object_named and self.message == PATCH_NOT_APPLIED

    @property
    def stale(self) -> bool:
        """The write was made against a version of the object that is no longer the current
        one: read it again and retry (409 Conflict, or a JSON patch whose test failed)."""
        return self.conflict or self.patch_test_failed

    @property
    def already_exists(self) -> bool:
        return self.status == 409 and self.reason == "AlreadyExists"

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def unauthorized(self) -> bool:
        return self.status == 401

    @property
    def namespace_terminating(self) -> bool:
        """A write refused because its namespace is being deleted (NamespaceLifecycle)."""
        return self.status == 403 and ("NamespaceTerminating" in self.causes
                                       or "because it is being terminated" in self.message)

    @property
    def too_large(self) -> bool:
        """Refused for its size: the object would be past etcd's request limit (1.5 MiB by
        default; kube-apiserver answers 500 "etcdserver: request is too large", measured on
        v1.35: a status written to a NimbusPolicy at the size limit), or the request body past
        the API server's own (413). Nothing was written, and the same request meets the same
        answer until the object shrinks."""
        return self.status == 413 or (self.status == 500
                                      and "etcdserver: request is too large" in self.message)

    @property
    def transient(self) -> bool:
        """The connection or the server's load failed, not the request: the same request may
        well succeed later (refused, reset, timed out, 429, 5xx but a refusal for size)."""
        return (self.status == 0 or self.status == 429 or self.status >= 500) \
            and not self.too_large


def _retry_after(response: httpx.Response, wall_clock: Callable[[], float]) -> float | None:
    """Retry-After in seconds, or as an HTTP date (RFC 9110 10.2.3): counted from the answer's
    own Date header when it has one (the server's clock on both sides), else from now. None
    when absent or unreadable; a date already past is 0."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        seconds = float(value)  # not the standard's form, but unambiguous
    except ValueError:
        pass
    else:
        return seconds if 0 <= seconds < math.inf else None
    when = _http_date(value)
    if when is None:
        return None
    sent = _http_date(response.headers.get("Date") or "")
    return max(0.0, when - (sent if sent is not None else wall_clock()))


def _http_date(value: str) -> float | None:
    """An HTTP date (IMF-fixdate, or the obsolete RFC 850 and asctime forms) as a POSIX time."""
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # asctime and "-0000": HTTP dates are always GMT
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def api_error(error: BaseException) -> ApiError | None:
    """The ApiError a kr8s or httpx exception stands for, or None if it is not an API failure."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, kr8s.ServerError) and error.response is not None:
        return ApiError.from_response(error.response)  # kr8s's own first request (/version)
    if isinstance(error, kr8s.APITimeoutError | httpx.TimeoutException):
        return ApiError(0, "Timeout", str(error) or type(error).__name__)
    if isinstance(error, httpx.TransportError | httpx.StreamError | httpx.DecodingError):
        # a connection that failed, or an answer whose body could not be decoded (a corrupt
        # gzip stream): the request failed, not the server's answer
        return ApiError(0, type(error).__name__, str(error) or "connection failed")
    return None


@contextlib.contextmanager
def _as_api_errors() -> Any:
    try:
        yield
    except Exception as error:
        converted = api_error(error)
        if converted is None or converted is error:
            raise
        raise converted from error


# Connections for short requests (LISTs, writes, Events, the Lease), besides one per stream
# that stays open: httpx's own default pool size, which kr8s keeps.
REQUEST_CONNECTIONS = 100
# Open files besides the connections: the HTTP servers, their clients, logs, libraries.
OTHER_FILES = 100


def allow_open_files(count: int) -> None:
    """Raise the soft limit on open files to the hard limit, as a Go program (client-go's users)
    does at start: a container runtime may start us with 1024 (containerd 2 does), 500
    namespaces are 1000 watches, a connection each, and a few hundred idle connections to the
    probe port (anyone who reaches the pod can open them) must not leave the controller none
    to reach the API server with. Warns if the hard limit is under `count`, what the
    connections may need."""
    soft, hard = getrlimit(RLIMIT_NOFILE)
    if soft not in (RLIM_INFINITY, hard):
        try:
            setrlimit(RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # an infinite hard limit is more than the kernel allows
            setrlimit(RLIMIT_NOFILE, (max(soft, count), hard))
    if hard != RLIM_INFINITY and hard < count:
        log.warning("the hard limit on open files is lower than the connections may need",
                    extra={"limit": hard, "needed": count})


def may_have_landed(error: ApiError) -> bool:
    """Whether a write that failed with `error` may all the same have been applied (or still be
    applied) by the API server. No answer at all (a timeout, a connection lost after the request
    was sent), and every 5xx: the API server answers 504 when its own request timeout passes
    while the handler, and so the write to etcd, carries on; 500 when something failed after
    etcd committed (an etcd timeout whose commit went through after all); a proxy or load
    balancer between us answers 502, 503 or 504 when it lost or gave up on an upstream that
    had the request. A 4xx (429 included: refused before any handler ran), and a refusal for
    the object's size (etcd refused to store it), are decisions not to apply it."""
    return (error.status == 0 or error.status >= 500) and not error.too_large


# The longest a request waits before it is sent again when the API server said when to come
# back (`throttled_retries`): a Retry-After longer than this is taken as this.
LONGEST_THROTTLED_WAIT = 10.0


def throttled(method: str, error: ApiError) -> bool:
    """Whether the API server asked for `method` to be sent again later, and nothing of it can
    have been applied: a 429 with a Retry-After (API Priority and Fairness, max-in-flight:
    refused before any handler ran), or a GET answered 5xx with a Retry-After (a read)."""
    return error.retry_after is not None and (
        error.status == 429 or (error.status >= 500 and method == "GET"))


class KubeClient:
    """Every request is made once (a 401 excepted, see below) and its failure raised as an
    ApiError: retrying is the caller's business (the work queue's backoff, the reflector's).
    With `throttled_retries` (for `--once`, which has no work queue to back off in), a request
    the API server asked to send again later (`throttled`) is sent again after the Retry-After
    it gave (at most LONGEST_THROTTLED_WAIT), that many times at most, as client-go's REST
    client does for every request (10 times).

    kr8s is asked not to raise for statuses (`raise_for_status=False`): when it does, it treats
    401 *and* 403 as expired credentials and re-authenticates up to three times, replacing its
    one shared HTTP client and so closing every watch and request under way. A 403 is an answer
    (RBAC, an admission policy, a namespace being deleted), never a reason to re-authenticate.
    On a 401 the credentials are read again once (in a pod the kubelet rotates the token file)
    and put on the shared client in place, and the request is tried once more.

    Over HTTP/1.1 every watch holds a connection of its own for as long as it runs, so the
    connection pool is sized to the streams its users say they keep open (`expect_streams`)
    plus REQUEST_CONNECTIONS: 200 namespaces are 400 watches, which kr8s's pool of 100 would
    never hold, and a LIST, a write or the Lease renewal waiting for a connection behind them
    would time out. (kube-apiserver allows 100 streams per HTTP/2 connection, and httpx's HTTP/2
    opens one connection per server and queues the rest; see the README.)

    In a pod (`token_file`: the mounted service-account token) the token is also read again about
    every minute, as client-go does, so a rotated token is in use long before the old one expires
    or is revoked: no request is refused for it, no watch broken."""

    def __init__(self, api: Any, request_timeout: float = 30.0,
                 token_file: TokenFile | None = None, throttled_retries: int = 0) -> None:
        self.api = api
        self.throttled_retries = throttled_retries
        self.request_timeout = httpx.Timeout(request_timeout)
        self.request_seconds = request_timeout
        self.token_file = token_file
        # When a write last failed in a way that may still see it applied (may_have_landed):
        # the server may apply it up to a request timeout later.
        self._uncertain_write_at: float | None = None
        # Requests that stay open (watches) the users of this client run at once, at most; the
        # connection pool holds that many connections more than REQUEST_CONNECTIONS.
        self._streams = 0
        self._sized_session: Any = None  # the HTTP client whose pool was last sized
        # The token on the shared client's headers (kr8s put the one it read there).
        self._token_in_use: str | None = api.auth.token
        # Bumped each time the credentials are read again after a 401, and each time a token
        # read again on schedule replaces the one in use: a request that failed with 401 under
        # an older generation retries without reading them once more.
        self._credentials_generation = 0
        self._credentials_lock = anyio.Lock()

    def _credentials(self) -> int:
        """The generation of the credentials the next request goes with, after putting a token
        the kubelet rotated (read again once a minute) on the client."""
        if self.token_file is not None:
            token = self.token_file.token()
            if token is not None and token != self._token_in_use:
                self._use_token(token)
                self._credentials_generation += 1
        return self._credentials_generation

    async def _refresh_credentials(self, failed_under: int) -> None:
        async with self._credentials_lock:
            if self._credentials_generation != failed_under:
                return  # another request read them meanwhile
            self._credentials_generation += 1
            if self.token_file is not None:
                token = self.token_file.read()
            else:
                # kr8s's copies of the kubeconfig's inline data: the HTTP client has read them
                # (a request was answered), and reading the kubeconfig again writes new ones
                # over their names; the client made at the start is kept, so neither is needed.
                remove_written_files(self.api.auth)
                await self.api.auth.reauthenticate()
                remove_written_files(self.api.auth)
                token = self.api.auth.token
            if token:
                self._use_token(token)

    def _use_token(self, token: str) -> None:
        # kr8s puts the token into its client's default headers when it creates the client;
        # changing them there leaves the connections (and the watches on them) alone. kr8s's
        # own copy is for a client it may create again.
        self.api.auth.token = token
        session = getattr(self.api, "_session", None)
        if session is not None:
            session.headers["Authorization"] = f"Bearer {token}"
        self._token_in_use = token

    def expect_streams(self, count: int) -> None:
        """Make room in the connection pool for `count` more requests that stay open (watches)."""
        self._streams += count
        self._sized_session = None
        self._size_pool()
        allow_open_files(REQUEST_CONNECTIONS + self._streams + OTHER_FILES)

    def _size_pool(self) -> None:
        """Size the pool of kr8s's HTTP client (again when kr8s has made a new client). httpx
        takes its limits only when the client is made, and kr8s makes it, so its pool's
        limit is changed in place."""
        session = getattr(self.api, "_session", None)
        if session is None or session is self._sized_session:
            return
        transports = [session._transport, *(t for t in session._mounts.values() if t)]
        pools: list[Any] = [p for p in (getattr(t, "_pool", None) for t in transports)
                            if hasattr(p, "_max_connections")]
        for pool in pools:
            pool._max_connections = REQUEST_CONNECTIONS + self._streams
        if not pools:
            log.warning("cannot size the HTTP client's connection pool: watches beyond its "
                        "limit wait for a connection", extra={"streams": self._streams})
        self._sized_session = session

    def writes_may_still_land(self) -> bool:
        """Whether a write that failed in a way that may see it applied all the same (no answer,
        a 5xx: may_have_landed) may still be applied by the server."""
        return self._uncertain_write_at is not None and \
            time.monotonic() - self._uncertain_write_at < self.request_seconds

    async def _request(self, method: str, resource: Resource, namespace: str | None,
                       url: str, **kwargs: Any) -> Obj:
        body = await self._request_body(method, resource, namespace, url, **kwargs)
        return await loads(body) if body else {}

    async def _request_body(self, method: str, resource: Resource, namespace: str | None,
                            url: str, **kwargs: Any) -> bytes:
        """The answer's body, undecoded."""
        retries = 0
        while True:
            try:
                return await self._attempts(method, resource, namespace, url, **kwargs)
            except ApiError as error:
                if retries < self.throttled_retries and throttled(method, error):
                    assert error.retry_after is not None
                    wait = min(error.retry_after, LONGEST_THROTTLED_WAIT)
                    retries += 1
                    log.info("the API server asked to send the request again later",
                             extra={"method": method, "resource": resource.plural,
                                    "namespace": namespace, "error": str(error),
                                    "retry_in_s": wait, "retry": retries})
                    await anyio.sleep(wait)
                    continue
                if method != "GET" and may_have_landed(error):
                    self._uncertain_write_at = time.monotonic()
                raise

    async def _attempts(self, method: str, resource: Resource, namespace: str | None,
                        url: str, **kwargs: Any) -> bytes:
        kwargs.setdefault("timeout", self.request_timeout)
        # Tell the server when we give up, as client-go does: it then stops working on the
        # request by then, so a write we gave up on cannot land much later than that.
        kwargs["params"] = {**(kwargs.get("params") or {}), "timeout": f"{self.request_seconds:g}s"}
        self._size_pool()
        for attempt in range(2):
            generation = self._credentials()
            # httpx's timeout bounds each read; this, the whole exchange (as client-go's
            # request timeout does when one is set): an answer trickling in (a slow link, a
            # proxy passing on a few bytes at a time) cannot hold a reconcile for longer.
            try:
                with _as_api_errors(), anyio.fail_after(self.request_seconds):
                    async with self.api.call_api(method, version=resource.api_version,
                                                 namespace=namespace, url=url,
                                                 raise_for_status=False, **kwargs) as response:
                        if not response.is_error:
                            body: bytes = response.content
                            return body
                        error = ApiError.from_response(response)
            except TimeoutError as timeout:  # our deadline, not a read's (httpx's own class)
                raise ApiError(0, "Timeout", f"no whole answer within {self.request_seconds:g}s"
                               ) from timeout
            if not (error.unauthorized and attempt == 0):
                raise error
            await self._refresh_credentials(generation)
        raise AssertionError("unreachable")

    @staticmethod
    def _url(resource: Resource, name: str | None = None, subresource: str | None = None) -> str:
        return "/".join(part for part in (resource.plural, name, subresource) if part)

    async def list(self, resource: Resource, namespace: str | None, *,
                   label_selector: str | None = None, limit: int | None = None,
                   continue_token: str | None = None, field_selector: str | None = None) -> Obj:
        """One page. The items of a large one are decoded as they are read (jsondecode.ListItems:
        iterate them once, with `one_at_a_time` to keep the event loop going)."""
        params = {k: v for k, v in (("labelSelector", label_selector), ("limit", limit),
                                    ("continue", continue_token),
                                    ("fieldSelector", field_selector)) if v}
        body = await self._request_body("GET", resource, namespace, self._url(resource),
                                        params=params)
        return await loads_list(body)

    @contextlib.asynccontextmanager
    async def watch(self, resource: Resource, namespace: str | None, *, resource_version: str,
                    timeout_seconds: int, read_timeout: float, label_selector: str | None = None,
                    field_selector: str | None = None,
                    bookmarks: bool = True) -> AsyncIterator[AsyncIterator[Obj]]:
        """The watch's events, one dict each. A stream silent for `read_timeout` seconds raises
        ApiError(0, "Timeout"); the server ends it cleanly after `timeout_seconds`."""
        params: dict[str, Any] = {"watch": "true", "resourceVersion": resource_version,
                                  "timeoutSeconds": timeout_seconds}
        if bookmarks:
            params["allowWatchBookmarks"] = "true"
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        timeout = httpx.Timeout(connect=10.0, read=read_timeout, write=10.0, pool=10.0)
        self._size_pool()
        for attempt in range(2):
            generation = self._credentials()
            async with contextlib.AsyncExitStack() as stack:
                with _as_api_errors():
                    response = await stack.enter_async_context(self.api.call_api(
                        "GET", version=resource.api_version, namespace=namespace,
                        url=self._url(resource), stream=True, params=params, timeout=timeout,
                        raise_for_status=False))
                    error = None
                    if response.is_error:
                        await response.aread()
                        error = ApiError.from_response(response)
                if error is None:
                    yield _events(response, read_timeout)
                    return
            if not (error.unauthorized and attempt == 0):
                raise error
            await self._refresh_credentials(generation)

    async def get(self, resource: Resource, namespace: str | None, name: str) -> Obj | None:
        try:
            return await self._request("GET", resource, namespace, self._url(resource, name))
        except ApiError as error:
            if error.not_found:
                return None
            raise

    async def create(self, resource: Resource, namespace: str | None, body: Mapping[str, Any],
                     field_manager: str) -> Obj:
        return await self._request("POST", resource, namespace, self._url(resource),
                                   json=body, params={"fieldManager": field_manager})

    async def patch(self, resource: Resource, namespace: str | None, name: str, patch: Any,
                    content_type: str, field_manager: str,
                    subresource: str | None = None) -> Obj:
        return await self._request("PATCH", resource, namespace,
                                   self._url(resource, name, subresource),
                                   content=json.dumps(patch), params={"fieldManager": field_manager},
                                   headers={"Content-Type": content_type})

    async def replace(self, resource: Resource, namespace: str | None, name: str,
                      body: Mapping[str, Any], field_manager: str) -> Obj:
        """PUT: refused with 409 unless body's resourceVersion is the current one."""
        return await self._request("PUT", resource, namespace, self._url(resource, name),
                                   json=body, params={"fieldManager": field_manager})

    async def delete(self, resource: Resource, namespace: str | None, name: str,
                     uid: str | None = None) -> Obj | None:
        """Delete `name` if it is still the object with `uid`; already gone is success.
        Returns the answer: the object while a finalizer holds it, else a Status (or None when
        it was already gone)."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1",
                "preconditions": {"uid": uid} if uid else {}}
        try:
            return await self._request("DELETE", resource, namespace, self._url(resource, name),
                                       content=json.dumps(body))
        except ApiError as error:
            if not error.not_found:
                raise
            return None

    async def server_version(self) -> Obj:
        """The API server's /version (its build: gitVersion, ...)."""
        body = await self._attempts("GET", VERSION, None, "", base="/version")
        return await loads(body) if body else {}

    async def review(self, resource: Resource, body: Mapping[str, Any]) -> Obj:
        """POST a review (TokenReview, SubjectAccessReview) and return the answer with its
        status. A review stores nothing, so one left without an answer is no write that may
        still land (writes_may_still_land stays as it was)."""
        answer = await self._attempts("POST", resource, None, self._url(resource),
                                              json=body)
        return await loads(answer) if answer else {}


async def one_at_a_time(items: list[Obj] | ListItems) -> AsyncIterator[Obj]:
    """The items of a LIST page, each let go of by the page as it is handed out (its JSON goes
    once the reader is done with it); those of a large page decoded only as they are reached."""
    if isinstance(items, ListItems):
        async for item in items:
            yield item
        return
    for index, item in enumerate(items):
        items[index] = None  # type: ignore[call-overload]
        yield item


async def _events(response: httpx.Response, read_timeout: float) -> AsyncIterator[Obj]:
    lines = response.aiter_lines().__aiter__()
    with _as_api_errors():
        while True:
            # httpx's read timeout covers a silent socket; this also covers a stream that
            # trickles bytes but no whole event.
            try:
                with anyio.fail_after(read_timeout):
                    line = await lines.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError as silent:
                raise ApiError(0, "Timeout", f"watch stream silent for {read_timeout:.0f}s") from silent
            if line:
                yield await loads(line)
