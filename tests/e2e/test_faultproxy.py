"""The fault proxy (tests/faultproxy.py) in front of the real kube-apiserver: it forwards lists
and live watches, each answer does what it says, a write whose client gave up while the proxy
held it never reaches the API server, and service-account token identities (authorized by their
rules, revoked by deleting their bound Secret, rotated in place) work through it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import kr8s.asyncio
import pytest
import yaml

from tests.controlplane.launcher import LocalControlPlane, token_claims, wait_for
from tests.faultproxy import (
    CloseWatch,
    Cut,
    Delay,
    Drop,
    EndWith,
    ErrorEvent,
    Exchange,
    FaultProxy,
    Gate,
    Hold,
    Lost,
    Pass,
    Reset,
    ResetAfter,
    ResetAnswered,
    Rule,
    SlowAnswer,
    Stall,
    Status,
    Steer,
    Verdict,
    WatchEvent,
)
from tests.waiting import eventually

SA_NAMESPACE = "faultproxy-e2e"
CONFIGMAPS = [{"apiGroups": [""], "resources": ["configmaps"],
               "verbs": ["get", "list", "watch", "create", "delete"]}]


@pytest.fixture(scope="module")
def proxy(control_plane: LocalControlPlane) -> Iterator[FaultProxy]:
    with FaultProxy.for_control_plane(control_plane) as running:
        yield running


@pytest.fixture(autouse=True)
def _no_rules_left(proxy: FaultProxy) -> Iterator[None]:
    yield
    proxy.clear()


@pytest.fixture(scope="module")
def tester(control_plane: LocalControlPlane, proxy: FaultProxy) -> Path:
    """A ServiceAccount's kubeconfig that reaches the API server through the proxy."""
    return control_plane.service_account_kubeconfig(SA_NAMESPACE, "tester", CONFIGMAPS,
                                                    server=proxy.url)


def _credentials(kubeconfig: Path) -> tuple[str, ssl.SSLContext, dict[str, str]]:
    config = yaml.safe_load(kubeconfig.read_text())
    cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
    tls = ssl.create_default_context(
        cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    return cluster["server"], tls, {"Authorization": f"Bearer {user['token']}"}


def client_from(kubeconfig: Path, timeout: float = 10) -> httpx.Client:
    """An httpx client as any Kubernetes client builds it from the kubeconfig."""
    server, tls, headers = _credentials(kubeconfig)
    return httpx.Client(base_url=server, verify=tls, headers=headers, timeout=timeout)


def async_client_from(kubeconfig: Path, timeout: float = 10) -> httpx.AsyncClient:
    server, tls, headers = _credentials(kubeconfig)
    return httpx.AsyncClient(base_url=server, verify=tls, headers=headers, timeout=timeout)


@pytest.fixture
def via_proxy(tester: Path) -> Iterator[httpx.Client]:
    with client_from(tester) as client:
        yield client


def configmaps(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/configmaps"


def create_configmaps(control_plane: LocalControlPlane, namespace: str, *names: str) -> None:
    with control_plane.client() as admin:
        for name in names:
            admin.post(configmaps(namespace), json={"metadata": {"name": name}}).raise_for_status()


def watch_lines(client: httpx.Client, namespace: str, resource_version: str = "0",
                timeout_seconds: int | None = None
                ) -> tuple[list[dict[str, Any]], Exception | None]:
    """Every event of a watch until it ends, and the transport error that ended it, if any.
    `timeout_seconds`: the API server ends the watch cleanly after that (else it lasts until
    the proxy ends it or the client's read timeout)."""
    events: list[dict[str, Any]] = []
    params = {"watch": "true", "resourceVersion": resource_version}
    if timeout_seconds is not None:
        params["timeoutSeconds"] = str(timeout_seconds)
    try:
        with client.stream("GET", configmaps(namespace), params=params) as stream:
            assert stream.status_code == 200
            events.extend(json.loads(line) for line in stream.iter_lines() if line)
    except httpx.TransportError as error:
        return events, error
    return events, None


def watches_ended(control_plane: LocalControlPlane, namespace: str) -> int:
    """Watches of the tester in `namespace` that the API server finished (a WATCH is logged at
    ResponseComplete when it ends)."""
    return sum(e["verb"] == "watch" for e in audit_by(control_plane, TESTER, namespace=namespace))


def audit_by(control_plane: LocalControlPlane, username: str, **match: str) -> list[dict[str, Any]]:
    """Audit events of `username`, whose objectRef has every field in `match`."""
    return [e for e in control_plane.audit_events()
            if e["user"].get("username") == username and e["stage"] == "ResponseComplete"
            and all(e.get("objectRef", {}).get(k) == v for k, v in match.items())]


TESTER = f"system:serviceaccount:{SA_NAMESPACE}:tester"


# --- forwarding -------------------------------------------------------------------------------


def test_forwards_lists_and_live_watches(control_plane: LocalControlPlane, proxy: FaultProxy,
                                         via_proxy: httpx.Client, namespace: str) -> None:
    create_configmaps(control_plane, namespace, "before")
    listed = via_proxy.get(configmaps(namespace))
    assert listed.status_code == 200, listed.text
    assert [i["metadata"]["name"] for i in listed.json()["items"]] == ["before"]
    since = listed.json()["metadata"]["resourceVersion"]
    # Four watches held open at once (as a reconciler holds them), each must see a change made
    # after it was opened, while it stays open: streamed through, not buffered.
    with contextlib.ExitStack() as stack:
        streams = [stack.enter_context(via_proxy.stream(
            "GET", configmaps(namespace), params={"watch": "1", "resourceVersion": since}))
            for _ in range(4)]
        assert all(s.status_code == 200 for s in streams)
        create_configmaps(control_plane, namespace, "during")
        for stream in streams:
            event = json.loads(next(stream.iter_lines()))
            assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "during")
    watches = proxy.requests(kind="watch", path=configmaps(namespace))
    assert len(watches) == 4 and all(w.forwarded and w.status == 200 for w in watches)
    assert proxy.requests(kind="list", path=configmaps(namespace))[-1].status == 200
    wait_for(lambda: audit_by(control_plane, TESTER, resource="configmaps", namespace=namespace),
             5, "the API server to log the tester's requests")


# --- answers ----------------------------------------------------------------------------------


def test_status_answers_with_retry_after_and_budget(control_plane: LocalControlPlane,
                                                    proxy: FaultProxy, via_proxy: httpx.Client,
                                                    namespace: str) -> None:
    unavailable = proxy.add(Rule(
        Status(503, retry_after=2, causes=({"reason": "Overloaded", "message": "m"},)),
        kind="list", path=f"/namespaces/{namespace}/", after=1, times=2))
    codes = [via_proxy.get(configmaps(namespace)) for _ in range(4)]
    assert [r.status_code for r in codes] == [200, 503, 503, 200]
    refused = codes[1]
    assert refused.headers["Retry-After"] == "2"
    assert refused.headers["Content-Type"] == "application/json"
    assert refused.json() == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "injected by the fault proxy: 503", "reason": "ServiceUnavailable", "code": 503,
        "details": {"causes": [{"reason": "Overloaded", "message": "m"}], "retryAfterSeconds": 2}}
    assert (unavailable.matched, unavailable.hits) == (4, 2)

    added = time.monotonic()
    proxy.add(Rule(Status(504), kind="list", window=(0, 0.3)))
    assert via_proxy.get(configmaps(namespace)).status_code == 504
    wait_for(lambda: via_proxy.get(configmaps(namespace)).status_code == 200, 5,
             "the rule's window to close")
    assert time.monotonic() - added >= 0.3

    throttled = proxy.add(Rule(Status(429, retry_after=1), kind="write", method="POST", times=1))
    body = {"metadata": {"name": "throttled"}}
    first = via_proxy.post(configmaps(namespace), json=body)
    assert (first.status_code, first.json()["reason"]) == (429, "TooManyRequests")
    assert via_proxy.post(configmaps(namespace), json=body).status_code == 201
    assert throttled.hits == 1
    creates = wait_for(lambda: audit_by(control_plane, TESTER, namespace=namespace,
                                        name="throttled"), 5, "the create in the audit log")
    assert [(e["verb"], e["responseStatus"]["code"]) for e in creates] == [("create", 201)]


def test_reset_before_any_response(proxy: FaultProxy, via_proxy: httpx.Client,
                                   namespace: str) -> None:
    proxy.add(Rule(Reset(), kind="get", times=1))
    with pytest.raises(httpx.TransportError):
        via_proxy.get(f"{configmaps(namespace)}/anything")
    [reset] = proxy.requests(kind="get", path=namespace)
    assert reset.reset and not reset.forwarded and reset.status is None
    assert via_proxy.get(f"{configmaps(namespace)}/anything").status_code == 404  # next one passes


def test_reset_mid_stream(control_plane: LocalControlPlane, proxy: FaultProxy,
                          via_proxy: httpx.Client, namespace: str) -> None:
    create_configmaps(control_plane, namespace, "a", "b", "c")
    proxy.add(Rule(ResetAfter(events=2), kind="watch", times=1))
    events, error = watch_lines(via_proxy, namespace)
    assert [e["object"]["metadata"]["name"] for e in events] == ["a", "b"]
    assert isinstance(error, httpx.TransportError)
    wait_for(lambda: watches_ended(control_plane, namespace), 5, "the upstream watch to end too")
    proxy.add(Rule(ResetAfter(bytes=40), kind="list", times=1))
    with pytest.raises(httpx.TransportError):
        via_proxy.get(configmaps(namespace))
    [cut] = proxy.requests(kind="list", path=namespace)
    assert cut.forwarded and cut.status == 200 and cut.reset


def test_reset_open_cuts_watches_already_open(control_plane: LocalControlPlane,
                                              proxy: FaultProxy, via_proxy: httpx.Client,
                                              namespace: str) -> None:
    create_configmaps(control_plane, namespace, "a")
    with contextlib.ExitStack() as stack:
        streams = [stack.enter_context(via_proxy.stream(
            "GET", configmaps(namespace), params={"watch": "true", "resourceVersion": "0"}))
            for _ in range(2)]
        # Each open and delivering before the cut (an abandoned line iterator would close it).
        lines = [stream.iter_lines() for stream in streams]
        assert [json.loads(next(line))["object"]["metadata"]["name"] for line in lines] == ["a"] * 2
        assert proxy.reset_open(kind="watch", path=namespace) == 2
        for line in lines:
            with pytest.raises(httpx.TransportError):
                next(line)
    assert all(w.reset and not w.cancelled for w in proxy.requests(kind="watch", path=namespace))
    wait_for(lambda: watches_ended(control_plane, namespace) == 2, 5, "the upstream watches to end")
    assert proxy.reset_open(kind="watch", path=namespace) == 0


async def test_stall_holds_until_released(control_plane: LocalControlPlane, proxy: FaultProxy,
                                          tester: Path, namespace: str) -> None:
    create_configmaps(control_plane, namespace, "held")
    stall = proxy.add(Rule(Stall(), kind="get", path=r"/held$"))
    async with async_client_from(tester) as client:
        held = asyncio.create_task(client.get(f"{configmaps(namespace)}/held"))
        await eventually(lambda: proxy.requests(rule=stall), 5, "the proxy to hold the GET")
        # Other requests pass while one is held; the held one is still unanswered after them.
        assert (await client.get(configmaps(namespace))).status_code == 200
        assert not held.done()
        assert not proxy.requests(rule=stall)[0].forwarded
        stall.release()
        response = await asyncio.wait_for(held, 5)
    assert response.status_code == 200 and response.json()["metadata"]["name"] == "held"
    assert proxy.requests(rule=stall)[0].forwarded


def test_delay_then_forward(control_plane: LocalControlPlane, proxy: FaultProxy,
                            via_proxy: httpx.Client, namespace: str) -> None:
    proxy.add(Rule(Delay(0.4), kind="write", times=1))
    started = time.monotonic()
    created = via_proxy.post(configmaps(namespace), json={"metadata": {"name": "late"}})
    assert created.status_code == 201 and time.monotonic() - started >= 0.4
    wait_for(lambda: audit_by(control_plane, TESTER, namespace=namespace, name="late"),
             5, "the delayed create in the audit log")


def test_slow_answer_lands_at_once_and_answers_late(control_plane: LocalControlPlane,
                                                   proxy: FaultProxy, via_proxy: httpx.Client,
                                                   namespace: str) -> None:
    proxy.add(Rule(SlowAnswer(1.0), kind="write", times=1))
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        creating = pool.submit(via_proxy.post, configmaps(namespace),
                               json={"metadata": {"name": "known-late"}})
        wait_for(lambda: audit_by(control_plane, TESTER, namespace=namespace, name="known-late"),
                 5, "the create in the audit log")
        applied = time.monotonic() - started
        created = creating.result(timeout=10)
    assert created.status_code == 201 and time.monotonic() - started >= 1.0 > applied


@pytest.mark.parametrize("lands_after", [None, 1.0])
def test_lost_answer_the_request_lands_the_client_hears_504(
        control_plane: LocalControlPlane, proxy: FaultProxy, via_proxy: httpx.Client,
        namespace: str, lands_after: float | None) -> None:
    proxy.add(Rule(Lost(lands_after=lands_after), kind="write", times=1))
    name = f"lost-{'later' if lands_after else 'first'}"
    started = time.monotonic()
    answer = via_proxy.post(configmaps(namespace), json={"metadata": {"name": name}})
    answered = time.monotonic() - started
    assert answer.status_code == 504 and answer.json()["reason"] == "Timeout"
    with control_plane.client() as admin:
        if lands_after is None:  # answered once it had landed
            assert admin.get(f"{configmaps(namespace)}/{name}").status_code == 200
        else:  # answered at once, landed later
            assert answered < lands_after
            wait_for(lambda: admin.get(f"{configmaps(namespace)}/{name}").status_code == 200,
                     5, "the create to land after its 504")
            assert time.monotonic() - started >= lands_after


def test_write_whose_client_gave_up_is_never_forwarded(control_plane: LocalControlPlane,
                                                       proxy: FaultProxy, tester: Path,
                                                       namespace: str) -> None:
    held = proxy.add(Rule(Delay(30), kind="write", method="POST"))
    with client_from(tester, timeout=0.3) as impatient, pytest.raises(httpx.ReadTimeout):
        impatient.post(configmaps(namespace), json={"metadata": {"name": "abandoned"}})
    [exchange] = wait_for(lambda: [e for e in proxy.requests(rule=held) if e.done], 5,
                          "the proxy to drop the request of the client that left")
    assert exchange.cancelled and not exchange.forwarded
    # Its handler is gone, so nothing can send it later; and nothing did.
    assert not audit_by(control_plane, TESTER, namespace=namespace, name="abandoned")
    with control_plane.client() as admin:
        assert admin.get(f"{configmaps(namespace)}/abandoned").status_code == 404


def test_watch_closed_at_once_or_after_events(control_plane: LocalControlPlane, proxy: FaultProxy,
                                              via_proxy: httpx.Client, namespace: str) -> None:
    create_configmaps(control_plane, namespace, "a", "b")
    proxy.add(Rule(CloseWatch(), kind="watch", times=1))
    with via_proxy.stream("GET", configmaps(namespace), params={"watch": "true"}) as stream:
        assert stream.status_code == 200
        assert stream.headers["Content-Type"] == "application/json"
        assert stream.read() == b""
    assert not proxy.requests(kind="watch")[-1].forwarded
    proxy.add(Rule(CloseWatch(after_events=1), kind="watch", times=1))
    events, error = watch_lines(via_proxy, namespace)
    assert error is None and [e["object"]["metadata"]["name"] for e in events] == ["a"]
    assert proxy.requests(kind="watch")[-1].forwarded
    wait_for(lambda: watches_ended(control_plane, namespace) == 1, 5, "the upstream watch to end")


def test_error_event_in_stream(control_plane: LocalControlPlane, proxy: FaultProxy,
                               via_proxy: httpx.Client, namespace: str) -> None:
    create_configmaps(control_plane, namespace, "a", "b")
    proxy.add(Rule(ErrorEvent(after_events=1), kind="watch", times=1))
    events, error = watch_lines(via_proxy, namespace)
    assert error is None
    assert [e["type"] for e in events] == ["ADDED", "ERROR"]
    assert {k: events[1]["object"][k] for k in ("kind", "status", "code", "reason")} == {
        "kind": "Status", "status": "Failure", "code": 410, "reason": "Expired"}


def test_reset_answered_lands_the_write_and_resets(control_plane: LocalControlPlane,
                                               proxy: FaultProxy, via_proxy: httpx.Client,
                                               namespace: str) -> None:
    seen: list[tuple[int | None, bool]] = []
    lost = proxy.add(Rule(ResetAnswered(then=lambda e: seen.append((e.status, e.reset))),
                          kind="write", method="POST", times=1))
    with pytest.raises(httpx.TransportError):
        via_proxy.post(configmaps(namespace), json={"metadata": {"name": "landed"}})
    # `then` ran once the API server had answered and before the connection was reset.
    assert seen == [(201, False)]
    [exchange] = proxy.requests(rule=lost)
    assert exchange.forwarded and exchange.reset and exchange.status == 201
    with control_plane.client() as admin:
        assert admin.get(f"{configmaps(namespace)}/landed").status_code == 200


async def test_slow_answer_until_a_gate_is_served_at_once_and_delivered_late(
        control_plane: LocalControlPlane, proxy: FaultProxy, tester: Path, namespace: str) -> None:
    create_configmaps(control_plane, namespace, "before")
    gate = Gate()
    late = proxy.add(Rule(SlowAnswer(until=gate), kind="list", times=1))
    async with async_client_from(tester) as client:
        listing = asyncio.ensure_future(client.get(configmaps(namespace)))
        await eventually(lambda: [e for e in proxy.requests(rule=late) if e.status == 200], 5,
                         "the API server to answer the LIST")
        create_configmaps(control_plane, namespace, "after")
        done, _ = await asyncio.wait({listing}, timeout=0.3)
        assert not done, "the answer was passed on before the gate opened"
        gate.release()
        listed = await asyncio.wait_for(listing, 5)
    # served before "after" was created, delivered after
    assert [i["metadata"]["name"] for i in listed.json()["items"]] == ["before"]


def test_where_matches_writes_by_their_body(proxy: FaultProxy, via_proxy: httpx.Client,
                                            namespace: str) -> None:
    refused = proxy.add(Rule(Status(409, reason="AlreadyExists"), kind="write",
                             where=lambda e: json.loads(e.body)["metadata"]["name"] == "x"))
    assert via_proxy.post(configmaps(namespace), json={"metadata": {"name": "x"}}).status_code == 409
    assert via_proxy.post(configmaps(namespace), json={"metadata": {"name": "y"}}).status_code == 201
    assert (refused.matched, refused.hits) == (1, 1)
    assert all(e.body == b"" for e in proxy.requests())  # kept only by a recording proxy


def test_recording_keeps_bodies_answers_and_events(control_plane: LocalControlPlane, tester: Path,
                                                   namespace: str) -> None:
    with FaultProxy.for_control_plane(control_plane, record=True) as own, \
            client_from(tester) as client:
        client.base_url = httpx.URL(own.url)
        created = client.post(configmaps(namespace), json={"metadata": {"name": "a"}})
        assert created.status_code == 201
        create_configmaps(control_plane, namespace, "b")
        with client.stream("GET", configmaps(namespace), params={
                "watch": "true", "resourceVersion": created.json()["metadata"]["resourceVersion"]}
                           ) as stream:
            first = json.loads(next(stream.iter_lines()))
        [write] = own.requests(kind="write")
        assert json.loads(write.body) == {"metadata": {"name": "a"}}
        assert json.loads(write.answer_body)["metadata"]["uid"] == created.json()["metadata"]["uid"]
        [watch] = wait_for(lambda: [e for e in own.requests(kind="watch") if e.watch_events], 5,
                           "the watch's event in the log")
        [event] = watch.watch_events
        assert (event.type, event.kind, event.namespace, event.name, event.uid,
                event.resource_version) == (
            "ADDED", "ConfigMap", namespace, "b", first["object"]["metadata"]["uid"],
            first["object"]["metadata"]["resourceVersion"])
        assert event.at >= watch.at


def test_steer_decides_each_event(control_plane: LocalControlPlane, proxy: FaultProxy,
                                  via_proxy: httpx.Client, namespace: str) -> None:
    create_configmaps(control_plane, namespace, "a", "b", "c", "d", "e")
    gate = Gate()
    verdicts: dict[str, Verdict] = {"b": Drop(), "c": Hold(gate), "e": EndWith(Status(410))}
    decided: list[str] = []

    def decide(exchange: Exchange, event: WatchEvent) -> Verdict:
        decided.append(event.name)
        if event.name == "c":
            gate.release()  # released before it is waited on: passes at once
        return verdicts.get(event.name, Pass())

    proxy.add(Rule(Steer(decide=decide), kind="watch", times=1))
    events, error = watch_lines(via_proxy, namespace)
    assert error is None
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in events] == [
        ("ADDED", "a"), ("ADDED", "c"), ("ADDED", "d"), ("ERROR", None)]
    assert events[-1]["object"]["code"] == 410
    assert decided == ["a", "b", "c", "d", "e"]
    proxy.add(Rule(Steer(decide=lambda _, e: Cut() if e.name == "c" else Pass()), kind="watch",
                   times=1))
    events, error = watch_lines(via_proxy, namespace)
    assert [e["object"]["metadata"]["name"] for e in events] == ["a", "b"]
    assert isinstance(error, httpx.TransportError)
    wait_for(lambda: watches_ended(control_plane, namespace) == 2, 5, "the upstream watches to end")


async def test_steer_holds_an_event_late_in_order(control_plane: LocalControlPlane,
                                                  proxy: FaultProxy, tester: Path,
                                                  namespace: str) -> None:
    listed = control_plane.client().get(configmaps(namespace)).json()
    gate = Gate()
    proxy.add(Rule(Steer(decide=lambda _, e: Hold(gate) if e.name == "held" else Pass()),
                   kind="watch", times=1))
    async with async_client_from(tester) as client, client.stream(
            "GET", configmaps(namespace), params={
                "watch": "true", "resourceVersion": listed["metadata"]["resourceVersion"]}
            ) as stream:
        lines = stream.aiter_lines()
        create_configmaps(control_plane, namespace, "before", "held", "after")
        assert json.loads(await anext(lines))["object"]["metadata"]["name"] == "before"
        late = asyncio.ensure_future(anext(lines))
        # "after" reached the proxy and waits behind "held"
        await eventually(lambda: control_plane.client().get(
            f"{configmaps(namespace)}/after").status_code == 200, 5, "the last create")
        done, _ = await asyncio.wait({late}, timeout=0.3)
        assert not done, "an event passed a held one"
        gate.release()
        assert json.loads(await asyncio.wait_for(late, 5))["object"]["metadata"]["name"] == "held"
        assert json.loads(await anext(lines))["object"]["metadata"]["name"] == "after"


def test_steer_rewrites_the_query(control_plane: LocalControlPlane, proxy: FaultProxy,
                                  via_proxy: httpx.Client, namespace: str) -> None:
    create_configmaps(control_plane, namespace, "a")
    since = via_proxy.get(configmaps(namespace)).json()["metadata"]["resourceVersion"]
    create_configmaps(control_plane, namespace, "b")
    # A watch asked from "0" (everything) is sent from `since`: it starts past "a".
    steer = proxy.add(Rule(Steer(query=lambda q: {**q, "resourceVersion": since}), kind="watch",
                           times=1))
    proxy.add(Rule(CloseWatch(after_events=1), kind="watch", times=1))  # never reached
    # Ended by the API server after a second (everything after `since` is "b", sent at once),
    # not by the client's 10 s read timeout.
    events, error = watch_lines(via_proxy, namespace, timeout_seconds=1)
    assert error is None
    assert [e["object"]["metadata"]["name"] for e in events] == ["b"]
    [exchange] = proxy.requests(rule=steer)
    assert "resourceVersion=0" in exchange.query and f"resourceVersion={since}" in exchange.rewritten


async def test_end_open_ends_open_watches_with_an_error_event(
        control_plane: LocalControlPlane, proxy: FaultProxy, tester: Path, namespace: str) -> None:
    create_configmaps(control_plane, namespace, "a")
    async with async_client_from(tester) as client, client.stream(
            "GET", configmaps(namespace), params={"watch": "true", "resourceVersion": "0"}
            ) as stream:
        lines = stream.aiter_lines()
        assert json.loads(await anext(lines))["object"]["metadata"]["name"] == "a"
        assert proxy.end_open(path=configmaps(namespace)) == 1
        error = json.loads(await asyncio.wait_for(anext(lines), 5))
        assert (error["type"], error["object"]["code"]) == ("ERROR", 410)
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(lines), 5)
    wait_for(lambda: watches_ended(control_plane, namespace) == 1, 5, "the upstream watch to end")
    assert proxy.end_open(path=configmaps(namespace)) == 0


def test_stop_closes_every_connection(control_plane: LocalControlPlane, tester: Path,
                                      namespace: str) -> None:
    threads = threading.active_count()
    with FaultProxy.for_control_plane(control_plane) as own:
        held = own.add(Rule(Stall(), kind="write"))

        def write() -> None:
            with client_from(tester) as writer, contextlib.suppress(httpx.TransportError):
                writer.base_url = httpx.URL(own.url)
                writer.post(configmaps(namespace), json={"metadata": {"name": "never"}})

        with client_from(tester) as client:
            client.base_url = httpx.URL(own.url)
            with client.stream("GET", configmaps(namespace), params={"watch": "true"}) as watch:
                assert watch.status_code == 200
                writing = threading.Thread(target=write)
                writing.start()
                wait_for(lambda: own.requests(rule=held), 5, "the proxy to hold the write")
                own.stop()
                with pytest.raises(httpx.TransportError):
                    watch.read()
                writing.join(5)
                assert not writing.is_alive()
        assert not own.requests(rule=held)[0].forwarded
        wait_for(lambda: watches_ended(control_plane, namespace), 5, "the upstream watch to end")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", own.port), timeout=2).close()
    assert threading.active_count() == threads
    assert not audit_by(control_plane, TESTER, namespace=namespace, name="never")


# --- service-account identities ---------------------------------------------------------------


async def test_service_account_is_authorized_by_its_rules_only(
        control_plane: LocalControlPlane, proxy: FaultProxy, tester: Path, namespace: str) -> None:
    reader = control_plane.service_account_kubeconfig(
        SA_NAMESPACE, "reader", [{"apiGroups": [""], "resources": ["configmaps"],
                                  "verbs": ["get", "list"]}], server=proxy.url)
    username = f"system:serviceaccount:{SA_NAMESPACE}:reader"
    create_configmaps(control_plane, namespace, "seen")
    api = await kr8s.asyncio.api(kubeconfig=str(reader))  # the reconciler's client, unchanged
    assert [c.name async for c in api.get("configmaps", namespace=namespace)] == ["seen"]
    with client_from(reader) as client:
        denied = client.post(configmaps(namespace), json={"metadata": {"name": "x"}})
        assert denied.status_code == 403 and username in denied.json()["message"]
        assert client.get(f"/api/v1/namespaces/{namespace}/secrets").status_code == 403
        # A rule can single out one identity by its token.
        token = client.headers["Authorization"].removeprefix("Bearer ")
        proxy.add(Rule(Status(500), user_token=token))
        assert client.get(configmaps(namespace)).status_code == 500
        with client_from(tester) as other:
            assert other.get(configmaps(namespace)).status_code == 200
    events = await eventually(lambda: [(e["verb"], e["objectRef"]["resource"],
                                        e["responseStatus"]["code"])
                                       for e in audit_by(control_plane, username, namespace=namespace)
                                       ] or None, 5, "the reader's requests in the audit log")
    assert events == [("list", "configmaps", 200), ("create", "configmaps", 403),
                      ("list", "secrets", 403)]
    assert not proxy.requests(kind="other", answer="status")  # discovery was not refused


async def test_certificate_identity_is_presented_upstream(control_plane: LocalControlPlane,
                                                          namespace: str) -> None:
    user = "faultproxy-certificate-user"
    control_plane.grant(user, CONFIGMAPS)
    create_configmaps(control_plane, namespace, "seen")
    with FaultProxy.for_control_plane(control_plane, as_user=user) as own:
        kubeconfig = control_plane.identity_kubeconfig(user, server=own.url)
        api = await kr8s.asyncio.api(kubeconfig=str(kubeconfig))
        assert [c.name async for c in api.get("configmaps", namespace=namespace)] == ["seen"]
    assert await eventually(lambda: audit_by(control_plane, user, namespace=namespace), 5,
                            "the proxy's identity in the audit log")


def test_bound_token_is_revoked_with_its_secret_and_rotated_in_place(
        control_plane: LocalControlPlane, proxy: FaultProxy, namespace: str) -> None:
    kubeconfig = control_plane.service_account_kubeconfig(
        SA_NAMESPACE, f"bound-{uuid.uuid4().hex[:6]}", CONFIGMAPS, server=proxy.url,
        bound_secret="token-holder")
    with client_from(kubeconfig) as old:
        assert old.get(configmaps(namespace)).status_code == 200
        with control_plane.client() as admin:
            admin.delete(f"/api/v1/namespaces/{SA_NAMESPACE}/secrets/token-holder"
                         ).raise_for_status()
        new_token = control_plane.rotate_service_account_token(kubeconfig)
        assert old.headers["Authorization"] != f"Bearer {new_token}"
        with client_from(kubeconfig) as rotated:  # re-read from the same file
            assert rotated.headers["Authorization"] == f"Bearer {new_token}"
            assert rotated.get(configmaps(namespace)).status_code == 200
            # The API server caches a token's successful authentication for 10 s.
            refused = wait_for(lambda: (r := old.get(configmaps(namespace))).status_code == 401
                               and r, 15, "the old token to be refused", interval=0.2)
            assert refused.json()["reason"] == "Unauthorized"
            assert proxy.requests(kind="list")[-1].forwarded  # the API server said it
            assert rotated.get(configmaps(namespace)).status_code == 200
    # A token that was never used is not in that cache: refused as soon as its Secret is gone.
    claims = token_claims(new_token)["kubernetes.io"]
    with control_plane.client() as admin:
        admin.delete(f"/api/v1/namespaces/{SA_NAMESPACE}/secrets/token-holder").raise_for_status()
    unused = control_plane.service_account_token(
        SA_NAMESPACE, claims["serviceaccount"]["name"], bound_secret="token-holder")
    with control_plane.client() as admin:
        admin.delete(f"/api/v1/namespaces/{SA_NAMESPACE}/secrets/token-holder").raise_for_status()
    with client_from(kubeconfig) as client:
        client.headers["Authorization"] = f"Bearer {unused}"
        assert client.get(configmaps(namespace)).status_code == 401
