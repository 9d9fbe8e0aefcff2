"""Where the control plane binaries come from: KUBEBUILDER_ASSETS, else a cache outside the
repository with one directory per Kubernetes release, filled when empty by `go build` from the Go
module proxy, in a module generated for that release (gen_gomod.py) and kept beside the binaries:

    ~/.cache/nimbus-kubearmor/controlplane/kubernetes-v1.37.2/
        etcd  kube-apiserver  kube-controller-manager  kubectl
        module/go.mod  module/go.sum  module/cmd/etcd/   (what they were built from)

The release is $KUBERNETES_VERSION, else the newest supported one (versions.py).

    python -m tests.controlplane.assets build   # build if absent, print the directory
    python -m tests.controlplane.assets path    # print the directory, fail if not built
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

import attrs

from tests.buildcache import build_once

from . import gen_gomod, versions

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
# envtest's asset bundles ship no kube-controller-manager or kubectl; we cannot do without the
# garbage collector, so we ask for it explicitly rather than silently testing without it.
REQUIRED_FROM_KUBEBUILDER_ASSETS = ("etcd", "kube-apiserver", "kube-controller-manager")
_GO_PACKAGES = {
    "etcd": "./cmd/etcd",
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
}
MODULE_SUBDIRECTORY = "module"


class AssetsError(RuntimeError):
    pass


@attrs.frozen
class Versions:
    kubernetes: str
    etcd: str


@attrs.frozen
class Assets:
    directory: Path
    versions: Versions | None  # None when they came from KUBEBUILDER_ASSETS

    def binary(self, name: str) -> Path:
        path = self.directory / name
        if not os.access(path, os.X_OK):
            raise AssetsError(f"{path} is missing or not executable")
        return path


def module_versions(gomod: Path) -> Versions:
    """The Kubernetes and etcd versions a generated module builds."""
    text = gomod.read_text()

    def version_of(module: str) -> str:
        match = re.search(rf"^\s*(?:require\s+)?{re.escape(module)}\s+(v\S+)", text, re.M)
        if match is None:
            raise AssetsError(f"{gomod} does not require {module}")
        return match.group(1)

    return Versions(version_of("k8s.io/kubernetes"), version_of("go.etcd.io/etcd/server/v3"))


def cache_root() -> Path:
    override = os.environ.get("NIMBUS_CONTROLPLANE_CACHE")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nimbus-kubearmor" / "controlplane"


def cache_key(kubernetes: str) -> str:
    return f"kubernetes-{kubernetes}"


def _complete(directory: Path, names: tuple[str, ...]) -> bool:
    return all(os.access(directory / n, os.X_OK) for n in names)


def locate(kubernetes: str | None = None) -> Assets | None:
    """The binaries to use (of `kubernetes`, by default the requested release), or None when
    they still need building."""
    kubebuilder = os.environ.get("KUBEBUILDER_ASSETS")
    if kubebuilder:
        directory = Path(kubebuilder)
        missing = [n for n in REQUIRED_FROM_KUBEBUILDER_ASSETS if not os.access(directory / n, os.X_OK)]
        if missing:
            raise AssetsError(
                f"KUBEBUILDER_ASSETS={directory} lacks {', '.join(missing)} "
                "(the tests need the garbage collector in kube-controller-manager); "
                "unset it to build everything with `make controlplane`"
            )
        return Assets(directory, None)
    directory = cache_root() / cache_key(kubernetes or versions.requested())
    if not _complete(directory, BINARIES):
        return None
    return Assets(directory, module_versions(directory / MODULE_SUBDIRECTORY / "go.mod"))


def _ldflags(version: str) -> str:
    major, minor, _ = version.lstrip("v").split(".")
    build_date = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    stamped = {"gitVersion": version, "gitMajor": major, "gitMinor": minor,
               "gitTreeState": "clean", "buildDate": build_date}
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.{k}={v}" for k, v in stamped.items()]
    return " ".join(flags)


def build(log: TextIO | None = None, kubernetes: str | None = None) -> Assets:
    """Build every binary of `kubernetes` (by default the requested release) into the cache
    (once; concurrent callers wait on a lock)."""
    out = log or sys.stderr
    release = kubernetes or versions.requested()
    if locate(release) is None and shutil.which("go") is None:
        raise AssetsError("`go` is not on PATH: it is needed once to build the control plane")

    def build_into(staging: Path) -> None:
        module = staging / MODULE_SUBDIRECTORY
        print(f"controlplane: generating the Go module for Kubernetes {release} "
              f"(gen_gomod.py, into {cache_root() / cache_key(release) / MODULE_SUBDIRECTORY})",
              file=out, flush=True)
        for note in gen_gomod.write_module(release, module):
            print(f"controlplane: {note}", file=out, flush=True)
        etcd = module_versions(module / "go.mod").etcd
        for name in BINARIES:
            print(f"controlplane: building {name} ({release}, etcd {etcd}) with go build; "
                  "the first build takes several minutes", file=out, flush=True)
            started = time.monotonic()
            subprocess.run(
                ["go", "build", "-trimpath", "-ldflags", _ldflags(release),
                 "-o", str(staging / name), _GO_PACKAGES[name]],
                cwd=module, check=True, env=gen_gomod.go_env(),
            )
            print(f"controlplane: built {name} in {time.monotonic() - started:.0f}s",
                  file=out, flush=True)

    return build_once(cache_root(), cache_key(release), lambda: locate(release), build_into)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "build"
    try:
        if command == "build":
            print(build().directory)
        elif command == "path":
            found = locate()
            if found is None:
                print(f"control plane binaries of Kubernetes {versions.requested()} not built; "
                      "run `make controlplane`", file=sys.stderr)
                return 1
            print(found.directory)
        else:
            print("usage: python -m tests.controlplane.assets [build|path]", file=sys.stderr)
            return 2
    except (AssetsError, versions.VersionError, gen_gomod.GoModError,
            subprocess.CalledProcessError) as error:
        print(f"controlplane: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
