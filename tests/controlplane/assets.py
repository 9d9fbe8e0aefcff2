"""Where the control plane binaries come from: KUBEBUILDER_ASSETS, else a version-keyed cache
outside the repository, filled by `go build` from the Go module proxy when empty.

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

MODULE_DIR = Path(__file__).resolve().parent
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


class AssetsError(RuntimeError):
    pass


@attrs.frozen
class Versions:
    kubernetes: str
    etcd: str

    @property
    def cache_key(self) -> str:
        return f"kubernetes-{self.kubernetes}_etcd-{self.etcd}"


@attrs.frozen
class Assets:
    directory: Path
    versions: Versions | None  # None when they came from KUBEBUILDER_ASSETS

    def binary(self, name: str) -> Path:
        path = self.directory / name
        if not os.access(path, os.X_OK):
            raise AssetsError(f"{path} is missing or not executable")
        return path


def pinned_versions(gomod: Path = MODULE_DIR / "go.mod") -> Versions:
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


def _complete(directory: Path, names: tuple[str, ...]) -> bool:
    return all(os.access(directory / n, os.X_OK) for n in names)


def locate() -> Assets | None:
    """The binaries to use, or None when they still need building."""
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
    versions = pinned_versions()
    directory = cache_root() / versions.cache_key
    return Assets(directory, versions) if _complete(directory, BINARIES) else None


def _ldflags(version: str) -> str:
    major, minor, _ = version.lstrip("v").split(".")
    build_date = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    stamped = {"gitVersion": version, "gitMajor": major, "gitMinor": minor,
               "gitTreeState": "clean", "buildDate": build_date}
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.{k}={v}" for k, v in stamped.items()]
    return " ".join(flags)


def build(log: TextIO | None = None) -> Assets:
    """Build every binary into the cache (once; concurrent callers wait on a lock)."""
    out = log or sys.stderr
    if locate() is None and shutil.which("go") is None:
        raise AssetsError("`go` is not on PATH: it is needed once to build the control plane")
    versions = pinned_versions()

    def build_into(staging: Path) -> None:
        for name in BINARIES:
            print(f"controlplane: building {name} ({versions.kubernetes}, etcd {versions.etcd}) "
                  "with go build; the first build takes several minutes", file=out, flush=True)
            started = time.monotonic()
            subprocess.run(
                ["go", "build", "-trimpath", "-ldflags", _ldflags(versions.kubernetes),
                 "-o", str(staging / name), _GO_PACKAGES[name]],
                cwd=MODULE_DIR, check=True,
                env={**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false -mod=mod"},
            )
            print(f"controlplane: built {name} in {time.monotonic() - started:.0f}s",
                  file=out, flush=True)

    return build_once(cache_root(), versions.cache_key, locate, build_into)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "build"
    try:
        if command == "build":
            print(build().directory)
        elif command == "path":
            found = locate()
            if found is None:
                print("control plane binaries not built; run `make controlplane`", file=sys.stderr)
                return 1
            print(found.directory)
        else:
            print("usage: python -m tests.controlplane.assets [build|path]", file=sys.stderr)
            return 2
    except (AssetsError, subprocess.CalledProcessError) as error:
        print(f"controlplane: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
