"""The Kubernetes API as this controller uses it, on kr8s's `Api.call_api`: paginated LIST,
streaming WATCH with a read timeout, and the writes, with errors as one `ApiError` type."""

from __future__ import annotations

import contextlib
import json
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
    (connection refused or reset, timeout)."""

    def __init__(self, status: int, reason: str, message: str,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}" if status else f"{reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after

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
    if isinstance(error, kr8s.ServerError):
        response = error.response
        status = response.status_code if response is not None else 0
        body: dict[str, Any] = error.status if isinstance(error.status, dict) else {}
        return ApiError(status, str(body.get("reason") or (response.reason_phrase if response
                                                           is not None else "Error")),
                        str(body.get("message") or error), _retry_after(response))
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
    def __init__(self, api: Any, request_timeout: float = 30.0) -> None:
        self.api = api
        self.request_timeout = httpx.Timeout(request_timeout)

    async def _request(self, method: str, resource: Resource, namespace: str | None,
                       url: str, **kwargs: Any) -> Obj:
        kwargs.setdefault("timeout", self.request_timeout)
        with _as_api_errors():
            async with self.api.call_api(method, version=resource.api_version,
                                         namespace=namespace, url=url, **kwargs) as response:
                return response.json() if response.content else {}

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
                    field_selector: str | None = None) -> AsyncIterator[AsyncIterator[Obj]]:
        """The watch's events, one dict each. A stream silent for `read_timeout` seconds raises
        ApiError(0, "Timeout"); the server ends it cleanly after `timeout_seconds`."""
        params: dict[str, Any] = {"watch": "true", "resourceVersion": resource_version,
                                  "allowWatchBookmarks": "true", "timeoutSeconds": timeout_seconds}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        timeout = httpx.Timeout(connect=10.0, read=read_timeout, write=10.0, pool=10.0)
        with _as_api_errors():
            async with self.api.call_api("GET", version=resource.api_version, namespace=namespace,
                                         url=self._url(resource), stream=True, params=params,
                                         timeout=timeout) as response:

                async def events() -> AsyncIterator[Obj]:
                    lines = response.aiter_lines().__aiter__()
                    with _as_api_errors():
                        while True:
                            # httpx's read timeout covers a silent socket; this also covers a
                            # stream that trickles bytes but no whole event.
                            try:
                                with anyio.fail_after(read_timeout):
                                    line = await lines.__anext__()
                            except StopAsyncIteration:
                                return
                            except TimeoutError as silent:
                                raise ApiError(0, "Timeout", f"watch stream silent for "
                                               f"{read_timeout:.0f}s") from silent
                            if line:
                                yield json.loads(line)

                yield events()

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
                     uid: str | None = None) -> None:
        """Delete `name` if it is still the object with `uid`; already gone is success."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1",
                "preconditions": {"uid": uid} if uid else {}}
        try:
            await self._request("DELETE", resource, namespace, self._url(resource, name),
                                content=json.dumps(body))
        except ApiError as error:
            if not error.not_found:
                raise
