"""100 generated malformed NimbusPolicies: what the CRD rejects the server rejects; every
accepted bad one gets an Event and a metric; nothing crashes; the good ones beside them converge."""

from __future__ import annotations

import re
import string
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from reconciler.builder import desired_policies
from reconciler.intents import CATALOGUE
from reconciler.limits import kept_problems
from reconciler.parse import parse_nimbus_policy
from tests.controlplane.launcher import LocalControlPlane, wait_for
from tests.e2e.nimbus import kubearmor_policies, nimbus_policies
from tests.process import ReconcilerProcess

pytestmark = pytest.mark.faults
GROUP = "/apis/intent.security.nimbus.com/v1alpha1"

dns_label = st.integers(0, 10**6).map(lambda i: f"np-{i}")
near_limit = st.integers(215, 250).map(lambda n: "n" * n)  # some policy names overflow 253
invalid_name = st.text(alphabet=string.ascii_letters + "é_ ", min_size=1, max_size=8)
intent_ids = st.one_of(st.sampled_from(sorted(CATALOGUE)), st.text(max_size=30),
                       st.sampled_from(["DNSManipulation", "escape-to-host", "ünïcode"]))
actions = st.one_of(st.sampled_from(["Block", "Audit", "Enforce"]),
                    st.sampled_from(["", "block", "Deny", "Allow"]), st.text(max_size=6))
params = st.dictionaries(st.sampled_from(["exclude_caps", "mode"]),
                         st.lists(st.sampled_from(["sys_admin", "nope", "CAP_NET_RAW", "ü"]),
                                  max_size=3), max_size=2)
good_rule = st.fixed_dictionaries({"id": intent_ids, "rule": st.fixed_dictionaries(
    {"action": actions}, optional={"params": params})}, optional={"description": st.text(max_size=40)})
missing_field_rule = st.one_of(st.fixed_dictionaries({"id": intent_ids}),  # no rule
                               st.fixed_dictionaries({"rule": st.just({"action": "Block"})}),  # no id
                               st.fixed_dictionaries({"id": intent_ids, "rule": st.just({})}))
# huge lists are built from a drawn size: drawing each element would exhaust hypothesis's buffer
huge_rules = st.tuples(st.integers(100, 300), good_rule).map(
    lambda drawn: [dict(drawn[1], description=f"copy {i}") for i in range(drawn[0])])
huge_selector = st.integers(30, 200).map(
    lambda n: {"matchLabels": {f"label-{i}": f"value-{i}" for i in range(n)}})
selectors = st.one_of(st.just({}), st.just({"matchLabels": {}}), huge_selector,
                      st.dictionaries(dns_label, dns_label, max_size=3).map(
                          lambda labels: {"matchLabels": labels}))
accepted_spec = st.fixed_dictionaries({"selector": selectors, "rules": st.one_of(
    st.lists(good_rule, min_size=1, max_size=6), huge_rules)})
rejected_spec = st.one_of(
    st.fixed_dictionaries({"selector": selectors,
                           "rules": st.lists(missing_field_rule, min_size=1, max_size=3)}),
    st.fixed_dictionaries({"rules": st.lists(good_rule, max_size=2)}),  # no selector
    st.fixed_dictionaries({"selector": selectors}),  # no rules
    st.just({}),
)


def _pick(drawn: tuple[int, int, str, str, str, dict[str, Any], dict[str, Any]]
          ) -> tuple[str, dict[str, Any]]:
    """Mostly what the CRD accepts (that is what reaches the reconciler), some of what it does
    not: the category comes from a drawn percentage, since one_of's choice is not uniform."""
    name_roll, spec_roll, dns, near, invalid, good_spec, bad_spec = drawn
    name = invalid if name_roll >= 90 else near if name_roll >= 70 else dns
    return name, bad_spec if spec_roll >= 85 else good_spec


bodies = st.tuples(st.integers(0, 99), st.integers(0, 99), dns_label, near_limit, invalid_name,
                   accepted_spec, rejected_spec).map(_pick)


def problems_expected(obj: dict[str, Any]) -> int:
    """Problems reported: at most limits.MAX_PROBLEMS per generation, and one counting the rest."""
    parsed, parse_problems = parse_nimbus_policy(obj)
    if parsed is None:
        return len(kept_problems("", parse_problems))
    return len(kept_problems("", parse_problems + desired_policies(parsed)[1]))


def test_malformed_nimbus_policies(control_plane: LocalControlPlane,
                                   reconciler_kubeconfig: Path) -> None:
    """100 examples: each kind of name and spec is drawn at least a tenth of the time, so each
    is there several times over (the counts of rejected and of accepted bad ones are checked);
    200 took twice as long (1,300 Events to post) and drew nothing of another kind. The
    reconciler starts when half of them exist: the first half reaches it through its LIST,
    the second through its watch, while it is busy with the first."""
    namespace = "malformed"
    with control_plane.client() as client, \
            ReconcilerProcess(reconciler_kubeconfig, namespace) as reconciler:
        client.post("/api/v1/namespaces", json={"metadata": {"name": namespace}}).raise_for_status()
        owner = client.post(f"{GROUP}/namespaces/{namespace}/securityintentbindings", json={
            "apiVersion": "intent.security.nimbus.com/v1alpha1", "kind": "SecurityIntentBinding",
            "metadata": {"name": "owner"}, "spec": {"intents": [], "selector": {}}}).json()
        reference = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "controller": True,
                     "name": "owner", "uid": owner["metadata"]["uid"]}
        accepted: list[dict[str, Any]] = []
        rejected: list[str] = []
        drawn: list[tuple[str, dict[str, Any]]] = []

        # 100 examples, one NimbusPolicy each, the same 100 every run; the generate phase only
        # (shrinking would post its attempts too).
        @settings(max_examples=100, derandomize=True, database=None, deadline=None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(bodies)
        def draw(body: tuple[str, dict[str, Any]]) -> None:
            drawn.append(body)

        def post(numbered: tuple[int, tuple[str, dict[str, Any]]]) -> None:
            number, (name, spec) = numbered
            name += f"{number:03d}"  # hypothesis repeats its favourites
            response = client.post(nimbus_policies(namespace), json={
                "apiVersion": "intent.security.nimbus.com/v1alpha1", "kind": "NimbusPolicy",
                "metadata": {"name": name, "ownerReferences": [reference]}, "spec": spec})
            if response.status_code == 201:
                accepted.append(response.json())
            else:
                assert response.status_code in (400, 409, 422), response.text
                rejected.append(response.json().get("message", "")[-90:])

        draw()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(post, enumerate(drawn[:50])))
            reconciler.start()
            list(pool.map(post, enumerate(drawn[50:], start=50)))
        good = [f"good-{i}" for i in range(10)]
        for name in good:
            client.post(nimbus_policies(namespace), json={
                "apiVersion": "intent.security.nimbus.com/v1alpha1", "kind": "NimbusPolicy",
                "metadata": {"name": name, "ownerReferences": [reference]},
                "spec": {"selector": {"matchLabels": {"app": name}},
                         "rules": [{"id": "dnsManipulation", "rule": {"action": "Block"}}]}
            }).raise_for_status()
        bad = {obj["metadata"]["uid"]: problems_expected(obj) for obj in accepted}
        bad = {uid: n for uid, n in bad.items() if n}
        assert len(accepted) + len(rejected) == 100
        assert len(rejected) >= 10 and len(bad) >= 25, (len(rejected), len(bad),
                                                        sorted(set(rejected))[:12])

        def good_converged() -> bool:
            with control_plane.client() as client:
                names = {p["metadata"]["name"] for p in
                         client.get(kubearmor_policies(namespace)).json()["items"]}
            return all(f"{n}-dnsmanipulation" in names for n in good)

        wait_for(good_converged, 120, "the good NimbusPolicies to converge")

        def reported() -> set[str]:
            with control_plane.client() as client:
                events = client.get(f"/api/v1/namespaces/{namespace}/events").json()["items"]
            return {e["involvedObject"]["uid"] for e in events
                    if e["source"].get("component") == "nimbus-kubearmor"}

        wait_for(lambda: set(bad) <= reported(), 120, "an Event for every accepted bad one")
        def counted() -> float:
            scrape = reconciler.metrics()
            return sum(float(v) for v in re.findall(
                r"^nimbus_kubearmor_problems_total\{[^}]*\} (\S+)$", scrape, re.M))

        wait_for(lambda: counted() >= sum(bad.values()), 60, "every problem to be counted")
        with control_plane.client() as client:
            events = client.get(f"/api/v1/namespaces/{namespace}/events").json()["items"]
        per_policy: dict[str, int] = {}
        for event in events:
            per_policy[event["involvedObject"]["uid"]] = per_policy.get(
                event["involvedObject"]["uid"], 0) + 1
        assert max(per_policy.values()) == 10  # capped, however many rules are bad
        assert reconciler.running()
        assert "reconcile crashed" not in reconciler.log_text()
