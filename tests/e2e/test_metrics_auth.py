"""Secure /metrics, as a Deployment serves it by default (kubebuilder v4's scaffold): HTTPS, the
scraper's token checked by the real API server with a TokenReview, then a SubjectAccessReview
for `get` on /metrics, both posted by the reconciler as its own identity (config/rbac's role
and metrics auth role, nothing more). No token: 401; a token the API server does not know: 401;
a ServiceAccount without config/rbac's metrics-reader: 403; with it: 200. Decisions are
remembered (the audit log shows one review of each per token however often it scrapes), and a
review that cannot be made fails the scrape (500), never lets it through."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import kr8s.asyncio
from prometheus_client import CollectorRegistry

from reconciler.delegatedauth import ApiReviewer, DelegatedAuth
from reconciler.kube import KubeClient
from reconciler.server import Servers
from reconciler.servingcerts import ServingCertificate
from tests.controlplane.launcher import ControlPlaneError, LocalControlPlane, wait_for
from tests.e2e.conftest import (
    RECONCILER_USER,
    grant_metrics_auth,
    metrics_reader_token,
    rbac_rules,
)
from tests.faultproxy import FaultProxy, Reset, Rule, Status
from tests.process import ReconcilerProcess

REVIEWS = {"tokenreviews", "subjectaccessreviews"}


def reviews_by(control_plane: LocalControlPlane, user: str, since: int) -> Counter[str]:
    """The reviews `user` created, by resource, from the audit log."""
    return Counter(e["objectRef"]["resource"] for e in control_plane.audit_events()[since:]
                   if e["user"].get("username") == user and e["verb"] == "create"
                   and e.get("objectRef", {}).get("resource") in REVIEWS)


def started(reconciler: ReconcilerProcess) -> None:
    try:
        wait_for(reconciler.ready, 30, "the reconciler to be ready")
    except ControlPlaneError as error:
        raise AssertionError(f"{error}; its log:\n{reconciler.log_text()[-3000:]}") from error


def test_who_may_read_metrics(control_plane: LocalControlPlane, namespace: str,
                              reconciler_kubeconfig: Path) -> None:
    grant_metrics_auth(control_plane)
    token = metrics_reader_token(control_plane, namespace)
    control_plane.service_account_kubeconfig(namespace, "intruder", [])  # no grant at all
    intruder = control_plane.service_account_token(namespace, "intruder")
    with FaultProxy.for_control_plane(control_plane, as_user=RECONCILER_USER) as proxy, \
            ReconcilerProcess(control_plane.identity_kubeconfig(RECONCILER_USER, server=proxy.url),
                              namespace, metrics_token=token) as reconciler:
        reconciler.start()
        started(reconciler)
        mark = len(control_plane.audit_events())

        answer = reconciler.scrape(None)
        assert (answer.status_code, answer.text) == (401, "Unauthorized\n")
        assert reconciler.scrape("not-a-token").status_code == 401
        answer = reconciler.scrape(intruder)
        assert (answer.status_code, answer.text) == (
            403, f"Authorization denied for user system:serviceaccount:{namespace}:intruder\n")
        for _ in range(20):
            answer = reconciler.scrape(token)
            assert answer.status_code == 200, answer.text
        assert "controller_runtime_reconcile_total" in answer.text
        assert reconciler.scrape(intruder).status_code == 403
        # one TokenReview per token (the unknown one too), one SubjectAccessReview per user
        wait_for(lambda: reviews_by(control_plane, RECONCILER_USER, mark) == {
            "tokenreviews": 3, "subjectaccessreviews": 2}, 10, "the audit log to show them")
        assert reviews_by(control_plane, RECONCILER_USER, mark) == {
            "tokenreviews": 3, "subjectaccessreviews": 2}

        # The API server unreachable for reviews: a token not yet reviewed is refused (the
        # reconciler tries three times, then answers 500); one reviewed a moment ago still
        # scrapes (its decisions are remembered for a minute, as the API server's are).
        unreachable = proxy.add(Rule(Reset(), method="POST", path=r"/tokenreviews$"))
        fresh = metrics_reader_token(control_plane, namespace)  # the same account, a new token
        answer = reconciler.scrape(fresh)
        assert (answer.status_code, answer.text) == (500, "Authentication failed\n")
        assert unreachable.hits == 3
        assert reconciler.scrape(token).status_code == 200
        proxy.remove(unreachable)
        refused = proxy.add(Rule(Status(503, retry_after=1), method="POST",
                                 path=r"/subjectaccessreviews$"))
        other = metrics_reader_token(control_plane, namespace, "other-prometheus")
        answer = reconciler.scrape(other)
        assert (answer.status_code, answer.text) == (
            500, f"Authorization for user system:serviceaccount:{namespace}:other-prometheus "
                 "failed\n")
        proxy.remove(refused)
        # nothing of the failures was remembered
        assert reconciler.scrape(fresh).status_code == 200
        assert reconciler.scrape(other).status_code == 200
        assert "metrics authentication failed" in reconciler.log_text()


async def test_without_the_metrics_auth_role_every_scrape_fails_closed(
        control_plane: LocalControlPlane, namespace: str) -> None:
    """The reconciler's identity may not create reviews (config/rbac/role.yaml bound, not the
    metrics auth role): the API server refuses them (403), so nobody is let in, and the log
    says why. (The server in this test's event loop, with the reconciler's own reviewer.)"""
    user = "nimbus-kubearmor-without-metrics-auth"
    control_plane.grant(user, rbac_rules("role"))
    token = metrics_reader_token(control_plane, namespace)
    api = await kr8s.asyncio.api(kubeconfig=str(control_plane.identity_kubeconfig(user)))
    reviewer = ApiReviewer(KubeClient(api))
    servers = Servers(CollectorRegistry(), lambda: [], "127.0.0.1:0", "0",
                      tls=ServingCertificate(None).listening,
                      auth=DelegatedAuth(lambda: reviewer))
    await servers.start()
    try:
        url = f"https://127.0.0.1:{servers.bound[0][1]}/metrics"
        with caplog_errors() as logged:
            async with httpx.AsyncClient(verify=False, timeout=30) as client:
                answer = await client.get(url, headers={"Authorization": f"Bearer {token}"})
        assert (answer.status_code, answer.text) == (500, "Authentication failed\n")
        assert any('cannot create resource "tokenreviews"' in getattr(r, "error", "")
                   for r in logged), [r.__dict__ for r in logged]
    finally:
        await servers.stop()


@contextlib.contextmanager
def caplog_errors() -> Iterator[list[logging.LogRecord]]:
    """The records reconciler.delegatedauth logs meanwhile."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("reconciler.delegatedauth")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
