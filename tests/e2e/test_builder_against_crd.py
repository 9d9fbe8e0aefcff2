"""Every policy the builder can produce is accepted by the real KubeArmorPolicy CRD."""

from __future__ import annotations

import itertools
import uuid

from reconciler import intents
from reconciler.builder import ACTIONS, desired_policies, policy_name
from reconciler.model import to_dict
from reconciler.parse import parse_nimbus_policy
from tests.controlplane.launcher import LocalControlPlane

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
