"""The differential oracle: what a perturbed run must end with, compared with the unperturbed
reference run's end and with the pure builder (tests/soak.py's `differences`):

- the same objects: every KubeArmorPolicy's name, spec, owner (by name), our label and
  annotation, and every NimbusPolicy's status (its entries in order, and their count), equal to
  the reference's; and every Warning Event we posted (NimbusPolicy, reason, message), once;
- all of it as the builder says (the soak's check of the whole namespace);
- nothing of a user's touched (their policies keep the resourceVersion they gave them);
- no write once quiet: nothing written for a few seconds after all that holds;
- no DELETE of an object already deleted by one of our DELETEs whose answer we got (a stale
  view acted on after a newer one: issue 17's defect 2);
- the reconciler's caches (in-loop runs) hold what the API server holds, each object at its
  resourceVersion, and no tombstone: a phantom or a stale entry the workload happens not to act
  on is still a wrong view (issue 17's defect 1 left a policy deleted meanwhile in the cache).
  Not after a `drop` point: a real API server never skips an event on a watch, so a cache that
  missed one (an object changed or created once, never again) is that point's artefact.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import attrs
import httpx

from reconciler.names import MANAGED_BY_KEY
from tests.e2e.nimbus import kubearmor_policies, nimbus_policies
from tests.faultproxy import Exchange, FaultProxy
from tests.sieve.trace import key_name, write_base
from tests.soak import differences

COMPONENT = "nimbus-kubearmor"


@attrs.frozen
class EndState:
    """What a run ends with, without what differs between runs (uids, versions, times)."""

    policies: dict[str, dict[str, Any]]  # KubeArmorPolicies by name
    statuses: dict[str, dict[str, Any]]  # NimbusPolicies' status by name
    events: tuple[tuple[str, str, str], ...]  # our Warning Events: (NimbusPolicy, reason, message)

    def differences_from(self, reference: EndState) -> list[str]:
        found = []
        for name in sorted(set(self.policies) | set(reference.policies)):
            mine, theirs = self.policies.get(name), reference.policies.get(name)
            if mine != theirs:
                found.append(f"KubeArmorPolicy {name}: {_short(mine)}, the reference has "
                             f"{_short(theirs)}")
        for name in sorted(set(self.statuses) | set(reference.statuses)):
            if self.statuses.get(name) != reference.statuses.get(name):
                found.append(f"NimbusPolicy {name} status {self.statuses.get(name)}, the reference "
                             f"has {reference.statuses.get(name)}")
        if self.events != reference.events:
            counts, wanted = Counter(self.events), Counter(reference.events)
            found.append(f"Events: extra {sorted((counts - wanted).elements())}, missing "
                         f"{sorted((wanted - counts).elements())}")
        return found


def _short(policy: dict[str, Any] | None) -> str:
    if policy is None:
        return "absent"
    return json.dumps({k: v for k, v in policy.items() if k != "spec"}) + \
        f" spec {json.dumps(policy['spec'], sort_keys=True)[:120]}"


def _policy(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    controller = next((r for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
    return {"spec": obj["spec"], "owner": controller and (controller["kind"], controller["name"]),
            "label": (meta.get("labels") or {}).get(MANAGED_BY_KEY),
            "annotation": (meta.get("annotations") or {}).get(MANAGED_BY_KEY)}


@attrs.frozen
class Cluster:
    """One namespace's objects as the API server has them."""

    nimbus_policies: list[dict[str, Any]]
    kubearmor_policies: list[dict[str, Any]]
    events: list[dict[str, Any]]

    @classmethod
    async def read(cls, api: httpx.AsyncClient, namespace: str) -> Cluster:
        nps, ksps, events = await asyncio.gather(
            api.get(nimbus_policies(namespace)), api.get(kubearmor_policies(namespace)),
            api.get(f"/api/v1/namespaces/{namespace}/events"))
        return cls(*(r.raise_for_status().json()["items"] for r in (nps, ksps, events)))

    def differences(self) -> list[str]:
        """What the pure builder says is wrong (the soak's check)."""
        return differences(self.nimbus_policies, self.kubearmor_policies)

    def waiting_for_gc(self) -> bool:
        """Whether a KubeArmorPolicy's controlling NimbusPolicy is gone: the garbage collector's
        work, not the reconciler's."""
        uids = {np["metadata"]["uid"] for np in self.nimbus_policies}
        return any(r.get("controller") and r.get("kind") == "NimbusPolicy" and r["uid"] not in uids
                   for p in self.kubearmor_policies for r in p["metadata"].get("ownerReferences") or [])

    def end_state(self) -> EndState:
        return EndState(
            {p["metadata"]["name"]: _policy(p) for p in self.kubearmor_policies},
            {np["metadata"]["name"]: {k: (np.get("status") or {}).get(k)
                                      for k in ("adapterPolicies", "numberOfAdapterPolicies")}
             for np in self.nimbus_policies},
            tuple(sorted((e["involvedObject"]["name"], e["reason"], e["message"])
                         for e in self.events
                         if (e.get("source") or {}).get("component") == COMPONENT)))

    def cache_differences(self, nimbus_policies: Any, kubearmor_policies: Any) -> list[str]:
        """How the reconciler's stores differ from these objects: (uid, resourceVersion) by
        key, and the tombstones they still keep."""
        found = []
        for resource, store, objects in (("NimbusPolicy", nimbus_policies, self.nimbus_policies),
                                         ("KubeArmorPolicy", kubearmor_policies,
                                          self.kubearmor_policies)):
            server = {f"{o['metadata']['namespace']}/{o['metadata']['name']}":
                      (o["metadata"]["uid"], o["metadata"]["resourceVersion"]) for o in objects}
            cached = {key: (value.uid, value.resource_version)
                      for key in store.list_keys() if (value := store.get(key)) is not None}
            for key in sorted(set(server) | set(cached)):
                if server.get(key) != cached.get(key):
                    found.append(f"the cache holds {resource} {key} as {cached.get(key)}, the "
                                 f"API server as {server.get(key)}")
            if store.tombstones:
                found.append(f"the {resource} cache keeps {store.tombstones} tombstones with "
                             "every event delivered")
        return found

    def touched(self, users: dict[str, str]) -> list[str]:
        """The user's policies that are gone or not at the version the user gave them."""
        versions = {p["metadata"]["name"]: p["metadata"]["resourceVersion"]
                    for p in self.kubearmor_policies}
        return [f"the user's KubeArmorPolicy {name}: resourceVersion {versions.get(name)}, the "
                f"user left it at {version}" for name, version in users.items()
                if versions.get(name) != version]


def deleted_twice(exchanges: list[Exchange]) -> list[str]:
    """DELETEs of an object (same name, same uid precondition) that one of our earlier DELETEs
    had already deleted, its answer delivered (from a recording proxy's log)."""
    done: set[tuple[str, str]] = set()
    found = []
    for exchange in sorted(exchanges, key=lambda e: e.at):
        if exchange.method != "DELETE":
            continue
        base = write_base(exchange) or ""
        try:
            uid = (json.loads(exchange.body or b"{}").get("preconditions") or {}).get("uid") or ""
        except ValueError:
            uid = ""
        target = (base, uid)
        if target in done:
            found.append(f"{key_name(base + '#')} (uid {uid}) deleted again, answered "
                         f"{exchange.status}, after an earlier DELETE of it was answered")
        delivered = exchange.done and not exchange.reset and not exchange.cancelled
        if delivered and exchange.status is not None and 200 <= exchange.status < 300:
            done.add(target)
    return found


async def writes_while_quiet(proxy: FaultProxy, seconds: float) -> list[str]:
    """Writes the reconciler makes in the next `seconds`, while nothing changes (a window of
    time by its nature; it ends at the first write)."""
    mark = len(proxy.requests(kind="write"))
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        late = proxy.requests(kind="write")[mark:]
        if late:
            return [f"{write_base(e)} written {e.at - started:.2f}s into the quiet (answered "
                    f"{e.status})" for e in late]
        await asyncio.sleep(0.1)
    return []
