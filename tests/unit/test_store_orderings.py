"""The cache against a model of the API server, under every ordering hypothesis finds: a fake
server whose objects someone (or we) create, change and delete, each change a watch event at
the next resourceVersion; the KubeArmorPolicy reflector (its real `_apply` and `list_once`, on a
fake client) and the controller's handling of its own writes' answers (`_remember`, and
`delete` for a DELETE's answer, a Status without a resourceVersion as kube-apiserver gives it).
Watch events arrive in order but late; answers to our writes arrive in any order, before or
after the watch's events about the same object, and while a relist waits for its LIST or
between its pages; a relist's LIST is served after whatever happened meanwhile, its continue
token may expire.

What must hold, after every step: for each key the cache holds a state the key really had, no
older than what the watch has delivered everything up to, and never older than the state it
held before (a cache that goes back in time acts on the past: a deleted policy put back, a
missing one never recreated). Once every event and answer is delivered: the cache is the
server's state exactly.
"""

from __future__ import annotations

import itertools
from typing import Any

import anyio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from prometheus_client import CollectorRegistry

from reconciler.cached import CachedPolicy
from reconciler.controller import Controller, ControllerConfig
from reconciler.kube import ApiError
from reconciler.metrics import Metrics

NAMESPACE = "ns"
NAMES = ("a", "b", "c")
State = tuple[str, str] | None  # (uid, resourceVersion) of the object at a key, None: none

OPS = st.sampled_from(["create", "modify", "delete"])
ACTION = st.tuples(OPS, st.sampled_from(NAMES), st.booleans(), st.booleans())


def policy(name: str, uid: str, version: int) -> dict[str, Any]:
    return {"apiVersion": "security.kubearmor.com/v1", "kind": "KubeArmorPolicy",
            "metadata": {"name": name, "namespace": NAMESPACE, "uid": uid,
                         "resourceVersion": str(version)},
            "spec": {"action": "Block", "version": version}}


class Server:
    """Objects, their history per key and the watch events, at etcd-like resourceVersions."""

    def __init__(self) -> None:
        self.version = 100
        self.objects: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        # key -> [(from version, state)], the states each key had in order
        self.history: dict[str, list[tuple[int, State]]] = {
            f"{NAMESPACE}/{n}": [(0, None)] for n in NAMES}
        self.uids = itertools.count()

    def change(self, op: str, name: str) -> tuple[str, dict[str, Any]] | None:
        """Apply op; the answer a client would get, or None if the op does not apply."""
        key, current = f"{NAMESPACE}/{name}", self.objects.get(name)
        if (op == "create") == (current is not None):
            return None
        self.version += 1
        if op == "delete":
            assert current is not None
            del self.objects[name]
            gone = policy(name, current["metadata"]["uid"], self.version)  # DELETED: its version
            self.events.append({"type": "DELETED", "object": gone})
            self.history[key].append((self.version, None))
            return "deleted", gone
        uid = f"uid-{next(self.uids)}" if current is None else current["metadata"]["uid"]
        obj = policy(name, uid, self.version)
        self.objects[name] = obj
        self.events.append({"type": "ADDED" if current is None else "MODIFIED", "object": obj})
        self.history[key].append((self.version, (uid, str(self.version))))
        return "written", obj

    def state(self, key: str) -> State:
        return self.history[key][-1][1]


class ListingClient:
    """Answers the reflector's LIST from the server: first whatever is to happen before the LIST
    is served (`before`), then pages of a snapshot taken then; `between` happens after the
    first page; `expire` answers the first continue token with 410 (the snapshot compacted)."""

    def __init__(self, server: Server, page_size: int) -> None:
        self.server = server
        self.page_size = page_size
        self.before: list[Any] = []
        self.between: list[Any] = []
        self.expire = False
        self.act: Any = None
        self._snapshot: tuple[int, list[dict[str, Any]]] | None = None

    def expect_streams(self, count: int) -> None:
        """The controller sizes a real client's connection pool to its watches: none here."""

    async def list(self, resource: Any, namespace: Any, *, limit: int | None = None,
                   continue_token: str | None = None, **_: Any) -> dict[str, Any]:
        if continue_token is None:
            for action in self.before:
                self.act(action)
            self.before = []
            self._snapshot = (self.server.version, [self.server.objects[n] for n in
                                                    sorted(self.server.objects)])
            start = 0
        else:
            for action in self.between:
                self.act(action)
            self.between = []
            if self.expire:
                self.expire = False
                raise ApiError(410, "Expired", "The provided continue parameter is too old")
            start = int(continue_token)
        assert self._snapshot is not None
        version, items = self._snapshot
        end = len(items) if limit is None else start + limit
        page = {"metadata": {"resourceVersion": str(version)},
                "items": [dict(item) for item in items[start:end]]}
        if end < len(items):
            page["metadata"]["continue"] = str(end)
        return page


class CacheMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.server = Server()
        self.client = ListingClient(self.server, page_size=2)
        self.controller = Controller(self.client,  # type: ignore[arg-type]
                                     Metrics(CollectorRegistry()),
                                     ControllerConfig(namespaces=(NAMESPACE,), page_size=2))
        self.reflector = self.controller.reflectors[1]
        self.reflector.handler = lambda *_: None
        self.client.act = self._act
        self.reflector.client = self.client
        self.store = self.controller.kubearmor_policies
        self.answers: list[tuple[str, dict[str, Any]]] = []  # to our writes, not yet delivered
        self.delivered = 0  # watch events delivered (the watch's position in server.events)
        self.position: int | None = None  # everything up to here is delivered
        self.floor: dict[str, int] = {}  # key -> from which version the cached state is
        self._relist(before=[], between=[], expire=False)

    # --- what happens on the server, and what reaches the cache -------------------------------

    def _act(self, action: tuple[str, str, bool, bool]) -> None:
        op, name, ours, answer_now = action
        result = self.server.change(op, name)
        if result is not None and ours:
            self.answers.append(result)
            if answer_now:
                self._answer(len(self.answers) - 1)
        self._check()

    def _answer(self, index: int) -> None:
        kind, obj = self.answers.pop(index)
        if kind == "written":
            self.controller._remember(self.store, CachedPolicy.from_json(obj))
        else:  # our DELETE answered with a Status: uid, no resourceVersion
            key = f"{NAMESPACE}/{obj['metadata']['name']}"
            self.store.delete(key, uid=obj["metadata"]["uid"])

    def _relist(self, before: list[Any], between: list[Any], expire: bool) -> None:
        self.client.before, self.client.between, self.client.expire = before, between, expire
        listed = int(anyio.run(self.reflector.list_once))
        # the watch starts from the LIST's version: what happened after it is still to come
        self.delivered = sum(1 for e in self.server.events
                             if int(e["object"]["metadata"]["resourceVersion"]) <= listed)
        self.position = listed

    @rule(action=ACTION)
    def change(self, action: tuple[str, str, bool, bool]) -> None:
        self._act(action)

    @precondition(lambda self: self.answers)
    @rule(data=st.data())
    def answer(self, data: st.DataObject) -> None:
        self._answer(data.draw(st.integers(0, len(self.answers) - 1)))

    @precondition(lambda self: self.delivered < len(self.server.events))
    @rule()
    def watch_event(self) -> None:
        event = self.server.events[self.delivered]
        self.delivered += 1
        self.reflector._apply(event)
        self.position = int(event["object"]["metadata"]["resourceVersion"])

    @rule(before=st.lists(ACTION, max_size=4), between=st.lists(ACTION, max_size=3),
          expire=st.booleans())
    def relist(self, before: list[Any], between: list[Any], expire: bool) -> None:
        """A 410: the events not delivered yet are lost; a LIST, served after `before`."""
        self._relist(before, between, expire)

    # --- what must hold ---------------------------------------------------------------------

    def _cached(self, key: str) -> State:
        value = self.store.get(key)
        return None if value is None else (value.uid, value.resource_version)

    @invariant()
    def never_behind_nor_back_in_time(self) -> None:
        self._check()

    def _check(self) -> None:
        for key, history in self.server.history.items():
            state = self._cached(key)
            # the intervals [from, until) in which the key was in that state
            spans = [(start, history[i + 1][0] if i + 1 < len(history) else None)
                     for i, (start, s) in enumerate(history) if s == state]
            assert spans, f"{key}: cached {state} never existed"
            floor = self.floor.get(key, 0)
            bound = max(floor, self.position if self.position is not None else 0)
            valid = [s for s in spans if s[1] is None or s[1] > bound]
            assert valid, (f"{key}: cached {state}, held only before {spans[-1][1]}; the watch "
                           f"has delivered up to {self.position} and the cache held a state "
                           f"from {floor} before")
            self.floor[key] = max(floor, valid[0][0])

    def teardown(self) -> None:
        while self.answers:
            self._answer(0)
            self._check()
        while self.delivered < len(self.server.events):
            self.watch_event()
            self._check()
        for key in self.server.history:
            assert self._cached(key) == self.server.state(key), (
                f"{key}: cached {self._cached(key)}, the server has {self.server.state(key)}")


CacheMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=20,
                                          deadline=None)
test_the_cache_under_every_ordering = CacheMachine.TestCase
