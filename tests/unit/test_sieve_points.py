"""The perturbation harness's bookkeeping (tests/sieve/): how writes and events are keyed, how
points are named and parsed, and which points a trace has."""

from __future__ import annotations

import json

import pytest

from tests.faultproxy import Exchange, WatchEvent
from tests.sieve.points import Point, points_of
from tests.sieve.trace import Numbering, Seen, Trace, Write, event_base, resource_path, write_base

NS = "/apis/security.kubearmor.com/v1/namespaces/ns/kubearmorpolicies"
NP = "/apis/intent.security.nimbus.com/v1alpha1/namespaces/ns/nimbuspolicies"


def exchange(method: str, path: str, body: object = None) -> Exchange:
    return Exchange(0.0, method, path, "", "write", "forward",
                    body=json.dumps(body).encode() if body is not None else b"")


@pytest.mark.parametrize(("method", "path", "body", "base"), [
    ("POST", NS, {"metadata": {"name": "np-a-x"}}, "create/kubearmorpolicies/np-a-x"),
    ("PATCH", f"{NS}/np-a-x", None, "patch/kubearmorpolicies/np-a-x"),
    ("DELETE", f"{NS}/np-a-x", {"preconditions": {"uid": "u"}}, "delete/kubearmorpolicies/np-a-x"),
    ("PATCH", f"{NP}/np-a/status", None, "patch/nimbuspolicies/status/np-a"),
    ("POST", "/api/v1/namespaces/ns/events",
     {"metadata": {"name": "np-a.1f2e"}, "involvedObject": {"name": "np-a"}, "reason": "NameTaken"},
     "create/events/np-a:NameTaken"),
    ("GET", NS, None, None),
])
def test_write_keys_name_what_is_the_same_in_every_run(method: str, path: str, body: object,
                                                      base: str | None) -> None:
    assert write_base(exchange(method, path, body)) == base


def test_event_keys_and_numbering() -> None:
    numbering = Numbering()
    added = WatchEvent("ADDED", "KubeArmorPolicy", "ns", "x", "u", "5")
    assert event_base(NS, added) == "ADDED/kubearmorpolicies/x"
    assert event_base(NS, WatchEvent("BOOKMARK", resource_version="9")) is None
    assert [numbering.key("ADDED/kubearmorpolicies/x") for _ in range(2)] == [
        "ADDED/kubearmorpolicies/x#1", "ADDED/kubearmorpolicies/x#2"]
    assert numbering.key("ADDED/kubearmorpolicies/y") == "ADDED/kubearmorpolicies/y#1"
    assert resource_path("/api/v1/namespaces/ns/events") == ("events", "", "")
    assert resource_path(f"{NP}/np-a/status") == ("nimbuspolicies", "np-a", "status")


def test_points_parse_and_print() -> None:
    point = Point.parse("crash@create/kubearmorpolicies/np-a-x#1")
    assert (point.kind, point.key, str(point)) == (
        "crash", "create/kubearmorpolicies/np-a-x#1", "crash@create/kubearmorpolicies/np-a-x#1")
    assert point.mode == "process" and Point("drop", "ADDED/kubearmorpolicies/x#1").mode == "in-loop"
    with pytest.raises(ValueError, match="kind"):
        Point.parse("crush@create/kubearmorpolicies/np-a-x#1")
    with pytest.raises(ValueError, match="kind@key"):
        Point.parse("crash")


def test_points_of_a_trace() -> None:
    """A create answered, its echo, a change of the NimbusPolicy, our DELETE of it: the
    points a run of that has, and the ones it has not (a drop with no later news of its
    object, a hold that would hold up the write it waits for)."""
    writes = (Write("create/kubearmorpolicies/x#1", 1.0, 1.1, 201, True, "u1", "10", 0),
              Write("delete/kubearmorpolicies/x#1", 5.0, 5.1, 200, True, "u1", "", 1))
    seen = (Seen("ADDED/kubearmorpolicies/x#1", 1.2, "kubearmorpolicies", "x", "u1", "10", 0),
            Seen("MODIFIED/nimbuspolicies/np#1", 4.9, "nimbuspolicies", "np", "n1", "11", 1),
            Seen("DELETED/kubearmorpolicies/x#1", 5.2, "kubearmorpolicies", "x", "u1", "12", 1))
    points = {str(p) for p in points_of(Trace(writes, seen, ("setup", "step")))}
    assert {"crash@create/kubearmorpolicies/x#1", "gone@delete/kubearmorpolicies/x#1",
            "straddle1@create/kubearmorpolicies/x#1", "straddle2@create/kubearmorpolicies/x#1",
            "drop@ADDED/kubearmorpolicies/x#1",
            # held until our DELETE, whose cause (the NimbusPolicy's change) is another stream
            "stale-write@ADDED/kubearmorpolicies/x#1",
            "stale-relist@DELETED/kubearmorpolicies/x#1"} <= points
    assert "straddle1@delete/kubearmorpolicies/x#1" not in points  # nothing left to delete
    assert "drop@MODIFIED/nimbuspolicies/np#1" not in points  # never heard of again
    # the NimbusPolicy's change caused our DELETE: held, it would hold up its own answer
    assert "stale-answer@MODIFIED/nimbuspolicies/np#1" not in points
