"""Our KubeArmorPolicies are the objects the upstream adapter writes: all five rule sections
present, `{}` where unused, for every intent; and Nimbus's dns-manipulation example gives exactly
upstream's object (the whole spec; metadata but for our extra label)."""

from __future__ import annotations

import io

import pytest
import yaml

from reconciler import intents
from reconciler.builder import ACTIONS, desired_policies
from reconciler.model import KUBEARMOR_SECTIONS, to_dict
from reconciler.names import MANAGED_BY_KEY, MANAGED_BY_VALUE
from reconciler.parse import parse_nimbus_policy
from reconciler.render import main as render_main
from tests.upstream_examples import dns_manipulation_nimbus_policy, dns_manipulation_upstream_policy

SECTIONS = ("process", "file", "network", "capabilities", "syscalls")
# What each intent fills in; every other section must be `{}`.
USED_SECTIONS = {
    "swdeploymenttools": {"process"},
    "unauthorizedsatokenaccess": {"file"},
    "dnsmanipulation": {"file"},
    "escapetohost-disallowchroot": {"process"},
    "escapetohost-disallowcapabilities": {"capabilities"},
    "escapetohost-swdeploymenttools": {"process"},
    "preventexecutionfromtemporlogsfolders": {"process"},
    "pkgmgrs": {"process"},
}


def test_the_model_names_the_five_sections() -> None:
    assert KUBEARMOR_SECTIONS == SECTIONS


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_every_policy_of_every_intent_has_the_five_sections(action: str) -> None:
    document = dns_manipulation_nimbus_policy("ns", uid="u-1")
    document["metadata"]["name"] = "np"
    document["spec"]["rules"] = [{"id": i, "rule": {"action": action}} for i in intents.CATALOGUE]
    nimbus_policy, problems = parse_nimbus_policy(document)
    assert nimbus_policy is not None and not problems
    policies, build_problems = desired_policies(nimbus_policy)
    assert not build_problems
    assert sorted(p.name.removeprefix("np-") for p in policies) == sorted(USED_SECTIONS)
    for policy in policies:
        spec = to_dict(policy)["spec"]
        used = USED_SECTIONS[policy.name.removeprefix("np-")]
        assert [s for s in SECTIONS if s in spec] == list(SECTIONS), policy.name
        assert {s for s in SECTIONS if spec[s] != {}} == used, policy.name


def test_render_prints_the_empty_sections() -> None:
    document = dns_manipulation_nimbus_policy("default", uid="u-1")
    document["spec"]["rules"].append({"id": "pkgMgrs", "rule": {"action": "Enforce"}})
    out, err = io.StringIO(), io.StringIO()
    code = render_main("-", stdout=out, stderr=err, stdin=io.StringIO(yaml.safe_dump(document)))
    assert (code, err.getvalue()) == (0, "")
    text = out.getvalue()
    for line in ("  process: {}\n", "  network: {}\n", "  capabilities: {}\n", "  syscalls: {}\n",
                 "  file: {}\n"):
        assert line in text, line
    specs = [d["spec"] for d in yaml.safe_load_all(text)]
    assert [list(s)[:6] for s in specs] == [["selector", *SECTIONS]] * 2


def test_dns_manipulation_example_is_exactly_upstreams_object() -> None:
    nimbus_policy, problems = parse_nimbus_policy(dns_manipulation_nimbus_policy("default", "u-7"))
    assert nimbus_policy is not None and not problems
    policies, build_problems = desired_policies(nimbus_policy)
    assert not build_problems
    (ours,) = [to_dict(p) for p in policies]
    upstream = dns_manipulation_upstream_policy("default", "u-7")
    assert ours["spec"] == upstream["spec"]
    # The one difference, on purpose: our label, so owned policies can be listed by selector.
    assert ours["metadata"].pop("labels") == {MANAGED_BY_KEY: MANAGED_BY_VALUE}
    assert ours == upstream
