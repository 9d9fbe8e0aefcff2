"""Secure /metrics, as a Deployment serves it by default (kubebuilder v4's scaffold): HTTPS, the
scraper's token checked by the real API server with a TokenReview, then a SubjectAccessReview
for `get` on /metrics, both posted by the reconciler's reviewer as its own identity
(config/rbac's role and metrics auth role, nothing more), through the fault proxy. No token:
401; a token the API server does not know: 401; a ServiceAccount without config/rbac's
metrics-reader: 403; with it: 200. Decisions are remembered (the audit log shows one review of
each per token however often it scrapes), and a review that cannot be made fails the scrape
(500), never lets it through."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
from prometheus_client import CollectorRegistry

from reconciler.app import connect
from reconciler.delegatedauth import MAX_REVIEWS_IN_FLIGHT, ApiReviewer, DelegatedAuth, User
from reconciler.kube import NIMBUS_POLICIES, REQUEST_CONNECTIONS
from reconciler.metrics import Metrics
from reconciler.server import Servers
from reconciler.servingcerts import ServingCertificate
from tests.controlplane.launcher import LocalControlPlane
from tests.e2e.conftest import (
    RECONCILER_USER,
    grant_metrics_auth,
    metrics_reader_token,
    rbac_rules,
)
from tests.faultproxy import FaultProxy, Reset, Rule, Stall, Status
from tests.waiting import eventually

REVIEWS = {"tokenreviews", "subjectaccessreviews"}


def reviews_by(control_plane: LocalControlPlane, user: str, since: int) -> Counter[str]:
    """The reviews `user` created, by resource, from the audit log."""
    return Counter(e["objectRef"]["resource"] for e in control_plane.audit_events()[since:]
                   if e["user"].get("username") == user and e["verb"] == "create"
                   and e.get("objectRef", {}).get("resource") in REVIEWS)


@contextlib.asynccontextmanager
async def secure_metrics(kubeconfig: Path) -> AsyncIterator[str]:
    """The reconciler's /metrics listener, as the Manager serves it by default, in this test's
    event loop, with the reviewer it makes once connected as `kubeconfig`'s identity; its URL.
    (Served by the real process, with the default flags: test_least_privilege.py.)"""
    reviewer = ApiReviewer(await connect(str(kubeconfig)))
    servers = Servers(Metrics(CollectorRegistry()).registry, lambda: [], "127.0.0.1:0", "0",
                      tls=ServingCertificate(None).listening, auth=DelegatedAuth(lambda: reviewer))
    await servers.start()
    try:
        yield f"https://127.0.0.1:{servers.bound[0][1]}/metrics"
    finally:
        await servers.stop()


async def scrape(url: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(verify=False, timeout=30) as client:
        return await client.get(url, headers=headers)


async def test_who_may_read_metrics(control_plane: LocalControlPlane, namespace: str,
                                    reconciler_kubeconfig: Path) -> None:
    grant_metrics_auth(control_plane)
    token = metrics_reader_token(control_plane, namespace)
    control_plane.service_account_kubeconfig(namespace, "intruder", [])  # no grant at all
    intruder = control_plane.service_account_token(namespace, "intruder")
    with FaultProxy.for_control_plane(control_plane, as_user=RECONCILER_USER) as proxy, \
            caplog_errors() as logged:
        async with secure_metrics(control_plane.identity_kubeconfig(
                RECONCILER_USER, server=proxy.url)) as url:
            mark = len(control_plane.audit_events())
            answer = await scrape(url, None)
            assert (answer.status_code, answer.text) == (401, "Unauthorized\n")
            assert (await scrape(url, "not-a-token")).status_code == 401
            answer = await scrape(url, intruder)
            assert (answer.status_code, answer.text) == (
                403, f"Authorization denied for user system:serviceaccount:{namespace}:intruder\n")
            for _ in range(20):
                answer = await scrape(url, token)
                assert answer.status_code == 200, answer.text
            assert "controller_runtime_reconcile_total" in answer.text
            assert (await scrape(url, intruder)).status_code == 403
            # one TokenReview per token (the unknown one too), one SubjectAccessReview per user
            assert reviews_by(control_plane, RECONCILER_USER, mark) == {
                "tokenreviews": 3, "subjectaccessreviews": 2}

            # The API server unreachable for reviews: a token not yet reviewed is refused (tried
            # three times, then 500); one reviewed a moment ago still scrapes (decisions are
            # remembered for a minute, as the API server remembers its own).
            unreachable = proxy.add(Rule(Reset(), method="POST", path=r"/tokenreviews$"))
            fresh = metrics_reader_token(control_plane, namespace)  # the same account, a new token
            answer = await scrape(url, fresh)
            assert (answer.status_code, answer.text) == (500, "Authentication failed\n")
            assert unreachable.hits == 3
            assert (await scrape(url, token)).status_code == 200
            proxy.remove(unreachable)
            refused = proxy.add(Rule(Status(503, retry_after=1), method="POST",
                                     path=r"/subjectaccessreviews$"))
            other = metrics_reader_token(control_plane, namespace, "other-prometheus")
            answer = await scrape(url, other)
            assert (answer.status_code, answer.text) == (
                500, f"Authorization for user system:serviceaccount:{namespace}:other-prometheus "
                     "failed\n")
            proxy.remove(refused)
            # nothing of the failures was remembered
            assert (await scrape(url, fresh)).status_code == 200
            assert (await scrape(url, other)).status_code == 200
    assert [r.getMessage() for r in logged] == [
        "metrics authentication failed", "metrics authorization failed"]


async def test_without_the_metrics_auth_role_every_scrape_fails_closed(
        control_plane: LocalControlPlane, namespace: str) -> None:
    """The reconciler's identity may not create reviews (config/rbac/role.yaml bound, not the
    metrics auth role): the API server refuses them (403), so nobody is let in, and the log
    says why."""
    user = "nimbus-kubearmor-without-metrics-auth"
    control_plane.grant(user, rbac_rules("role"))
    token = metrics_reader_token(control_plane, namespace)
    with caplog_errors() as logged:
        async with secure_metrics(control_plane.identity_kubeconfig(user)) as url:
            answer = await scrape(url, token)
    assert (answer.status_code, answer.text) == (500, "Authentication failed\n")
    assert any('cannot create resource \"tokenreviews\"' in getattr(r, "error", "")
               for r in logged), [r.__dict__ for r in logged]


async def test_a_storm_of_made_up_tokens_leaves_the_controller_its_connections(
        control_plane: LocalControlPlane, namespace: str, reconciler_kubeconfig: Path) -> None:
    """Anyone who reaches the metrics port can make the reconciler post a TokenReview per
    made-up token. With the API server slow to answer them (here held by the proxy: a webhook
    token authenticator behind TokenReview may be), at most MAX_REVIEWS_IN_FLIGHT are under way
    at once, so the controller's own requests (a LIST here; a Lease renewal alike) still get a
    connection at once instead of queueing behind a hundred reviews for the pool's timeout."""
    grant_metrics_auth(control_plane)
    with FaultProxy.for_control_plane(control_plane, as_user=RECONCILER_USER) as proxy:
        client = await connect(str(control_plane.identity_kubeconfig(RECONCILER_USER,
                                                                     server=proxy.url)))
        reviewer = ApiReviewer(client)
        asked: list[str] = []

        class Counting:
            """The reviewer, counting who asked it to authenticate."""
            async def authenticate(self, token: str) -> User | None:
                asked.append(token)
                return await reviewer.authenticate(token)

            async def authorize(self, user: User, verb: str, path: str) -> tuple[bool, str]:
                return await reviewer.authorize(user, verb, path)

        counting = Counting()
        auth = DelegatedAuth(lambda: counting)
        held = proxy.add(Rule(Stall(), method="POST", path=r"/tokenreviews$"))
        answers: list[int] = []
        storm = REQUEST_CONNECTIONS + 20

        async def scrape(token: str) -> None:
            answers.append((await auth.check(f"Bearer {token}", "get", "/metrics")).status)

        async with anyio.create_task_group() as tasks:
            for index in range(storm):
                tasks.start_soon(scrape, f"made-up-{index}")
            await eventually(lambda: len(asked) == storm and held.hits >= MAX_REVIEWS_IN_FLIGHT,
                             10, "every scrape to ask for a review, and the first to be sent")
            with anyio.fail_after(5):
                page = await client.list(NIMBUS_POLICIES, namespace)
            assert page["items"] == []
            assert held.hits == MAX_REVIEWS_IN_FLIGHT
            held.release()
        assert answers == [401] * storm
        assert len(proxy.requests(path=r"/tokenreviews$")) == storm


@contextlib.contextmanager
def caplog_errors() -> Iterator[list[logging.LogRecord]]:
    """The records reconciler.delegatedauth logs at error level meanwhile."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("reconciler.delegatedauth")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
