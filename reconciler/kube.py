"""The Kubernetes API as this controller uses it, on kr8s's `Api.call_api`: paginated LIST,
streaming WATCH with a read timeout, and the writes, with errors as one `ApiError` type."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
import attrs
import httpx
import kr8s

from .model import KUBEARMOR_GROUP, KUBEARMOR_VERSION, NIMBUS_GROUP, NIMBUS_VERSION

Obj = dict[str, Any]
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"


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


class ApiError(Exception):
    """A failed request. `status` is the HTTP status, or 0 when no response came back
    (connection refused or reset, timeout). `causes` are the Status body's
    details.causes[].type values (e.g. NamespaceTerminating)."""

    def __init__(self, status: int, reason: str, message: str,
                 retry_after: float | None = None, causes: tuple[str, ...] = ()) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else f"{reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        self.causes = causes

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """The error a non-2xx answer stands for, from its Kubernetes Status body when it has
        one (a proxy or load balancer may answer with plain text or HTML instead)."""
        body: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            parsed = response.json()
            if isinstance(parsed, dict):
                body = parsed
        raw_details = body.get("details")
        details: dict[str, Any] = raw_details if isinstance(raw_details, dict) else {}
        causes = tuple(str(c.get("type") or "") for c in details.get("causes") or []
                       if isinstance(c, dict))
        retry_after = _retry_after(response)
        if retry_after is None and isinstance(details.get("retryAfterSeconds"), int | float):
            retry_after = float(details["retryAfterSeconds"])
        message = str(body.get("message") or response.text[:200].strip() or response.reason_phrase)
        return cls(response.status_code, str(body.get("reason") or response.reason_phrase or "Error"),
                   message, retry_after, causes)

    @property
    def gone(self) -> bool:
        return self.status == 410

    @property
    def conflict(self) -> bool:
        return self.status == 409 and self.reason == "Conflict"

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
    def transient(self) -> bool:
        """The connection or the server's load failed, not the request: the same request may
        well succeed later (refused, reset, timed out, 429, 5xx)."""
        return self.status == 0 or self.status == 429 or self.status >= 500


def _retry_after(response: httpx.Response | None) -> float | None:
    value = response.headers.get("Retry-After") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def api_error(error: BaseException) -> ApiError | None:
    """The ApiError a kr8s or httpx exception stands for, or None if it is not an API failure."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, kr8s.APITimeoutError | httpx.TimeoutException):
        return ApiError(0, "Timeout", str(error) or type(error).__name__)
    if isinstance(error, httpx.TransportError | httpx.StreamError):
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


class KubeClient:
    """Every request is made once (a 401 excepted, see below) and its failure raised as an
    ApiError: retrying is the caller's business (the work queue's backoff, the reflector's).

    kr8s is asked not to raise for statuses (`raise_for_status=False`): when it does, it treats
    401 *and* 403 as expired credentials and re-authenticates up to three times, replacing its
    one shared HTTP client and so closing every watch and request under way. A 403 is an answer
    (RBAC, an admission policy, a namespace being deleted), never a reason to re-authenticate.
    On a 401 the credentials are read again once (in a pod the kubelet rotates the token file)
    and put on the shared client in place, and the request is tried once more."""

    def __init__(self, api: Any, request_timeout: float = 30.0) -> None:
        self.api = api
        self.request_timeout = httpx.Timeout(request_timeout)
        self.request_seconds = request_timeout
        # When a write last failed without an answer (timed out, connection lost after it was
        # sent): the server may apply it up to a request timeout later.
        self._unanswered_write_at: float | None = None
        # Bumped each time the credentials are read again: a request that failed with 401
        # under an older generation retries without reading them once more.
        self._credentials_generation = 0
        self._credentials_lock = anyio.Lock()

    async def _refresh_credentials(self, failed_under: int) -> None:
        async with self._credentials_lock:
            if self._credentials_generation != failed_under:
                return  # another request read them meanwhile
            self._credentials_generation += 1
            await self.api.auth.reauthenticate()
            # kr8s puts the token into its client's default headers when it creates the client;
            # changing them there leaves the connections (and the watches on them) alone.
            session = getattr(self.api, "_session", None)
            if session is not None and self.api.auth.token:
                session.headers["Authorization"] = f"Bearer {self.api.auth.token}"

    def writes_may_still_land(self) -> bool:
        """Whether a write that got no answer may still be applied by the server."""
        return self._unanswered_write_at is not None and \
            time.monotonic() - self._unanswered_write_at < self.request_seconds

    async def _request(self, method: str, resource: Resource, namespace: str | None,
                       url: str, **kwargs: Any) -> Obj:
        try:
            return await self._attempts(method, resource, namespace, url, **kwargs)
        except ApiError as error:
            if error.status == 0 and method != "GET":
                self._unanswered_write_at = time.monotonic()
            raise

    async def _attempts(self, method: str, resource: Resource, namespace: str | None,
                        url: str, **kwargs: Any) -> Obj:
        kwargs.setdefault("timeout", self.request_timeout)
        for attempt in range(2):
            generation = self._credentials_generation
            with _as_api_errors():
                async with self.api.call_api(method, version=resource.api_version,
                                             namespace=namespace, url=url,
                                             raise_for_status=False, **kwargs) as response:
                    if not response.is_error:
                        return response.json() if response.content else {}
                    error = ApiError.from_response(response)
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
        params = {k: v for k, v in (("labelSelector", label_selector), ("limit", limit),
                                    ("continue", continue_token),
                                    ("fieldSelector", field_selector)) if v}
        return await self._request("GET", resource, namespace, self._url(resource), params=params)

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
        for attempt in range(2):
            generation = self._credentials_generation
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
                yield json.loads(line)
