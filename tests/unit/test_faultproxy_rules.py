"""How the fault proxy classifies requests, which decides which rules match them."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import make_mocked_request

from tests.faultproxy import Exchange, Gate, Rule, Status, WatchEvent, _split_lines, request_kind


@pytest.mark.parametrize(("method", "path", "query", "kind"), [
    ("GET", "/api/v1/namespaces", {}, "list"),
    ("GET", "/api/v1/namespaces/ns", {}, "get"),
    ("GET", "/api/v1/namespaces/ns/status", {}, "get"),
    ("GET", "/api/v1/namespaces/ns/configmaps", {}, "list"),
    ("GET", "/api/v1/namespaces/ns/configmaps/cm", {}, "get"),
    ("GET", "/api/v1/namespaces/ns/configmaps", {"watch": "true"}, "watch"),
    ("GET", "/api/v1/namespaces/ns/configmaps", {"watch": "1"}, "watch"),
    ("GET", "/api/v1/namespaces/ns/configmaps", {"watch": "false"}, "list"),
    ("GET", "/api/v1/watch/namespaces/ns/configmaps", {}, "watch"),
    ("GET", "/apis/intent.security.nimbus.com/v1alpha1/nimbuspolicies", {}, "list"),
    ("GET", "/apis/intent.security.nimbus.com/v1alpha1/namespaces/ns/nimbuspolicies", {}, "list"),
    ("GET", "/apis/intent.security.nimbus.com/v1alpha1/namespaces/ns/nimbuspolicies/p", {}, "get"),
    ("GET", "/apis/intent.security.nimbus.com/v1alpha1/namespaces/ns/nimbuspolicies/p/status", {},
     "get"),
    ("PATCH", "/apis/intent.security.nimbus.com/v1alpha1/namespaces/ns/nimbuspolicies/p/status", {},
     "write"),
    ("DELETE", "/api/v1/namespaces/ns/configmaps", {}, "write"),
    ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", {}, "write"),
    ("GET", "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l", {}, "get"),
    ("GET", "/api", {}, "other"),
    ("GET", "/api/v1", {}, "other"),
    ("GET", "/apis", {}, "other"),
    ("GET", "/apis/security.kubearmor.com/v1", {}, "other"),
    ("GET", "/version", {}, "other"),
    ("GET", "/openapi/v3", {}, "other"),
])
def test_request_kind(method: str, path: str, query: dict[str, str], kind: str) -> None:
    assert request_kind(method, path, query) == kind


def test_budget_skips_then_answers_then_lets_through() -> None:
    rule = Rule(Status(503), after=1, times=2)
    assert [rule._take() for _ in range(5)] == [False, True, True, False, False]
    assert (rule.matched, rule.hits) == (5, 2)


def test_rule_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="kind"):
        Rule(Status(503), kind="lists")
    with pytest.raises(TypeError):
        Rule(Status(503)).release()


def test_where_sees_the_exchange_with_its_body() -> None:
    request = make_mocked_request("POST", "/api/v1/namespaces/ns/configmaps")
    rule = Rule(Status(409), kind="write", where=lambda e: b'"x"' in e.body)

    def exchange(body: bytes) -> Exchange:
        return Exchange(0.0, "POST", request.path, "", "write", "forward", body=body)
    assert rule._matches(request, "write", 0.0, exchange(b'{"metadata": {"name": "x"}}'))
    assert not rule._matches(request, "write", 0.0, exchange(b'{"metadata": {"name": "y"}}'))
    assert not rule._matches(request, "list", 0.0, exchange(b'"x"'))


def test_watch_event_summary() -> None:
    line = (b'{"type":"MODIFIED","object":{"kind":"ConfigMap","metadata":{"name":"a",'
            b'"namespace":"ns","uid":"u1","resourceVersion":"42"}}}\n')
    assert WatchEvent.parse(line) == WatchEvent("MODIFIED", "ConfigMap", "ns", "a", "u1", "42")
    bookmark = b'{"type":"BOOKMARK","object":{"kind":"ConfigMap","metadata":{"resourceVersion":"7"}}}'
    assert WatchEvent.parse(bookmark).resource_version == "7"
    assert WatchEvent.parse(b"not json\n") == WatchEvent("")
    assert WatchEvent.parse(b"[1]\n") == WatchEvent("")


def test_lines_are_split_keeping_the_partial_one() -> None:
    assert _split_lines(b"a\nbc\nd") == ([b"a\n", b"bc\n"], b"d")
    assert _split_lines(b"a\n") == ([b"a\n"], b"")
    assert _split_lines(b"abc") == ([], b"abc")


async def test_gate_opens_for_waiters_and_later_ones() -> None:
    gate = Gate()
    waiting = asyncio.ensure_future(gate.wait())
    await asyncio.sleep(0)
    assert not waiting.done() and not gate.released
    gate.release()
    await asyncio.wait_for(waiting, 1)
    await asyncio.wait_for(gate.wait(), 1)  # open for good
