"""Who may read /metrics, decided by the API server, as kubebuilder v4 scaffolds it
(controller-runtime's `filters.WithAuthenticationAndAuthorization`): the bearer token is checked
with a TokenReview, then the user it names with a SubjectAccessReview for the non-resource URL
(`get` on `/metrics`); RBAC grants that with a ClusterRole such as config/rbac's metrics-reader.

Answers, as controller-runtime gives them: no token or one the API server does not
authenticate: 401; a user RBAC does not allow: 403; a review the API server could not be asked
or did not answer (unreachable, timed out, refused because our own identity may not create
reviews): 500, so a scrape fails closed, never open.

Decisions are cached per token and per user, as the API server's delegated authentication and
authorization cache theirs: an allowed one for 60 s, a refused one for 10 s (a new grant takes
effect within 10 s, a revocation within a minute), so a Prometheus scraping every second costs
one TokenReview and one SubjectAccessReview a minute. A review that failed is not cached. Only
a digest of each token is kept; several scrapes with the same token at once make one review.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, Protocol, TypeVar

import anyio
import attrs

from .clock import Clock, MonotonicClock
from .kube import KubeClient, Resource, api_error

log = logging.getLogger(__name__)

TOKEN_REVIEWS = Resource("authentication.k8s.io", "v1", "tokenreviews", "TokenReview")
SUBJECT_ACCESS_REVIEWS = Resource("authorization.k8s.io", "v1", "subjectaccessreviews",
                                  "SubjectAccessReview")
ALLOWED_TTL = 60.0
DENIED_TTL = 10.0
# Decisions remembered, of each kind (granted, refused); the least recently used go first.
MAX_ENTRIES = 1024
REVIEW_TIMEOUT = 10.0  # controller-runtime's TokenAccessReviewTimeout
# Reviews under way at once; a scrape whose review would be one more waits for its turn (within
# REVIEW_TIMEOUT). Anyone who reaches the port can make us post a review per made-up token: this
# keeps them from taking the connections (and the API server's fair share of our identity) that
# the controller's own requests and the Lease renewal need.
MAX_REVIEWS_IN_FLIGHT = 10
RETRY_DELAYS = (0.5, 0.75)  # after a transient failure (unreachable, 429, 5xx); then 500


class ReviewFailed(Exception):
    """The API server could not be asked, or did not give an answer."""


@attrs.frozen
class User:
    """An authenticated user, as a TokenReview names it (and a SubjectAccessReview asks)."""
    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


@attrs.frozen
class Decision:
    status: int  # 200 allowed, 401, 403 or 500
    message: str
    user: User | None = None

    @property
    def allowed(self) -> bool:
        return self.status == 200


class Reviewer(Protocol):
    async def authenticate(self, token: str) -> User | None:
        """The token's user, or None if the API server does not authenticate it."""
        ...

    async def authorize(self, user: User, verb: str, path: str) -> tuple[bool, str]:
        """Whether RBAC allows `user` to `verb` the non-resource URL `path`, and why."""
        ...


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token and " " not in token else None


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Flight(Generic[V]):
    """One review under way; those who ask the same meanwhile wait for its answer."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.value: V | None = None
        self.failed: ReviewFailed | None = None


class DecisionCache(Generic[K, V]):
    """Answers by key until they expire; one computation per key at a time. Answers that
    grant (`granted(answer)`) and those that refuse are kept apart, at most `max_entries` of
    each, the least recently used dropped first: refusals by the thousand (a storm of made-up
    tokens) push out only refusals, never the decision that lets a scraper in."""

    def __init__(self, clock: Clock, granted: Callable[[V], bool], granted_ttl: float,
                 refused_ttl: float, max_entries: int = MAX_ENTRIES) -> None:
        self._clock = clock
        self._granted = granted
        self._ttl = {True: granted_ttl, False: refused_ttl}
        self._max = max_entries
        # by whether the answer grants: key -> (expires at, answer), from least to most
        # recently used; a key is in one of the two at most
        self._entries: dict[bool, OrderedDict[K, tuple[float, V]]] = {
            True: OrderedDict(), False: OrderedDict()}
        self._flights: dict[K, _Flight[V]] = {}

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._entries.values())

    def remembered(self) -> list[K]:
        return [key for entries in self._entries.values() for key in entries]

    async def get(self, key: K, compute: Callable[[], Awaitable[V]]) -> V:
        for entries in self._entries.values():
            entry = entries.get(key)
            if entry is None:
                continue
            if entry[0] > self._clock.now():
                entries.move_to_end(key)
                return entry[1]
            del entries[key]
        flight = self._flights.get(key)
        if flight is not None:
            await flight.done.wait()
            if flight.failed is not None:
                raise ReviewFailed(str(flight.failed))  # each waiter its own
            return flight.value  # type: ignore[return-value]
        flight = self._flights[key] = _Flight()
        try:
            value = await compute()
        except ReviewFailed as failure:
            flight.failed = failure
            raise
        except BaseException:
            flight.failed = ReviewFailed("the review was abandoned")
            raise
        else:
            flight.value = value
            granted = self._granted(value)
            entries = self._entries[granted]
            entries[key] = (self._clock.now() + self._ttl[granted], value)
            while len(entries) > self._max:
                entries.popitem(last=False)
            return value
        finally:
            del self._flights[key]
            flight.done.set()


class DelegatedAuth:
    """The check in front of /metrics. `reviewer()` is None until the API server is connected:
    until then every request is answered 500 (nobody can be checked yet)."""

    def __init__(self, reviewer: Callable[[], Reviewer | None], clock: Clock | None = None,
                 allowed_ttl: float = ALLOWED_TTL, denied_ttl: float = DENIED_TTL) -> None:
        self._reviewer = reviewer
        clock = clock or MonotonicClock()
        self.users: DecisionCache[bytes, User | None] = DecisionCache(
            clock, lambda user: user is not None, allowed_ttl, denied_ttl)
        self.permissions: DecisionCache[tuple[User, str, str], tuple[bool, str]] = DecisionCache(
            clock, lambda answer: answer[0], allowed_ttl, denied_ttl)

    async def check(self, authorization: str | None, verb: str, path: str) -> Decision:
        token = bearer_token(authorization)
        if token is None:
            return Decision(401, "Unauthorized")
        reviewer = self._reviewer()
        if reviewer is None:
            return Decision(500, "Authentication failed")
        digest = hashlib.sha256(token.encode()).digest()
        try:
            user = await self.users.get(digest, lambda: reviewer.authenticate(token))
        except ReviewFailed as failure:
            log.error("metrics authentication failed", extra={"path": path, "error": str(failure)})
            return Decision(500, "Authentication failed")
        if user is None:
            return Decision(401, "Unauthorized")
        try:
            allowed, reason = await self.permissions.get(
                (user, verb, path), lambda: reviewer.authorize(user, verb, path))
        except ReviewFailed as failure:
            log.error("metrics authorization failed", extra={
                "path": path, "user": user.name, "error": str(failure)})
            return Decision(500, f"Authorization for user {user.name} failed", user)
        if not allowed:
            log.debug("metrics authorization denied", extra={
                "path": path, "user": user.name, "reason": reason})
            return Decision(403, f"Authorization denied for user {user.name}", user)
        return Decision(200, "", user)


class ApiReviewer:
    """Reviews posted to the API server as this process's own identity (it needs `create` on
    tokenreviews and subjectaccessreviews: config/rbac/metrics_auth_role.yaml), at most
    `max_in_flight` at once."""

    def __init__(self, client: KubeClient, timeout: float = REVIEW_TIMEOUT,
                 retry_delays: tuple[float, ...] = RETRY_DELAYS,
                 max_in_flight: int = MAX_REVIEWS_IN_FLIGHT) -> None:
        self.client = client
        self.timeout = timeout
        self.retry_delays = retry_delays
        # Held for each request to the API server (not while waiting to retry).
        self._in_flight = anyio.Semaphore(max_in_flight)

    async def authenticate(self, token: str) -> User | None:
        answer = await self._review(TOKEN_REVIEWS, {"spec": {"token": token}})
        status = answer.get("status") or {}
        if not status.get("authenticated"):
            return None
        user = status.get("user") or {}
        if not user.get("username"):
            return None
        return User(name=str(user["username"]), uid=str(user.get("uid") or ""),
                    groups=tuple(map(str, user.get("groups") or ())),
                    extra=tuple(sorted((str(k), tuple(map(str, v)))
                                       for k, v in (user.get("extra") or {}).items())))

    async def authorize(self, user: User, verb: str, path: str) -> tuple[bool, str]:
        spec: dict[str, Any] = {"user": user.name, "groups": list(user.groups),
                                "nonResourceAttributes": {"path": path, "verb": verb}}
        if user.uid:
            spec["uid"] = user.uid
        if user.extra:
            spec["extra"] = {key: list(values) for key, values in user.extra}
        status = (await self._review(SUBJECT_ACCESS_REVIEWS, {"spec": spec})).get("status") or {}
        # Only "allowed" allows: "denied", or neither (no opinion, whatever evaluationError
        # says, e.g. a binding to a missing role), is 403, as the webhook authorizer has it.
        allowed = bool(status.get("allowed")) and not status.get("denied")
        return allowed, str(status.get("reason") or status.get("evaluationError") or "")

    async def _review(self, resource: Resource, body: dict[str, Any]) -> dict[str, Any]:
        """The API server's answer, tried again after a transient failure; all within
        `timeout` seconds (a scrape waits for it), the wait for a turn included."""
        body = {"apiVersion": resource.api_version, "kind": resource.kind, **body}
        deadline = anyio.current_time() + self.timeout
        for delay in (*self.retry_delays, None):
            remaining = deadline - anyio.current_time()
            try:
                with anyio.fail_after(remaining):
                    async with self._in_flight:
                        return await self.client.review(resource, body)
            except TimeoutError as silent:
                raise ReviewFailed(f"{resource.kind}: no answer within {self.timeout:.0f}s") \
                    from silent
            except Exception as failure:
                error = api_error(failure)
                if error is None:
                    raise
                if delay is None or not error.transient or \
                        anyio.current_time() + delay >= deadline:
                    raise ReviewFailed(f"{resource.kind}: {error}") from failure
            await anyio.sleep(delay)
        raise AssertionError("unreachable")
