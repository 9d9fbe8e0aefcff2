"""How the client layer reads a failed request, through kr8s's real client with respx answering
for the API server: every status and body shape a Kubernetes API server, a proxy or a load
balancer in front of it sends (some of which neither the local control plane nor the fault
proxy makes on demand: a truncated or non-JSON body, Retry-After as an HTTP date, malformed
details), and what the controller decides from each (retry, re-read, report, give up)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import kr8s.asyncio
import pytest
import respx

from reconciler.kube import JSON_PATCH, NIMBUS_POLICIES, ApiError, KubeClient

REPO = Path(__file__).resolve().parents[2]

# marked here, not only by conftest at collection, so that parametrize and anyio combine
pytestmark = pytest.mark.anyio
SERVER = "https://127.0.0.1:6443"
NP_URL = f"{SERVER}/apis/intent.security.nimbus.com/v1alpha1/namespaces/ns/nimbuspolicies/np"
KUBECONFIG = f"""apiVersion: v1
kind: Config
clusters:
- name: local
  cluster: {{server: "{SERVER}", insecure-skip-tls-verify: true}}
users:
- name: reconciler
  user: {{token: not-a-real-token}}
contexts:
- name: local
  context: {{cluster: local, user: reconciler}}
current-context: local
"""


def status(code: int, reason: str, message: str = "m", **details: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "message": message, "reason": reason,
                            "code": code}
    if details:
        body["details"] = details
    return body


@pytest.fixture
async def kube(tmp_path: Path) -> AsyncIterator[tuple[KubeClient, respx.MockRouter]]:
    """A KubeClient on kr8s's own client; every request it makes is answered by respx
    (one not routed fails the test: nothing goes to the network)."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    with respx.mock(assert_all_called=False) as router:
        router.get(url__regex=r"/version/?$").respond(
            200, json={"major": "1", "minor": "35", "gitVersion": "v1.35.4"})
        api = await kr8s.asyncio.api(kubeconfig=str(kubeconfig))
        yield KubeClient(api), router


async def refused(kube: tuple[KubeClient, respx.MockRouter], response: httpx.Response,
                  method: str = "PATCH") -> ApiError:
    client, router = kube
    router.route(method=method, url=NP_URL + ("/status" if method == "PATCH" else "")
                 ).mock(return_value=response)
    with pytest.raises(ApiError) as raised:
        if method == "PATCH":
            await client.patch(NIMBUS_POLICIES, "ns", "np", [{"op": "test", "path": "/a"}],
                               JSON_PATCH, "test", subresource="status")
        else:
            await client.get(NIMBUS_POLICIES, "ns", "np")
    return raised.value


# --- what the API server itself answers (bodies as kube-apiserver v1.35 sends them) -----------


async def test_a_failed_json_patch_test_is_told_from_a_refusal(
        kube: tuple[KubeClient, respx.MockRouter]) -> None:
    generic = "the server rejected our request due to an error in our request"
    test_failed = await refused(kube, httpx.Response(422, json=status(422, "Invalid", generic)
                                                     | {"details": {}}))
    assert test_failed.patch_test_failed and test_failed.stale
    schema = await refused(kube, httpx.Response(422, json=status(
        422, "Invalid", 'NimbusPolicy.intent.security.nimbus.com "np" is invalid: '
        "status.status: Required value", name="np", group="intent.security.nimbus.com",
        kind="NimbusPolicy", causes=[{"reason": "FieldValueRequired",
                                      "message": "Required value", "field": "status.status"}])))
    assert schema.causes == ("FieldValueRequired",)
    assert not schema.patch_test_failed and not schema.stale
    admission = await refused(kube, httpx.Response(422, json=status(
        422, "Invalid", "ValidatingAdmissionPolicy 'deny' with binding 'deny' denied request: no",
        name="np", group="intent.security.nimbus.com", kind="nimbuspolicies",
        causes=[{"message": "ValidatingAdmissionPolicy 'deny' denied request: no"}])))
    assert admission.causes == ("",) and not admission.stale


async def test_a_webhooks_422_without_details_is_a_refusal_not_a_failed_test(
        kube: tuple[KubeClient, respx.MockRouter]) -> None:
    """A validating webhook's denial as kube-apiserver v1.35 passes it on (its code, reason and
    message; no details at all): the same status and reason as a failed `test`, and no details
    either. Retrying it on a fresh read would be three refused writes and two reads a
    reconcile, counted as conflicts and never reported as a refusal."""
    webhook = await refused(kube, httpx.Response(422, json=status(
        422, "Invalid", 'admission webhook "deny.example.com" denied the request: status '
        "writes are frozen")))
    assert not webhook.patch_test_failed and not webhook.stale and not webhook.transient
    # the same words without the API server's own shape are not a failed test either
    told = await refused(kube, httpx.Response(422, json=status(
        422, "Invalid", "the server rejected our request due to an error in our request",
        name="np", kind="nimbuspolicies")))
    assert not told.stale


async def test_conflicts_and_other_409s(kube: tuple[KubeClient, respx.MockRouter]) -> None:
    conflict = await refused(kube, httpx.Response(409, json=status(
        409, "Conflict", "the object has been modified", name="np", kind="nimbuspolicies")))
    assert conflict.conflict and conflict.stale and not conflict.transient
    exists = await refused(kube, httpx.Response(409, json=status(409, "AlreadyExists")))
    assert exists.already_exists and not exists.stale


async def test_a_namespace_being_deleted_is_known_by_its_cause(
        kube: tuple[KubeClient, respx.MockRouter]) -> None:
    """NamespaceLifecycle's cause (sent as "reason", the JSON name of StatusCause.Type), not
    its wording, which a webhook or a later release may change."""
    error = await refused(kube, httpx.Response(403, json=status(
        403, "Forbidden", 'unable to create new content in namespace ns',
        name="np", kind="nimbuspolicies",
        causes=[{"reason": "NamespaceTerminating", "message": "namespace ns is being terminated",
                 "field": "metadata.namespace"}])))
    assert error.causes == ("NamespaceTerminating",) and error.namespace_terminating
    rbac = await refused(kube, httpx.Response(403, json=status(
        403, "Forbidden", 'nimbuspolicies.intent.security.nimbus.com "np" is forbidden: User '
        '"x" cannot patch resource', name="np", kind="nimbuspolicies")))
    assert not rbac.namespace_terminating and not rbac.transient and not rbac.stale


async def test_not_found_is_none_for_a_get(kube: tuple[KubeClient, respx.MockRouter]) -> None:
    client, router = kube
    router.get(NP_URL).respond(404, json=status(404, "NotFound"))
    assert await client.get(NIMBUS_POLICIES, "ns", "np") is None
    router.get(NP_URL).respond(410, json=status(410, "Expired", "too old resource version"))
    with pytest.raises(ApiError) as gone:
        await client.get(NIMBUS_POLICIES, "ns", "np")
    assert gone.value.gone


async def test_the_http_status_is_what_counts_not_the_bodys_code(
        kube: tuple[KubeClient, respx.MockRouter]) -> None:
    error = await refused(kube, httpx.Response(500, json=status(409, "Conflict")))
    assert error.status == 500 and error.transient and not error.conflict


# --- Retry-After -------------------------------------------------------------------------------


async def test_retry_after_in_seconds_and_in_the_body(
        kube: tuple[KubeClient, respx.MockRouter]) -> None:
    error = await refused(kube, httpx.Response(429, json=status(429, "TooManyRequests"),
                                               headers={"Retry-After": "3"}))
    assert error.transient and error.retry_after == 3.0
    # the API server says it in both; a proxy may keep only the body's
    body_only = await refused(kube, httpx.Response(503, json=status(
        503, "ServiceUnavailable", retryAfterSeconds=2)))
    assert body_only.retry_after == 2.0
    header_wins = await refused(kube, httpx.Response(429, json=status(
        429, "TooManyRequests", retryAfterSeconds=9), headers={"Retry-After": "1"}))
    assert header_wins.retry_after == 1.0


async def test_retry_after_as_an_http_date(kube: tuple[KubeClient, respx.MockRouter]) -> None:
    """Counted from the answer's own Date (the server's clock on both sides)."""
    error = await refused(kube, httpx.Response(503, text="Service Unavailable", headers={
        "Retry-After": "Wed, 21 Oct 2026 07:28:30 GMT", "Date": "Wed, 21 Oct 2026 07:28:00 GMT"}))
    assert error.retry_after == 30.0
    past = await refused(kube, httpx.Response(503, headers={
        "Retry-After": "Wed, 21 Oct 2026 07:27:00 GMT", "Date": "Wed, 21 Oct 2026 07:28:00 GMT"}))
    assert past.retry_after == 0.0  # already due
    obsolete = await refused(kube, httpx.Response(503, headers={  # RFC 850's form
        "Retry-After": "Wednesday, 21-Oct-26 07:28:05 GMT", "Date": "Wed, 21 Oct 2026 07:28:00 GMT"}))
    assert obsolete.retry_after == 5.0


def test_retry_after_as_a_date_without_a_date_header_counts_from_now() -> None:
    response = httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2026 07:28:30 GMT"})
    now = 1792567700.0  # 2026-10-21T07:28:20Z
    assert ApiError.from_response(response, wall_clock=lambda: now).retry_after == 10.0


@pytest.mark.parametrize("header", ["soon", "-5", "inf", "nan", "", "Wed, 32 Oct 2026 07:28:30 GMT"])
async def test_a_retry_after_that_makes_no_sense_is_ignored(
        kube: tuple[KubeClient, respx.MockRouter], header: str) -> None:
    """Neither never (inf) nor a negative wait: the queue's own backoff applies."""
    error = await refused(kube, httpx.Response(429, json=status(429, "TooManyRequests"),
                                               headers={"Retry-After": header}))
    assert error.retry_after is None and error.transient


@pytest.mark.parametrize("seconds", [True, -1, "2", None, [2]])
async def test_a_body_retry_after_seconds_that_is_not_a_number_is_ignored(
        kube: tuple[KubeClient, respx.MockRouter], seconds: Any) -> None:
    error = await refused(kube, httpx.Response(503, json=status(
        503, "ServiceUnavailable", retryAfterSeconds=seconds)))
    assert error.retry_after is None


# --- what sits in front of the API server -----------------------------------------------------


async def test_a_load_balancers_html_502(kube: tuple[KubeClient, respx.MockRouter]) -> None:
    html = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
            "<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n")
    error = await refused(kube, httpx.Response(502, text=html,
                                               headers={"Content-Type": "text/html"}), "GET")
    assert (error.status, error.reason) == (502, "Bad Gateway")
    assert error.transient and not error.stale
    assert "\n" not in error.message and error.message.startswith("<html> <head><title>502")


@pytest.mark.parametrize("body", [
    b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the obj',
    b"[1, 2]", b'"just a string"', b"null", b"\xff\xfe not UTF-8 \x80", b"",
])
async def test_a_truncated_or_malformed_body(kube: tuple[KubeClient, respx.MockRouter],
                                             body: bytes) -> None:
    error = await refused(kube, httpx.Response(503, content=body,
                                               headers={"Content-Type": "application/json"}))
    assert (error.status, error.reason) == (503, "Service Unavailable") and error.transient
    assert error.message  # something to say in the log, whatever arrived
    assert error.causes == () and error.retry_after is None


@pytest.mark.parametrize("details", [
    {"causes": 5}, {"causes": {"reason": "NamespaceTerminating"}}, {"causes": "x"},
    {"causes": [None, 3, "NamespaceTerminating"]}, "details", [1],
])
async def test_malformed_details(kube: tuple[KubeClient, respx.MockRouter], details: Any) -> None:
    body = status(403, "Forbidden") | {"details": details}
    error = await refused(kube, httpx.Response(403, content=json.dumps(body).encode()))
    assert error.status == 403 and error.causes == () and not error.namespace_terminating


async def test_message_and_reason_that_are_not_strings(
        kube: tuple[KubeClient, respx.MockRouter]) -> None:
    error = await refused(kube, httpx.Response(500, json={"kind": "Status", "message": 42,
                                                          "reason": {"x": 1}}))
    assert error.reason == "Internal Server Error" and error.message


# --- no answer at all --------------------------------------------------------------------------


@pytest.mark.parametrize(("raised", "reason"), [
    (httpx.ConnectError("connection refused"), "ConnectError"),
    (httpx.ReadTimeout("timed out"), "Timeout"),
    (httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
     "RemoteProtocolError"),
])
async def test_no_answer(kube: tuple[KubeClient, respx.MockRouter], raised: Exception,
                         reason: str) -> None:
    client, router = kube
    router.get(NP_URL).mock(side_effect=raised)
    with pytest.raises(ApiError) as error:
        await client.get(NIMBUS_POLICIES, "ns", "np")
    assert (error.value.status, error.value.reason) == (0, reason) and error.value.transient


async def test_a_watch_refused_at_the_start(kube: tuple[KubeClient, respx.MockRouter]) -> None:
    client, router = kube
    router.get(NP_URL.rsplit("/", 1)[0]).respond(
        410, json=status(410, "Expired", "too old resource version: 1 (50)"))
    with pytest.raises(ApiError) as error:
        async with client.watch(NIMBUS_POLICIES, "ns", resource_version="1",
                                timeout_seconds=300, read_timeout=5) as events:
            async for _ in events:
                pass
    assert error.value.gone


# --- sent again when the server says when (--once's client) ----------------------------------


@pytest.mark.parametrize(("method", "code", "retry_after", "sent"), [
    ("GET", 429, "0", 3), ("PATCH", 429, "0", 3),  # refused before any handler ran
    ("GET", 503, "0", 3),  # a read: nothing to land twice
    ("PATCH", 503, "0", 1),  # a write answered 5xx may have landed: not sent again
    ("GET", 429, None, 1),  # the server did not say when: the caller's backoff decides
])
async def test_a_request_the_server_asks_to_send_again_later(
        kube: tuple[KubeClient, respx.MockRouter], method: str, code: int,
        retry_after: str | None, sent: int) -> None:
    client, router = kube
    client.throttled_retries = 2
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    route = router.route(method=method, url=NP_URL + ("/status" if method == "PATCH" else "")
                         ).mock(return_value=httpx.Response(code, json=status(code, "x"),
                                                            headers=headers))
    with pytest.raises(ApiError) as raised:
        if method == "PATCH":
            await client.patch(NIMBUS_POLICIES, "ns", "np", [], JSON_PATCH, "test",
                               subresource="status")
        else:
            await client.get(NIMBUS_POLICIES, "ns", "np")
    assert raised.value.status == code and route.call_count == sent


def test_the_soft_limit_on_open_files_is_raised_to_the_hard_one_as_go_does() -> None:
    """A Go program (client-go's, controller-runtime's users) raises its soft limit on open files
    to the hard one at start. Raised only to what the connections need, a container started with
    1024 (containerd 2) stayed at 1024, and a few hundred idle connections to the probe port
    (plain HTTP, 5 KB each: cheap for anyone who reaches the pod) left the controller none to
    reach the API server with."""
    script = ("import resource\n"
              "from reconciler.kube import allow_open_files\n"
              "allow_open_files(300)\n"
              "print(*resource.getrlimit(resource.RLIMIT_NOFILE))\n")

    def run(soft: int, hard: int) -> str:
        def limit() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              check=True, preexec_fn=limit, cwd=REPO).stdout.strip()

    assert run(256, 4096) == "4096 4096"
    assert run(200, 250) == "250 250"  # less than needed: all there is (and a warning)


async def test_an_answer_whose_body_cannot_be_decoded(
        kube: tuple[KubeClient, respx.MockRouter]) -> None:
    """A gzip stream cut or corrupted on the way: the request failed (it may well succeed
    again), not a crash of the reconcile with httpx's own exception."""
    client, router = kube
    router.get(NP_URL).mock(return_value=httpx.Response(
        200, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        stream=httpx.ByteStream(b"\x1f\x8b\x08\x00 not a gzip stream")))
    with pytest.raises(ApiError) as error:
        await client.get(NIMBUS_POLICIES, "ns", "np")
    assert (error.value.status, error.value.reason) == (0, "DecodingError")
    assert error.value.transient
