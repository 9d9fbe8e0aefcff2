"""How the fault proxy classifies requests, which decides which rules match them."""

from __future__ import annotations

import pytest

from tests.faultproxy import Rule, Status, request_kind


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
