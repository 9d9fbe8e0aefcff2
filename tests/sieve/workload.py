"""The reference workload: what a user and the Nimbus core do in one namespace, step by step,
each step waiting until the cluster is as the pure builder says before the next one starts (so
the end state is unique, and a point of one run is the same point in every other run).

Before the reconciler starts: a SecurityIntentBinding, np-a, and a user's own KubeArmorPolicy
holding a name np-b will need. Then:

  1 create np-b         three policies, one name held by the user (NameTaken), a bad rule
  2 change np-a's rules one policy deleted, one created
  3 edit a policy       someone else changes np-b-escapetohost-disallowchroot: repaired
  4 delete a policy     someone else deletes np-a-dnsmanipulation: recreated
  5 give a name back    the user deletes their policy: np-b gets its fourth
  6 create np-c         one of its names held by a new policy of the user's
  7 delete np-a         the garbage collector removes its policies
  8 create np-a again   the same name, a new uid, other rules
  9 delete np-c         the user's policy stays, untouched

Users' objects are checked untouched by resourceVersion: the user deletes theirs with a
resourceVersion precondition, and the one left at the end must still have the version the
user gave it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from tests.e2e.nimbus import create_binding, create_nimbus_policy, kubearmor_policies, nimbus_policies, rule

MERGE = {"Content-Type": "application/merge-patch+json"}
Action = Callable[[], Awaitable[None]]


class Workload:
    def __init__(self, api: httpx.AsyncClient, namespace: str) -> None:
        self.api, self.namespace = api, namespace
        self.binding: dict[str, Any] = {}
        # The user's own KubeArmorPolicies, by name: the resourceVersion they gave each.
        self.users: dict[str, str] = {}
        # Something the workload found wrong on the way (a user's object changed by someone).
        self.problems: list[str] = []

    def steps(self) -> list[tuple[str, Action]]:
        return [("create np-b", self.create_np_b), ("change np-a's rules", self.change_np_a),
                ("edit a policy of np-b", self.edit_policy), ("delete a policy of np-a",
                                                               self.delete_policy),
                ("give np-b its name back", self.give_name_back),
                ("create np-c, a name taken", self.create_np_c), ("delete np-a", self.delete_np_a),
                ("create np-a again", self.create_np_a_again), ("delete np-c", self.delete_np_c)]

    # --- before the reconciler starts -----------------------------------------------------------

    async def setup(self) -> None:
        self.binding = await create_binding(self.api, self.namespace, "sieve", ["dnsManipulation"])
        await self.take_name("np-b-unauthorizedsatokenaccess")
        await self.create("np-a", [rule("dnsManipulation"), rule("swDeploymentTools", "Audit")])

    # --- the steps ------------------------------------------------------------------------------

    async def create_np_b(self) -> None:
        await self.create("np-b", [rule("unAuthorizedSaTokenAccess"),
                                   rule("escapeToHost", "Audit", exclude_caps=["sys_admin"]),
                                   rule("noSuchIntent")])

    async def change_np_a(self) -> None:
        await self.patch(f"{nimbus_policies(self.namespace)}/np-a", {"spec": {"rules": [
            rule("dnsManipulation"), rule("preventExecutionFromTempOrLogsFolders", "Audit")]}})

    async def edit_policy(self) -> None:
        await self.patch(f"{kubearmor_policies(self.namespace)}/np-b-escapetohost-disallowchroot",
                         {"spec": {"action": "Audit", "message": "edited"}})

    async def delete_policy(self) -> None:
        await self.delete(f"{kubearmor_policies(self.namespace)}/np-a-dnsmanipulation")

    async def give_name_back(self) -> None:
        await self.give_back("np-b-unauthorizedsatokenaccess")

    async def create_np_c(self) -> None:
        await self.take_name("np-c-pkgmgrs")
        await self.create("np-c", [rule("pkgMgrs"), rule("dnsManipulation")])

    async def delete_np_a(self) -> None:
        await self.delete(f"{nimbus_policies(self.namespace)}/np-a")

    async def create_np_a_again(self) -> None:
        await self.create("np-a", [rule("swDeploymentTools")])

    async def delete_np_c(self) -> None:
        await self.delete(f"{nimbus_policies(self.namespace)}/np-c")

    # --- what the user does ---------------------------------------------------------------------

    async def create(self, name: str, rules: list[dict[str, Any]]) -> None:
        await create_nimbus_policy(self.api, self.namespace, name, rules, owner=self.binding)

    async def patch(self, path: str, patch: dict[str, Any]) -> None:
        (await self.api.patch(path, content=json.dumps(patch), headers=MERGE)).raise_for_status()

    async def delete(self, path: str) -> None:
        (await self.api.delete(path)).raise_for_status()

    async def take_name(self, name: str) -> None:
        """A policy of the user's own (no controller, not our label) with a name we need."""
        response = await self.api.post(kubearmor_policies(self.namespace), json={
            "apiVersion": "security.kubearmor.com/v1", "kind": "KubeArmorPolicy",
            "metadata": {"name": name, "labels": {"owner": "user"}},
            "spec": {"selector": {"matchLabels": {"app": "user"}},
                     "file": {"matchPaths": [{"path": "/user"}]}, "action": "Audit"}})
        response.raise_for_status()
        self.users[name] = response.json()["metadata"]["resourceVersion"]

    async def give_back(self, name: str) -> None:
        """Delete the user's policy, only if nobody changed it since the user wrote it."""
        version = self.users.pop(name)
        response = await self.api.request(
            "DELETE", f"{kubearmor_policies(self.namespace)}/{name}",
            json={"kind": "DeleteOptions", "apiVersion": "v1",
                  "preconditions": {"resourceVersion": version}})
        if response.status_code == 409:
            self.problems.append(f"the user's {name} was changed by someone: "
                                 f"{response.json().get('message')}")
            (await self.api.delete(f"{kubearmor_policies(self.namespace)}/{name}")
             ).raise_for_status()
        else:
            response.raise_for_status()
