"""Every policy the builder can produce is accepted by the real KubeArmorPolicy CRD, and reads
back exactly as built."""

from __future__ import annotations

import itertools
import uuid

from reconciler import intents
from reconciler.builder import ACTIONS, desired_policies, policy_name
from reconciler.cached import CachedPolicy, spec_digest
from reconciler.diff import drifted_fields, fingerprint
from reconciler.model import KUBEARMOR_SECTIONS, KubeArmorPolicy, to_dict
from reconciler.parse import parse_nimbus_policy
from tests.controlplane.launcher import LocalControlPlane
from tests.upstream_examples import dns_manipulation_nimbus_policy, dns_manipulation_upstream_policy

KSP = "/apis/security.kubearmor.com/v1/namespaces/default/kubearmorpolicies"


def every_buildable_policy() -> list[dict[str, object]]:
    variants = []
    exclusions = [[], ["sys_admin"], list(intents.ESCAPE_CAPABILITIES[:-1])]
    for (intent_id, action), description, selector, excluded in itertools.product(
            itertools.product(intents.CATALOGUE, ACTIONS), ["", "why: ünïcode ✓"],
            [{}, {"matchLabels": {"app": "web", "tier": "x" * 63}}], exclusions):
        params = {"exclude_caps": excluded} if excluded and intent_id == "escapeToHost" else {}
        # the longest NimbusPolicy name whose every policy name still fits in 253 characters
        name = "n" * (253 - max(len(policy_name("", i, sub.suffix))
                                for i, intent in intents.CATALOGUE.items() for sub in intent.policies))
        document = {"metadata": {"name": name, "namespace": "default", "uid": str(uuid.uuid4())},
                    "spec": {"selector": selector, "rules": [{
                        "id": intent_id, "description": description,
                        "rule": {"action": action, "params": params}}]}}
        policy, problems = parse_nimbus_policy(document)
        assert policy is not None and not problems
        built, build_problems = desired_policies(policy)
        assert built and not build_problems
        variants += [to_dict(p) for p in built]
    return variants


def test_every_buildable_policy_passes_server_side_validation(
        control_plane: LocalControlPlane) -> None:
    policies = every_buildable_policy()
    assert len(policies) >= 200
    with control_plane.client() as client:
        for policy in policies:
            response = client.post(KSP, params={"dryRun": "All"}, json=policy)
            assert response.status_code == 201, (policy["metadata"], response.text)
            stored = response.json()
            assert stored["spec"] == policy["spec"], "the server pruned or defaulted our output"
        assert client.get(KSP).json()["items"] == [], "dry run must not persist"


def test_every_intent_reads_back_exactly_as_built(control_plane: LocalControlPlane,
                                                  namespace: str) -> None:
    """What we send is what the server stores and returns, the empty sections included, so the
    controller's drift check (digest of our rendered spec vs digest of the spec read back) sees
    no drift in steady state. And upstream's object for the same intent differs from ours only
    by our label."""
    nimbus = f"/apis/intent.security.nimbus.com/v1alpha1/namespaces/{namespace}/nimbuspolicies"
    ksp = f"/apis/security.kubearmor.com/v1/namespaces/{namespace}/kubearmorpolicies"
    rules = [{"id": i, "description": "why" if i == "escapeToHost" else "",
              "rule": {"action": "Block"}} for i in intents.CATALOGUE]
    document = dns_manipulation_nimbus_policy(namespace)
    with control_plane.client() as client:
        # Real owners, so the garbage collector leaves the policies alone.
        every_intent = {**document, "metadata": {"name": "np", "namespace": namespace},
                        "spec": {"selector": {}, "rules": rules}}
        created = [client.post(nimbus, json=d) for d in (every_intent, document)]
        assert [r.status_code for r in created] == [201, 201], created[-1].text
        built: list[KubeArmorPolicy] = []
        for response in created:
            parsed, problems = parse_nimbus_policy(response.json())
            assert parsed is not None and not problems
            policies, build_problems = desired_policies(parsed)
            assert not build_problems
            built += policies
        assert len(built) == 9
        for policy in built:
            response = client.post(ksp, json=to_dict(policy))
            assert response.status_code == 201, response.text
        listed = {p["metadata"]["name"]: p for p in client.get(ksp).json()["items"]}
        for policy in built:
            read = client.get(f"{ksp}/{policy.name}").json()
            assert read["spec"] == to_dict(policy)["spec"], policy.name
            assert [s for s in KUBEARMOR_SECTIONS if s in read["spec"]] == list(KUBEARMOR_SECTIONS)
            # What the controller does: our fingerprint against the cached (digested) object.
            wanted = fingerprint(to_dict(policy))
            assert spec_digest(read["spec"]) == wanted.spec_digest
            assert drifted_fields(wanted, CachedPolicy.from_json(listed[policy.name])) == ()

        ours = next(p for p in built if p.name == "dns-manipulation-binding-dnsmanipulation")
        client.delete(f"{ksp}/{ours.name}").raise_for_status()
        upstream = dns_manipulation_upstream_policy(namespace, ours.metadata.owner_references[0].uid)
        response = client.post(ksp, json=upstream)
        assert response.status_code == 201, response.text
        stored = client.get(f"{ksp}/{ours.name}").json()
        assert stored["spec"] == to_dict(ours)["spec"]
        assert drifted_fields(fingerprint(to_dict(ours)),
                              CachedPolicy.from_json(stored)) == ("labels",)
