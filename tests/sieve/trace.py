"""What the reconciler did and saw in one run, as the fault proxy between it and the API server
recorded it: every write it made and every watch event delivered to it, each named by a key that
is the same in every run of the same workload (namespaces and uids differ between runs, the
order of writes to different objects may too, but the sequence of writes to one object and of
events about one object does not):

    write   <verb>/<resource>/<name>#<n>      create/kubearmorpolicies/np-a-dnsmanipulation#1
                                              patch/nimbuspolicies/status/np-a#2
                                              create/events/np-b:UnknownIntent#1 (Events: the
                                              NimbusPolicy and the reason; their names hash a uid)
    event   <TYPE>/<resource>/<name>#<n>      MODIFIED/nimbuspolicies/np-a#3

`n` counts from 1 per `<verb>/<resource>/<name>` (per `<TYPE>/<resource>/<name>`) in the order
the proxy saw them. `Numbering` gives the same keys live, as requests and events pass the proxy.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

import attrs

from tests.faultproxy import Exchange, WatchEvent

VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED"})


def resource_path(path: str) -> tuple[str, str, str]:
    """(plural, name, subresource) of a namespaced API path ("" where absent)."""
    segments = [s for s in path.split("/") if s]
    rest = segments[2:] if segments[:1] == ["api"] else segments[3:]
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]
    rest += [""] * (3 - len(rest))
    return rest[0], rest[1], rest[2]


def write_base(exchange: Exchange) -> str | None:
    """`<verb>/<resource>/<name>` of a write, or None for a request that is not one."""
    verb = VERBS.get(exchange.method)
    if verb is None:
        return None
    plural, name, subresource = resource_path(exchange.path)
    if not name and exchange.body:
        try:
            body = json.loads(exchange.body)
        except ValueError:
            body = {}
        if plural == "events":
            name = f"{(body.get('involvedObject') or {}).get('name')}:{body.get('reason')}"
        else:
            name = str((body.get("metadata") or {}).get("name") or "")
    resource = f"{plural}/{subresource}" if subresource else plural
    return f"{verb}/{resource}/{name}"


def event_base(path: str, event: WatchEvent) -> str | None:
    """`<TYPE>/<resource>/<name>` of a watch event, None for BOOKMARK and ERROR."""
    if event.type not in EVENT_TYPES:
        return None
    return f"{event.type}/{resource_path(path)[0]}/{event.name}"


class Numbering:
    """Numbers writes or events as they come: `key(base)` returns `base#n`. Each instance is
    used from one thread only (the proxy's)."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def key(self, base: str) -> str:
        self._counts[base] += 1
        return f"{base}#{self._counts[base]}"


def key_name(key: str) -> str:
    """The object name in a write or event key (for Events: "<NimbusPolicy>:<reason>")."""
    return key.rpartition("#")[0].rpartition("/")[2]


def key_resource(key: str) -> str:
    """The plural of the resource a key is about (nimbuspolicies for a status patch)."""
    return key.split("/")[1]


@attrs.frozen
class Write:
    key: str
    at: float  # when the request reached the proxy
    finished: float  # when the proxy was done with it (answered, or reset)
    status: int | None  # what the API server answered
    delivered: bool  # the answer reached the reconciler
    uid: str  # of the object it wrote (the answer's), or the uid precondition of a DELETE
    resource_version: str  # the answer's, if it was an object
    step: int


@attrs.frozen
class Seen:
    key: str
    at: float  # when it was passed on to the reconciler
    resource: str
    name: str
    uid: str
    resource_version: str
    step: int


@attrs.frozen
class Trace:
    writes: tuple[Write, ...]
    seen: tuple[Seen, ...]
    steps: tuple[str, ...]  # the workload's steps, by index

    def writes_to(self, resource: str, name: str, after: float) -> list[Write]:
        return [w for w in self.writes if w.at > after and key_resource(w.key) == resource
                and key_name(w.key) == name]

    def is_echo(self, seen: Seen) -> bool:
        """Whether the event brought back a version the answer to one of our writes gave."""
        return any((key_resource(w.key), key_name(w.key), w.resource_version)
                   == (seen.resource, seen.name, seen.resource_version) for w in self.writes)

    def cause_of(self, write: Write) -> Seen | None:
        """The last event delivered before `write` that was not the echo of one of our own
        writes."""
        before = [s for s in self.seen if s.at < write.at and not self.is_echo(s)]
        return before[-1] if before else None


def _written(exchange: Exchange) -> tuple[str, str]:
    """(uid, resourceVersion) of the object a write wrote (from its answer), or the uid
    precondition of a DELETE."""
    for body in (exchange.answer_body, exchange.body):
        try:
            document = json.loads(body) if body else {}
        except ValueError:
            continue
        metadata = document.get("metadata") or {} if document.get("kind") != "Status" else {}
        uid = metadata.get("uid") or (document.get("preconditions") or {}).get("uid")
        if uid:
            return str(uid), str(metadata.get("resourceVersion") or "")
    return "", ""


def trace_of(exchanges: Sequence[Exchange], step_starts: Sequence[tuple[str, float]]) -> Trace:
    """The trace of a run from a recording proxy's log (`step_starts`: each workload step's
    name and when it began)."""
    def step(at: float) -> int:
        return max([i for i, (_, start) in enumerate(step_starts) if start <= at], default=0)

    writes, seen = [], []
    write_numbers, event_numbers = Numbering(), Numbering()
    for exchange in sorted(exchanges, key=lambda e: e.at):
        base = write_base(exchange)
        if base is not None:
            writes.append(Write(write_numbers.key(base), exchange.at,
                                exchange.finished or exchange.at, exchange.status,
                                exchange.done and not exchange.reset and not exchange.cancelled,
                                *_written(exchange), step(exchange.at)))
    events = sorted(((e.path, event) for e in exchanges for event in e.watch_events),
                    key=lambda pair: pair[1].at)
    for path, event in events:
        base = event_base(path, event)
        if base is not None:
            seen.append(Seen(event_numbers.key(base), event.at, resource_path(path)[0], event.name,
                             event.uid, event.resource_version, step(event.at)))
    return Trace(tuple(writes), tuple(seen), tuple(name for name, _ in step_starts))
