"""The objects we read and write, as frozen values, and their conversion to and from the JSON the
API server speaks (camelCase names; unknown input fields ignored; no nulls, and no empty defaults
but the ones upstream writes too, so what we send is exactly what the server stores and a drift
check can compare dicts)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from .names import KUBEARMOR_API_VERSION, NIMBUS_API_VERSION

# --- shared metadata ----------------------------------------------------------------------------

@attrs.frozen
class OwnerReference:
    api_version: str
    kind: str
    name: str
    uid: str = ""
    controller: bool | None = None
    block_owner_deletion: bool | None = None


@attrs.frozen
class ObjectMeta:
    name: str = ""
    namespace: str = ""
    uid: str = ""
    resource_version: str = ""
    generation: int = 0
    labels: dict[str, str] = attrs.field(factory=dict)
    annotations: dict[str, str] = attrs.field(factory=dict)
    owner_references: tuple[OwnerReference, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@attrs.frozen
class LabelSelector:
    match_labels: dict[str, str] = attrs.field(factory=dict)


# --- NimbusPolicy (input) -----------------------------------------------------------------------

@attrs.frozen
class IntentRule:
    action: str
    params: dict[str, tuple[str, ...]] = attrs.field(factory=dict)


@attrs.frozen
class NimbusRule:
    id: str
    rule: IntentRule
    type: str = ""
    description: str = ""


@attrs.frozen
class NimbusPolicySpec:
    selector: LabelSelector = attrs.field(factory=LabelSelector)
    rules: tuple[NimbusRule, ...] = ()


@attrs.frozen
class NimbusPolicyStatus:
    status: str = ""
    last_updated: str | None = None
    number_of_adapter_policies: int = 0
    adapter_policies: tuple[str, ...] = ()


@attrs.frozen
class NimbusPolicy:
    metadata: ObjectMeta
    spec: NimbusPolicySpec
    status: NimbusPolicyStatus | None = None
    api_version: str = NIMBUS_API_VERSION
    kind: str = "NimbusPolicy"

    @property
    def key(self) -> str:
        return self.metadata.key


# --- KubeArmorPolicy (output) -------------------------------------------------------------------

@attrs.frozen
class Source:
    path: str


@attrs.frozen(kw_only=True)
class Annotations:
    """What every KubeArmor match rule and section may carry besides what it matches.
    Keyword-only, so the classes below keep their own mandatory first field."""

    severity: int | None = None
    tags: tuple[str, ...] = ()
    message: str | None = None
    action: str | None = None


@attrs.frozen
class MatchPath(Annotations):
    path: str
    read_only: bool | None = None
    owner_only: bool | None = None
    from_source: tuple[Source, ...] = ()


@attrs.frozen
class MatchDirectory(Annotations):
    dir: str
    recursive: bool | None = None
    read_only: bool | None = None
    owner_only: bool | None = None
    from_source: tuple[Source, ...] = ()


@attrs.frozen
class MatchPattern(Annotations):
    pattern: str
    read_only: bool | None = None
    owner_only: bool | None = None


@attrs.frozen
class PathRules(Annotations):
    """The process and file sections match the same ways."""

    match_paths: tuple[MatchPath, ...] = ()
    match_directories: tuple[MatchDirectory, ...] = ()
    match_patterns: tuple[MatchPattern, ...] = ()


@attrs.frozen
class ProcessRules(PathRules):
    """Executions to match."""


@attrs.frozen
class FileRules(PathRules):
    """File accesses to match."""


@attrs.frozen
class MatchProtocol(Annotations):
    protocol: str
    from_source: tuple[Source, ...] = ()


@attrs.frozen
class NetworkRules(Annotations):
    match_protocols: tuple[MatchProtocol, ...] = ()


@attrs.frozen
class MatchCapability(Annotations):
    capability: str
    from_source: tuple[Source, ...] = ()


@attrs.frozen
class CapabilityRules(Annotations):
    match_capabilities: tuple[MatchCapability, ...] = ()


@attrs.frozen
class MatchSyscall:
    syscall: tuple[str, ...] = ()
    from_source: tuple[Source, ...] = ()


@attrs.frozen
class SyscallRules:
    match_syscalls: tuple[MatchSyscall, ...] = ()
    severity: int | None = None
    tags: tuple[str, ...] = ()
    message: str | None = None


@attrs.frozen
class KubeArmorPolicySpec:
    """The five rule sections are values, never absent: an unused one is written as `{}`, as the
    upstream adapter's objects read back (its Go structs are not pointers), so both adapters'
    policies are the same objects."""

    selector: LabelSelector = attrs.field(factory=LabelSelector)
    process: ProcessRules = attrs.field(factory=ProcessRules)
    file: FileRules = attrs.field(factory=FileRules)
    network: NetworkRules = attrs.field(factory=NetworkRules)
    capabilities: CapabilityRules = attrs.field(factory=CapabilityRules)
    syscalls: SyscallRules = attrs.field(factory=SyscallRules)
    severity: int | None = None
    tags: tuple[str, ...] = ()
    message: str | None = None
    action: str | None = None


@attrs.frozen
class KubeArmorPolicy:
    metadata: ObjectMeta
    spec: KubeArmorPolicySpec
    api_version: str = KUBEARMOR_API_VERSION
    kind: str = "KubeArmorPolicy"

    @property
    def name(self) -> str:
        return self.metadata.name


# --- conversion ---------------------------------------------------------------------------------

_CAMEL = re.compile(r"_([a-z])")
T = TypeVar("T")


def camel(name: str) -> str:
    return _CAMEL.sub(lambda m: m.group(1).upper(), name)


converter = cattrs.Converter()


def _is_model(cls: Any) -> bool:
    return attrs.has(cls) and cls.__module__ == __name__


def _structure_factory(cls: Any) -> Any:
    renames = {a.name: override(rename=camel(a.name)) for a in attrs.fields(cls)}
    structure_fields = make_dict_structure_fn(cls, converter, **renames)  # type: ignore[arg-type]

    def structure(value: Any, type_: Any) -> Any:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected an object, got {type(value).__name__}")
        return structure_fields(value, type_)

    return structure


# Written even when they equal their defaults: apiVersion and kind always; a policy's selector
# always, since an empty `matchLabels: {}` (namespace-wide) should read as meant, not forgotten.
_ALWAYS_WRITTEN = {"api_version", "kind", "selector", "match_labels"}
# A KubeArmorPolicy spec's five sections, always written (`{}` when unused) as upstream does.
KUBEARMOR_SECTIONS = ("process", "file", "network", "capabilities", "syscalls")


def _unstructure_factory(cls: Any) -> Any:
    always = _ALWAYS_WRITTEN | (set(KUBEARMOR_SECTIONS) if cls is KubeArmorPolicySpec else set())
    renames = {a.name: override(rename=camel(a.name), omit_if_default=a.name not in always)
               for a in attrs.fields(cls)}
    return make_dict_unstructure_fn(cls, converter, **renames)  # type: ignore[arg-type]


converter.register_structure_hook_factory(_is_model, _structure_factory)
converter.register_unstructure_hook_factory(_is_model, _unstructure_factory)
# Kubernetes serialises an absent map as null sometimes (e.g. `labels: null` from some clients).
converter.register_structure_hook_func(
    lambda t: t == dict[str, str],
    lambda v, _: {} if v is None else {str(k): str(x) for k, x in _mapping(v).items()})


def _mapping(value: Any) -> Mapping[Any, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a map of strings, got {type(value).__name__}")
    return value


def prepare_conversions() -> None:
    """Generate every model's conversion functions now. cattrs makes each the first time it is
    needed (code generated and compiled: 30-50 ms for them all here), which in a running
    controller is while the first NimbusPolicies are converted, every watch, probe and Lease
    renewal waiting meanwhile. A long-running process calls this before it starts serving;
    `--once` does not (its first request would wait for it)."""
    models = [value for value in globals().values() if isinstance(value, type) and _is_model(value)]
    # Twice: making a hook for a list or a map clears cattrs' dispatch cache, so some made in
    # the first pass are made again at their next use; after the second, none is.
    for _ in range(2):
        for model in models:
            converter.get_structure_hook(model)
            converter.get_unstructure_hook(model)


def to_dict(value: Any) -> dict[str, Any]:
    """The JSON form of a model, as the API server would store it."""
    data: dict[str, Any] = converter.unstructure(value)
    if "apiVersion" in data:  # first, as kubectl prints them
        data = {"apiVersion": data.pop("apiVersion"), "kind": data.pop("kind"), **data}
    return data


def from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Raises cattrs.ClassValidationError; see `parse_errors` for readable field paths."""
    return converter.structure(data, cls)


def parse_errors(error: Exception, root: str) -> list[str]:
    """`spec.rules[0].id: required field missing`-style messages for a structuring error."""
    readable = []
    for message in cattrs.transform_error(error, path="$"):
        text, _, where = message.rpartition(" @ ")
        parts = [camel(part) for part in where.removeprefix("$").split(".") if part]
        readable.append(f"{'.'.join([root, *parts])}: {text}")
    return readable
