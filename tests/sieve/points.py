"""Points: where a run perturbs the reconciler's view, named after the reference run's trace
(`kind@key`, the key of a write or a watch event, see trace.py), and which points a reference
trace has.

    crash@create/kubearmorpolicies/np-a-dnsmanipulation#1
    stale-write@ADDED/kubearmorpolicies/np-a-swdeploymenttools#1
"""

from __future__ import annotations

import attrs

from tests.sieve.trace import Seen, Trace, key_name, key_resource

# What each kind of point does (perturb.py does it).
KINDS = {
    "crash": "intermediate state: the reconciler SIGKILLed right after the API server answers "
             "write k (the answer never reaches it), then restarted",
    "drop": "unobserved state: watch event k never delivered: the stream cut before it and the "
            "watch resumed past it",
    "gone": "unobserved state: a 410 ends the watch of write k's resource while write k is in "
            "flight: the relist's LIST served before the write lands, read after its answer",
    "straddle1": "a relist whose LIST is served after write k was answered and its object "
                 "deleted by someone else",
    "straddle2": "a relist whose pages straddle write k's answer and its object's deletion by "
                 "someone else (page 1 before, page 2 after)",
    "stale-write": "stale state: watch event k delivered late (the stream held, in order), after "
                   "the answer to our next write of its object",
    "stale-answer": "stale state: watch event k delivered late, after the answer to our next write "
                    "(of any object)",
    "stale-delete": "stale state: watch event k delivered late, after its object was deleted by "
                    "someone else (a NimbusPolicy's DELETED: after the garbage collector deleted "
                    "its policies)",
    "stale-relist": "stale state: right after event k, a 410 and a relist answered from the "
                    "snapshot before event k: event k delivered again, late, after a relist",
}
# Kinds whose writes hold watched objects (an Event's answer is never cached)
WATCHED = frozenset({"kubearmorpolicies", "nimbuspolicies"})


@attrs.frozen(order=True)
class Point:
    kind: str
    key: str

    def __attrs_post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"no point kind {self.kind!r} (kinds: {', '.join(KINDS)})")

    def __str__(self) -> str:
        return f"{self.kind}@{self.key}"

    @classmethod
    def parse(cls, text: str) -> Point:
        kind, at, key = text.partition("@")
        if not at or "#" not in key:
            raise ValueError(f"a point is kind@key, e.g. crash@create/kubearmorpolicies/np-a-"
                             f"dnsmanipulation#1, not {text!r}")
        return cls(kind, key)

    @property
    def mode(self) -> str:
        """How its run runs the reconciler: a SIGKILL must be a real one."""
        return "process" if self.kind == "crash" else "in-loop"


def points_of(trace: Trace) -> list[Point]:
    """Every point of a reference trace, in the order they happened, kind by kind."""
    points = [Point("crash", w.key) for w in trace.writes]
    points += [Point("gone", w.key) for w in trace.writes if key_resource(w.key) in WATCHED]
    ours = [w for w in trace.writes if w.key.split("/")[0] in ("create", "patch")
            and key_resource(w.key) == "kubearmorpolicies" and w.delivered]
    points += [Point(f"straddle{page}", w.key) for page in (1, 2) for w in ours]
    points += [Point("drop", s.key) for s in trace.seen if _seen_again(trace, s)]
    for seen in trace.seen:
        write = next(iter(trace.writes_to(seen.resource, seen.name, seen.at)), None)
        if write is not None and not _held_up(trace, seen, write.finished):
            points.append(Point("stale-write", seen.key))
    for seen in trace.seen:
        write = next((w for w in trace.writes if w.at > seen.at), None)
        if write is not None and not _held_up(trace, seen, write.finished):
            points.append(Point("stale-answer", seen.key))
    for seen in trace.seen:
        deleted = _deleted_by_someone_else(trace, seen)
        if deleted is not None and not _held_up(trace, seen, deleted.at):
            points.append(Point("stale-delete", seen.key))
        elif seen.key.startswith("DELETED/nimbuspolicies/"):
            collected = [s.at for s in trace.seen if s.step == seen.step and s.at > seen.at]
            if not _held_up(trace, seen, max(collected, default=seen.at)):
                points.append(Point("stale-delete", seen.key))
    points += [Point("stale-relist", s.key) for s in trace.seen]
    return points


def _seen_again(trace: Trace, seen: Seen) -> bool:
    """Whether the next event about the same object name is someone else's doing, so that the
    dropped event's news comes with it after all (when it is the echo of a write of ours, that
    write was likely our answer to the dropped event: without the event, it never comes)."""
    later = next((s for s in trace.seen if s.at > seen.at
                  and (s.resource, s.name) == (seen.resource, seen.name)), None)
    return later is not None and not trace.is_echo(later)


def _deleted_by_someone_else(trace: Trace, seen: Seen) -> Seen | None:
    if seen.key.startswith("DELETED/"):
        return None
    deleted = next((s for s in trace.seen if s.at > seen.at and s.key.startswith("DELETED/")
                    and (s.resource, s.name, s.uid) == (seen.resource, seen.name, seen.uid)), None)
    if deleted is None or any(w.key.startswith("delete/") and w.uid == seen.uid
                              for w in trace.writes_to(seen.resource, seen.name, seen.at)
                              if w.at < deleted.at):
        return None  # ours: a stale-write point
    return deleted


def _held_up(trace: Trace, seen: Seen, until: float) -> bool:
    """Whether holding `seen`'s stream until `until` would hold up a write the reference made
    meanwhile: one whose cause (the last event before it that was not the echo of a write of
    ours) came on that stream, `seen` itself or after it. The step waiting for that write would not settle
    until the hold's time limit: such a point is not the one it names."""
    for write in trace.writes:
        if seen.at < write.at < until:
            cause = trace.cause_of(write)
            if cause is not None and cause.resource == seen.resource and cause.at >= seen.at:
                return True
    return False


def describe(point: Point) -> str:
    return f"{point}: {KINDS[point.kind]} (k = {point.key}, about {key_name(point.key)})"
