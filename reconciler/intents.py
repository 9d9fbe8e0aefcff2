"""The intent catalogue: for each Nimbus intent ID, the KubeArmorPolicies it becomes.

Adding an intent means adding one `Intent` to CATALOGUE below; the builder, the problems, the
names and the tests' golden files all follow from it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs

from .limits import quoted
from .model import (
    CapabilityRules,
    FileRules,
    KubeArmorPolicySpec,
    MatchCapability,
    MatchDirectory,
    MatchPath,
    ProcessRules,
)


@attrs.frozen
class RuleInput:
    """What an intent's policy body may depend on."""

    action: str  # the KubeArmor action the rule's action maps to: Block or Audit
    params: Mapping[str, tuple[str, ...]]


@attrs.frozen
class SubPolicy:
    """One KubeArmorPolicy of an intent: named `<np>-<intent>` or `<np>-<intent>-<suffix>`.
    `body` returns the intent-specific spec (the builder adds selector, action and message), or
    None when the params leave nothing to enforce."""

    suffix: str | None
    body: Callable[[RuleInput], KubeArmorPolicySpec | None]


ParamCheck = Callable[[tuple[str, ...]], list[str]]  # returns one message per bad value


@attrs.frozen
class Intent:
    id: str
    policies: tuple[SubPolicy, ...]
    params: Mapping[str, ParamCheck] = attrs.field(factory=dict)


# --- the paths ----------------------------------------------------------------------------------

PACKAGE_MANAGERS = (
    "/usr/bin/apt", "/usr/bin/apt-get", "/bin/apt-get", "/bin/apt", "/sbin/apk", "/usr/bin/dpkg",
    "/bin/dpkg", "/usr/bin/gdebi", "/bin/gdebi", "/usr/bin/make", "/bin/make", "/usr/bin/yum",
    "/bin/yum", "/usr/bin/rpm", "/bin/rpm", "/usr/bin/dnf", "/bin/dnf", "/usr/bin/pacman",
    "/usr/sbin/pacman", "/bin/pacman", "/sbin/pacman", "/usr/bin/makepkg", "/usr/sbin/makepkg",
    "/bin/makepkg", "/sbin/makepkg", "/usr/bin/yaourt", "/usr/sbin/yaourt", "/bin/yaourt",
    "/sbin/yaourt", "/usr/bin/zypper", "/bin/zypper",
)
# Upstream's order; upstream lists /usr/local/bin/curl twice, we write it once.
SOFTWARE_DEPLOYMENT_TOOLS = (
    "/usr/bin/apt", "/usr/bin/apt-get", "/sbin/apk", "/bin/apt-get", "/bin/apt", "/usr/bin/dpkg",
    "/bin/dpkg", "/usr/bin/gdebi", "/bin/gdebi", "/usr/bin/make", "/bin/make", "/usr/bin/yum",
    "/bin/yum", "/usr/bin/rpm", "/bin/rpm", "/usr/bin/dnf", "/bin/dnf", "/usr/bin/pacman",
    "/usr/sbin/pacman", "/bin/pacman", "/sbin/pacman", "/usr/bin/makepkg", "/usr/sbin/makepkg",
    "/bin/makepkg", "/sbin/makepkg", "/usr/bin/yaourt", "/usr/sbin/yaourt", "/bin/yaourt",
    "/sbin/yaourt", "/usr/bin/zypper", "/bin/zypper", "/usr/bin/curl", "/bin/curl",
    "/usr/local/bin/curl", "/usr/bin/wget", "/bin/wget",
)
TEMP_AND_LOG_DIRECTORIES = ("/var/tmp/", "/tmp/", "/var/log/", "/app/logs/", "/logs/", "/etc/")
ESCAPE_CAPABILITIES = ("sys_admin", "sys_ptrace", "sys_module", "dac_read_search", "dac_override")
# Every capability name the KubeArmorPolicy schema accepts.
KNOWN_CAPABILITIES = frozenset("""
chown dac_override dac_read_search fowner fsetid kill setgid setuid setpcap linux_immutable
net_bind_service net_broadcast net_admin net_raw ipc_lock ipc_owner sys_module sys_rawio
sys_chroot sys_ptrace sys_pacct sys_admin sys_boot sys_nice sys_resource sys_time sys_tty_config
mknod lease audit_write audit_control setfcap mac_override mac_admin
""".split())
PACKAGE_MANAGER_TAGS = ("NIST", "CM-7(5)", "SI-4", "Package Manager")
PACKAGE_MANAGER_MESSAGE = "Alert! Execution of package management process inside container is detected"


def capability_name(value: str) -> str:
    """`CAP_SYS_ADMIN`, `sys_admin` and `SYS_ADMIN` all name one capability."""
    return value.strip().lower().removeprefix("cap_")


def _check_capabilities(values: tuple[str, ...]) -> list[str]:
    known = ", ".join(ESCAPE_CAPABILITIES)
    return [f"unknown capability {quoted(value)} (escapeToHost blocks {known})"
            for value in values if capability_name(value) not in KNOWN_CAPABILITIES]


# --- the bodies ---------------------------------------------------------------------------------

def _deny_paths(paths: tuple[str, ...]) -> ProcessRules:
    return ProcessRules(match_paths=tuple(MatchPath(path=p) for p in paths))


# Bodies that do not depend on the rule are built once: they are values.
_SOFTWARE_DEPLOYMENT_TOOLS = KubeArmorPolicySpec(process=_deny_paths(SOFTWARE_DEPLOYMENT_TOOLS))
_SERVICE_ACCOUNT_TOKEN = KubeArmorPolicySpec(file=FileRules(match_directories=(
    MatchDirectory(dir="/run/secrets/kubernetes.io/serviceaccount/", recursive=True),)))
_DNS_MANIPULATION = KubeArmorPolicySpec(file=FileRules(match_paths=(
    MatchPath(path="/etc/resolv.conf", read_only=True),)))
_DISALLOW_CHROOT = KubeArmorPolicySpec(process=_deny_paths(("/usr/sbin/chroot", "/sbin/chroot")))
_TEMP_OR_LOG_EXECUTION = KubeArmorPolicySpec(process=ProcessRules(
    match_directories=tuple(MatchDirectory(dir=d, recursive=True) for d in TEMP_AND_LOG_DIRECTORIES),
    action="Block"))
_PACKAGE_MANAGER_PATHS = _deny_paths(PACKAGE_MANAGERS).match_paths


def software_deployment_tools(_: RuleInput) -> KubeArmorPolicySpec:
    return _SOFTWARE_DEPLOYMENT_TOOLS


def service_account_token(_: RuleInput) -> KubeArmorPolicySpec:
    return _SERVICE_ACCOUNT_TOKEN


def dns_manipulation(_: RuleInput) -> KubeArmorPolicySpec:
    return _DNS_MANIPULATION


def disallow_chroot(_: RuleInput) -> KubeArmorPolicySpec:
    return _DISALLOW_CHROOT


def disallow_capabilities(rule: RuleInput) -> KubeArmorPolicySpec | None:
    excluded = {capability_name(c) for c in rule.params.get("exclude_caps", ())}
    kept = tuple(MatchCapability(capability=c) for c in ESCAPE_CAPABILITIES if c not in excluded)
    if not kept:
        return None
    return KubeArmorPolicySpec(capabilities=CapabilityRules(match_capabilities=kept))


def temp_or_log_execution(_: RuleInput) -> KubeArmorPolicySpec:
    return _TEMP_OR_LOG_EXECUTION


def package_managers(rule: RuleInput) -> KubeArmorPolicySpec:
    process = ProcessRules(match_paths=_PACKAGE_MANAGER_PATHS, severity=5, action=rule.action)
    return KubeArmorPolicySpec(process=process, tags=PACKAGE_MANAGER_TAGS,
                               message=PACKAGE_MANAGER_MESSAGE)


CATALOGUE: Mapping[str, Intent] = {intent.id: intent for intent in (
    Intent("swDeploymentTools", (SubPolicy(None, software_deployment_tools),)),
    Intent("unAuthorizedSaTokenAccess", (SubPolicy(None, service_account_token),)),
    Intent("dnsManipulation", (SubPolicy(None, dns_manipulation),)),
    Intent("escapeToHost", (
        SubPolicy("disallowChroot", disallow_chroot),
        SubPolicy("disallowCapabilities", disallow_capabilities),
        SubPolicy("swDeploymentTools", software_deployment_tools),
    ), params={"exclude_caps": _check_capabilities}),
    Intent("preventExecutionFromTempOrLogsFolders", (SubPolicy(None, temp_or_log_execution),)),
    Intent("pkgMgrs", (SubPolicy(None, package_managers),)),
)}
