"""Who may read /metrics (reconciler/delegatedauth.py): the answers for each case, and the
caching of the API server's decisions (60 s allowed, 10 s denied, failures never), on a fake
clock and a reviewer that answers from a table and counts what it is asked. (The reviews
themselves, against the real API server, are tests/e2e/test_metrics_auth.py's.)"""

from __future__ import annotations

import anyio
import pytest

from reconciler.clock import FakeClock
from reconciler.delegatedauth import (
    ALLOWED_TTL,
    DENIED_TTL,
    MAX_ENTRIES,
    DecisionCache,
    DelegatedAuth,
    ReviewFailed,
    User,
    bearer_token,
)

PROMETHEUS = User("system:serviceaccount:monitoring:prometheus", "uid-1",
                  ("system:serviceaccounts", "system:authenticated"))
INTRUDER = User("system:serviceaccount:default:intruder", "uid-2")


class TableReviewer:
    """Tokens -> users, users allowed to get /metrics; counts the reviews it is asked."""

    def __init__(self) -> None:
        self.users = {"prometheus-token": PROMETHEUS, "intruder-token": INTRUDER}
        self.allowed = {PROMETHEUS.name}
        self.token_reviews: list[str] = []
        self.access_reviews: list[tuple[str, str, str]] = []
        self.failing = False
        self.gate: anyio.Event | None = None  # reviews wait for it when set

    async def authenticate(self, token: str) -> User | None:
        self.token_reviews.append(token)
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            raise ReviewFailed("TokenReview: connection refused")
        return self.users.get(token)

    async def authorize(self, user: User, verb: str, path: str) -> tuple[bool, str]:
        self.access_reviews.append((user.name, verb, path))
        if self.failing:
            raise ReviewFailed("SubjectAccessReview: connection refused")
        allowed = user.name in self.allowed and (verb, path) == ("get", "/metrics")
        return allowed, "" if allowed else "no RBAC policy matched"


@pytest.fixture
def reviewer() -> TableReviewer:
    return TableReviewer()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def auth(reviewer: TableReviewer, clock: FakeClock) -> DelegatedAuth:
    return DelegatedAuth(lambda: reviewer, clock)


async def check(auth: DelegatedAuth, token: str | None, verb: str = "get") -> tuple[int, str]:
    decision = await auth.check(None if token is None else f"Bearer {token}", verb, "/metrics")
    return decision.status, decision.message


@pytest.mark.parametrize(("header", "token"), [
    ("Bearer abc", "abc"), ("bearer abc", "abc"), ("BEARER  abc ", "abc"),
    (None, None), ("", None), ("Bearer", None), ("Bearer ", None), ("Basic abc", None),
    ("Bearer a b", None), ("abc", None)])
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


async def test_no_token_is_401_without_asking(auth: DelegatedAuth, reviewer: TableReviewer) -> None:
    assert await check(auth, None) == (401, "Unauthorized")
    assert (await auth.check("Basic dXNlcjpwYXNz", "get", "/metrics")).status == 401
    assert reviewer.token_reviews == [] and reviewer.access_reviews == []


async def test_the_answers(auth: DelegatedAuth) -> None:
    assert await check(auth, "prometheus-token") == (200, "")
    assert await check(auth, "unknown-token") == (401, "Unauthorized")
    assert await check(auth, "intruder-token") == (
        403, "Authorization denied for user system:serviceaccount:default:intruder")
    assert (await check(auth, "prometheus-token", verb="post"))[0] == 403


async def test_a_scrape_every_second_costs_one_review_of_each_a_minute(
        auth: DelegatedAuth, reviewer: TableReviewer, clock: FakeClock) -> None:
    for _ in range(int(ALLOWED_TTL) - 1):
        assert (await check(auth, "prometheus-token"))[0] == 200
        clock.advance(1)
    assert len(reviewer.token_reviews) == len(reviewer.access_reviews) == 1
    clock.advance(1)  # a minute after the first review: asked again
    assert (await check(auth, "prometheus-token"))[0] == 200
    assert len(reviewer.token_reviews) == len(reviewer.access_reviews) == 2


async def test_a_revoked_grant_is_refused_within_the_minute(
        auth: DelegatedAuth, reviewer: TableReviewer, clock: FakeClock) -> None:
    assert (await check(auth, "prometheus-token"))[0] == 200
    reviewer.allowed.clear()
    clock.advance(ALLOWED_TTL - 1)
    assert (await check(auth, "prometheus-token"))[0] == 200  # still cached
    clock.advance(1)
    assert (await check(auth, "prometheus-token"))[0] == 403


async def test_refusals_are_remembered_for_ten_seconds(
        auth: DelegatedAuth, reviewer: TableReviewer, clock: FakeClock) -> None:
    assert (await check(auth, "intruder-token"))[0] == 403
    assert (await check(auth, "unknown-token"))[0] == 401
    reviewer.allowed.add(INTRUDER.name)  # granted meanwhile
    reviewer.users["unknown-token"] = INTRUDER  # (and a token that now authenticates)
    clock.advance(DENIED_TTL - 1)
    assert (await check(auth, "intruder-token"))[0] == 403
    assert (await check(auth, "unknown-token"))[0] == 401
    assert reviewer.access_reviews == [(INTRUDER.name, "get", "/metrics")]
    assert reviewer.token_reviews == ["intruder-token", "unknown-token"]
    clock.advance(1)
    assert (await check(auth, "intruder-token"))[0] == 200
    assert (await check(auth, "unknown-token"))[0] == 200


async def test_failed_reviews_fail_closed_and_are_not_remembered(
        auth: DelegatedAuth, reviewer: TableReviewer) -> None:
    reviewer.failing = True
    assert await check(auth, "prometheus-token") == (500, "Authentication failed")
    assert await check(auth, "prometheus-token") == (500, "Authentication failed")
    assert len(reviewer.token_reviews) == 2  # asked again each time
    reviewer.failing = False
    assert await check(auth, "prometheus-token") == (200, "")
    # authenticated (and remembered), then the SubjectAccessReview fails
    reviewer.failing = True
    assert await check(auth, "prometheus-token") == (200, "")  # both remembered
    assert await check(auth, "intruder-token") == (500, "Authentication failed")


async def test_authorization_failure_is_500(reviewer: TableReviewer, clock: FakeClock) -> None:
    class AuthorizationDown(TableReviewer):
        async def authorize(self, user: User, verb: str, path: str) -> tuple[bool, str]:
            raise ReviewFailed("SubjectAccessReview: 503 ServiceUnavailable")

    auth = DelegatedAuth(lambda: AuthorizationDown(), clock)
    assert await check(auth, "prometheus-token") == (
        500, f"Authorization for user {PROMETHEUS.name} failed")


async def test_before_the_api_server_is_connected_everyone_gets_500(clock: FakeClock) -> None:
    auth = DelegatedAuth(lambda: None, clock)
    assert await check(auth, "prometheus-token") == (500, "Authentication failed")
    assert await check(auth, None) == (401, "Unauthorized")


async def test_scrapes_at_once_with_one_token_make_one_review(
        auth: DelegatedAuth, reviewer: TableReviewer) -> None:
    reviewer.gate = anyio.Event()
    results: list[int] = []

    async def scrape() -> None:
        results.append((await check(auth, "prometheus-token"))[0])

    async with anyio.create_task_group() as tasks:
        for _ in range(5):
            tasks.start_soon(scrape)
        await anyio.wait_all_tasks_blocked()
        reviewer.gate.set()
    assert results == [200] * 5
    assert len(reviewer.token_reviews) == len(reviewer.access_reviews) == 1


async def test_waiters_on_a_failed_review_fail_too(
        auth: DelegatedAuth, reviewer: TableReviewer) -> None:
    reviewer.gate, reviewer.failing = anyio.Event(), True
    results: list[int] = []

    async def scrape() -> None:
        results.append((await check(auth, "prometheus-token"))[0])

    async with anyio.create_task_group() as tasks:
        for _ in range(3):
            tasks.start_soon(scrape)
        await anyio.wait_all_tasks_blocked()
        reviewer.gate.set()
    assert results == [500] * 3 and len(reviewer.token_reviews) == 1


async def test_a_cancelled_review_leaves_no_one_waiting(clock: FakeClock) -> None:
    cache: DecisionCache[str, int] = DecisionCache(clock, lambda _: True, 60.0, 60.0)
    never = anyio.Event()

    async def forever() -> int:
        await never.wait()
        return 1

    async def waiter() -> None:
        with pytest.raises(ReviewFailed):
            await cache.get("key", forever)

    owner = anyio.CancelScope()

    async def first() -> None:
        with owner:
            await cache.get("key", forever)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(first)
        await anyio.wait_all_tasks_blocked()
        tasks.start_soon(waiter)  # waits for the first's review
        await anyio.wait_all_tasks_blocked()
        owner.cancel()  # e.g. the scraper went away
    assert await cache.get("key", lambda: _value(2)) == 2


async def _value(value: int) -> int:
    return value


async def test_the_cache_keeps_at_most_max_entries(clock: FakeClock) -> None:
    cache: DecisionCache[int, int] = DecisionCache(clock, lambda _: True, 60.0, 60.0, max_entries=3)
    for key in range(3):
        await cache.get(key, lambda k=key: _value(k))  # type: ignore[misc]
    await cache.get(0, lambda: _value(-1))  # used: 1 is now the least recently used
    await cache.get(3, lambda: _value(3))
    assert len(cache) == 3
    assert await cache.get(0, lambda: _value(-1)) == 0  # kept
    assert await cache.get(1, lambda: _value(-1)) == -1  # dropped, asked again


async def test_tokens_are_kept_only_as_digests(auth: DelegatedAuth) -> None:
    assert (await check(auth, "prometheus-token"))[0] == 200
    assert all(isinstance(key, bytes) and b"prometheus-token" not in key
               for key in auth.users.remembered())


async def test_a_storm_of_made_up_tokens_does_not_push_out_the_scrapers_decision(
        auth: DelegatedAuth, reviewer: TableReviewer) -> None:
    """Refusals are kept apart from the decisions that let someone in, each bounded: tokens
    made up by the thousand push out only each other, and Prometheus goes on scraping on its
    cached decision (not waiting behind them for a review of its own)."""
    assert (await check(auth, "prometheus-token"))[0] == 200
    for index in range(3 * MAX_ENTRIES):
        assert (await check(auth, f"made-up-{index}"))[0] == 401
    assert (await check(auth, "prometheus-token"))[0] == 200
    assert reviewer.token_reviews.count("prometheus-token") == 1
    assert len(auth.users) <= 2 * MAX_ENTRIES
