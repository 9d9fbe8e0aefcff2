"""Least privilege, proven from the API server's audit log: what an identity did (every request
it made, with the authorizer's decision) against what its Roles and ClusterRoles grant it,
rule by rule and verb by verb. Used by test_least_privilege.py (config/) and test_helm_chart.py
(the chart, both shapes), after `exercise`, a run that makes the reconciler use everything it
is granted: two replicas handing the Lease over, policies created, repaired and deleted, bad
input reported as Events, status written, watches cut, /metrics scraped."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import httpx

from reconciler.builder import desired_policies
from reconciler.model import to_dict
from reconciler.names import MANAGED_BY_KEY, MANAGED_BY_VALUE
from reconciler.parse import parse_nimbus_policy
from tests.controlplane.launcher import ControlPlaneError, LocalControlPlane, wait_for
from tests.e2e.nimbus import kubearmor_policies, nimbus_policies
from tests.faultproxy import FaultProxy
from tests.process import ReconcilerProcess

LEASE = "nimbus-kubearmor-leader"
Obj = dict[str, Any]
# What the API server lets every authenticated user read (system:discovery,
# system:public-info-viewer): not ours to grant.
DISCOVERY = ("/api", "/apis", "/version", "/openapi/", "/healthz", "/livez", "/readyz")


@attrs.frozen
class Request:
    """One request of the audit log, as the authorizer saw it."""
    verb: str
    group: str | None  # None: a non-resource URL
    resource: str  # with its subresource (nimbuspolicies/status); the path for a non-resource URL
    namespace: str | None
    name: str | None
    allowed: bool
    code: int

    @classmethod
    def of(cls, event: Obj) -> Request:
        ref = event.get("objectRef")
        allowed = event.get("annotations", {}).get("authorization.k8s.io/decision") == "allow"
        code = int(event.get("responseStatus", {}).get("code") or 0)
        if ref is None:
            return cls(event["verb"], None, event["requestURI"].split("?")[0], None, None,
                       allowed, code)
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        return cls(event["verb"], ref.get("apiGroup", ""), resource, ref.get("namespace"),
                   ref.get("name"), allowed, code)

    def __str__(self) -> str:
        where = f" in {self.namespace}" if self.namespace else ""
        named = f" {self.name}" if self.name else ""
        group = f"{self.group}/" if self.group else ""
        return f"{self.verb} {group}{self.resource}{named}{where}"


@attrs.frozen
class Grant:
    """One verb of one rule of a Role (in `namespace`) or ClusterRole (`namespace` None)."""
    role: str
    namespace: str | None
    verb: str
    rule: Obj = attrs.field(hash=False, eq=False)

    def allows(self, request: Request) -> bool:
        if request.verb != self.verb:
            return False
        if request.group is None:
            return self.namespace is None and any(
                url == request.resource or (url.endswith("*") and request.resource.startswith(url[:-1]))
                for url in self.rule.get("nonResourceURLs", []))
        if self.namespace is not None and request.namespace != self.namespace:
            return False
        names = self.rule.get("resourceNames") or []
        return (request.group in self.rule.get("apiGroups", [])
                and request.resource in self.rule.get("resources", [])
                and (not names or request.name in names))

    @property
    def key(self) -> str:
        """e.g. `update intent.security.nimbus.com/nimbuspolicies/finalizers`."""
        what = (self.rule.get("nonResourceURLs") or
                [f"{g}/{r}" if g else r for g in self.rule.get("apiGroups", [])
                 for r in self.rule.get("resources", [])])
        return f"{self.verb} {','.join(what)}"

    def __str__(self) -> str:
        where = f" in {self.namespace}" if self.namespace else " (cluster-wide)"
        return f"{self.role}{where}: {self.key}"


def grants(documents: Iterable[Obj], service_account: tuple[str, str]) -> list[Grant]:
    """What the (Cluster)RoleBindings among `documents` grant the ServiceAccount
    (namespace, name), from the (Cluster)Roles among them, verb by verb."""
    documents = list(documents)
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d
             for d in documents if d["kind"] in ("Role", "ClusterRole")}
    found = []
    for binding in (d for d in documents if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        if not any(s.get("kind") == "ServiceAccount"
                   and (s.get("namespace"), s.get("name")) == service_account
                   for s in binding.get("subjects") or []):
            continue
        namespace = binding["metadata"].get("namespace")  # a RoleBinding's namespace, or None
        ref = binding["roleRef"]
        role = roles[(ref["kind"], namespace if ref["kind"] == "Role" else None, ref["name"])]
        found += [Grant(f"{role['kind']} {role['metadata']['name']}", namespace, verb, rule)
                  for rule in role["rules"] for verb in rule["verbs"]]
    return found


def requests_by(control_plane: LocalControlPlane, username: str, since: int) -> list[Request]:
    return [Request.of(e) for e in control_plane.audit_events()[since:]
            if e["user"].get("username") == username]


def privilege_problems(requests: list[Request], granted: list[Grant],
                       kept: dict[str, str]) -> list[str]:
    """Requests the API server refused, or that no grant of ours allows (discovery aside), and
    grants no request used, unless `kept` names why (by Grant.key); empty when none."""
    problems = [f"refused: {r}" for r in requests if not r.allowed]
    for request in requests:
        if request.allowed and not any(g.allows(request) for g in granted) and not (
                request.group is None and request.resource.startswith(DISCOVERY)):
            problems.append(f"allowed by no rule of ours: {request}")
    used = {g for g in granted if any(g.allows(r) for r in requests)}
    problems += [f"granted, never used: {g}" for g in granted
                 if g not in used and g.key not in kept]
    problems += [f"kept as unused, but used: {g}" for g in used if g.key in kept]
    return sorted(set(problems))


# What is granted without showing in the audit log, and why it is kept.
KEPT = {
    "update intent.security.nimbus.com/nimbuspolicies/finalizers":
        "not a request of its own: where the OwnerReferencesPermissionEnforcement admission "
        "plugin is on (OpenShift, hardened clusters), creating a policy whose ownerReference "
        "sets blockOwnerDeletion (ours do) needs it on the owner",
    "get intent.security.nimbus.com/nimbuspolicies":
        "only when our status patch's test finds adapterPolicies changed by another adapter "
        "since we read it (then the status is read again and the write tried once more): a "
        "race this scenario does not provoke; tests/e2e/test_status_writes.py does",
}


def exercise(a: ReconcilerProcess, b: ReconcilerProcess, control_plane: LocalControlPlane,
             namespace: str, lease_namespace: str, converged: Callable[[], bool], trim: str,
             proxy: FaultProxy | None = None) -> None:
    """Two replicas of the reconciler (leader election on, /metrics secure, with their scrape
    token), over NimbusPolicies in `namespace` one of which has bad input: `a` leads, `b` stands
    by (watching the Lease); they converge; a policy is edited and one deleted by hand, the
    first rule taken out of the NimbusPolicy `trim` (its policies deleted); watches cut (with
    `proxy`); /metrics scraped; `a` stopped with SIGTERM (the Lease released) and `b` takes
    over, then stops."""
    with control_plane.client() as client:  # the Lease made anew: its create is used too
        client.delete(f"/apis/coordination.k8s.io/v1/namespaces/{lease_namespace}/leases/{LEASE}")
        a.start()
        started(a, lambda: holder(client, lease_namespace) == a.env["POD_NAME"], "a to lead")
        b.start()
        started(b, b.ready, "the standby to be ready")
        started(a, converged, "a to converge")

        policies = kubearmor_policies(namespace)
        ours = [p for p in client.get(policies).json()["items"]
                if any(o.get("controller") for o in p["metadata"].get("ownerReferences", []))]
        edited, deleted = ours[0]["metadata"]["name"], ours[1]["metadata"]["name"]
        client.patch(f"{policies}/{edited}", json={"spec": {"action": "Audit"}},
                     headers={"Content-Type": "application/merge-patch+json"}).raise_for_status()
        client.delete(f"{policies}/{deleted}").raise_for_status()
        started(a, lambda: converged() and _action(client, policies, edited) != "Audit",
                "the edit reverted and the deleted policy made again")

        trimmed = _trim_a_rule(client, namespace, trim)
        started(a, lambda: not trimmed & {p["metadata"]["name"]
                                          for p in client.get(policies).json()["items"]},
                f"the policies of the rule taken out ({sorted(trimmed)}) to be deleted")

        if proxy is not None:
            assert proxy.reset_open(kind="watch") > 0
            wait_for(lambda: a.ready() and b.ready(), 30, "the watches to be established again")
        assert a.metrics_token is not None
        answer = a.scrape(a.metrics_token)
        assert answer.status_code == 200, answer.text

        assert a.stop(signal.SIGTERM) == 0, a.log_text()[-3000:]
        started(b, lambda: holder(client, lease_namespace) == b.env["POD_NAME"], "b to take over")
        assert b.stop(signal.SIGTERM) == 0, b.log_text()[-3000:]
    for replica in (a, b):
        assert "forbidden" not in replica.log_text().lower(), replica.log_text()[-3000:]


def all_converged(client: httpx.Client, namespace: str) -> bool:
    """Every NimbusPolicy in `namespace` has exactly its policies, as built, listed in its
    status, and each one with bad input a Warning Event."""
    mine = {p["metadata"]["name"]: p for p in client.get(kubearmor_policies(namespace)).json()["items"]
            if (p["metadata"].get("labels") or {}).get(MANAGED_BY_KEY) == MANAGED_BY_VALUE}
    wanted: set[str] = set()
    events = {e["involvedObject"].get("uid") for e in client.get(
        f"/api/v1/namespaces/{namespace}/events").json()["items"] if e["type"] == "Warning"}
    for item in client.get(nimbus_policies(namespace)).json()["items"]:
        parsed, problems = parse_nimbus_policy(item)
        assert parsed is not None
        built, more = desired_policies(parsed)
        wanted |= {p.name for p in built}
        if any(p.name not in mine or mine[p.name]["spec"] != to_dict(p)["spec"] for p in built):
            return False
        entries = (item.get("status") or {}).get("adapterPolicies") or []
        if not {f"KubeArmorPolicy/{p.name}" for p in built} <= set(entries):
            return False
        if (problems or more) and item["metadata"]["uid"] not in events:
            return False
    return set(mine) == wanted


def started(replica: ReconcilerProcess, condition: Callable[[], Any], what: str) -> None:
    try:
        wait_for(condition, 60, what)
    except ControlPlaneError as error:
        raise AssertionError(f"{error}; its log:\n{replica.log_text()[-4000:]}") from error


def holder(client: httpx.Client, namespace: str) -> str | None:
    lease = client.get(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{LEASE}")
    return lease.json()["spec"].get("holderIdentity") if lease.status_code == 200 else None


def _action(client: httpx.Client, policies: str, name: str) -> str | None:
    response = client.get(f"{policies}/{name}")
    return response.json()["spec"].get("action") if response.status_code == 200 else None


def _trim_a_rule(client: httpx.Client, namespace: str, name: str) -> set[str]:
    """Take the first rule out of the NimbusPolicy `name`; the names of the policies that
    were its (and no other rule's)."""
    url = f"{nimbus_policies(namespace)}/{name}"
    policy = client.get(url).json()
    rules = policy["spec"]["rules"]
    before = set(policy.get("status", {}).get("adapterPolicies") or [])
    assert len(rules) > 1, f"{name} has one rule only"
    client.patch(url, json={"spec": {"rules": rules[1:]}},
                 headers={"Content-Type": "application/merge-patch+json"}).raise_for_status()

    def after() -> tuple[set[str]] | None:
        status = client.get(url).json().get("status", {})
        entries = set(status.get("adapterPolicies") or [])
        return (entries,) if entries != before else None
    (remaining,) = wait_for(after, 30, f"{name}'s status to change")
    return {entry.split("/", 1)[1] for entry in before - remaining}
