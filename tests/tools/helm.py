"""Helm for the chart tests: `go install helm.sh/helm/v3/cmd/helm@VERSION` from the Go module
proxy (with the dependency versions of helm's own go.mod, as its release is built), stamped the
way helm's Makefile stamps a release, into a version-keyed cache beside the control plane's:
`~/.cache/nimbus-kubearmor/tools/helm-<version>/helm` (override with NIMBUS_TOOLS_CACHE). Built
once; concurrent callers wait on a file lock; reused when present.

    python -m tests.tools.helm build   # build if absent, print the binary's path
    python -m tests.tools.helm path    # print the binary's path, fail if not built
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

from tests.buildcache import build_once

MODULE = "helm.sh/helm/v3"
VERSION = "v3.22.0"


class HelmBuildError(RuntimeError):
    pass


def cache_root() -> Path:
    override = os.environ.get("NIMBUS_TOOLS_CACHE")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nimbus-kubearmor" / "tools"


def binary_path() -> Path:
    return cache_root() / f"helm-{VERSION}" / "helm"


def locate() -> Path | None:
    path = binary_path()
    return path if os.access(path, os.X_OK) else None


def _go_env() -> dict[str, str]:
    # GOFLAGS from the caller (e.g. -mod=mod) would make `go install pkg@version` refuse to run.
    return {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"}


def _kubernetes_version() -> tuple[str, str]:
    """The Kubernetes version helm's client-go is from (v0.37.x -> 1.37): helm's Makefile stamps
    it as the default for `helm template` and the deprecation lint."""
    download = subprocess.run(["go", "mod", "download", "-json", f"{MODULE}@{VERSION}"],
                              capture_output=True, text=True, check=True, env=_go_env())
    gomod = Path(json.loads(download.stdout)["GoMod"]).read_text()
    match = re.search(r"^\s*k8s\.io/client-go v0\.(\d+)\.", gomod, re.M)
    if match is None:
        raise HelmBuildError(f"{MODULE}@{VERSION}'s go.mod requires no k8s.io/client-go")
    return "1", match.group(1)


def _ldflags() -> str:
    major, minor = _kubernetes_version()
    stamps = {
        "internal/version.version": VERSION,
        "internal/version.metadata": "",  # a release: no "+unreleased"
        "internal/version.gitTreeState": "clean",
        "pkg/lint/rules.k8sVersionMajor": major,
        "pkg/lint/rules.k8sVersionMinor": minor,
        "pkg/chartutil.k8sVersionMajor": major,
        "pkg/chartutil.k8sVersionMinor": minor,
    }
    return " ".join(["-s", "-w", *(f"-X {MODULE}/{key}={value}" for key, value in stamps.items())])


def installed_version(helm: Path) -> str:
    return subprocess.run([str(helm), "version", "--template", "{{.Version}}"], capture_output=True,
                          text=True, check=True).stdout.strip()


def build(log: TextIO | None = None) -> Path:
    """The helm binary, built into the cache first if it is not there."""
    out = log or sys.stderr
    if locate() is None and shutil.which("go") is None:
        raise HelmBuildError("`go` is not on PATH: it is needed once to build helm")

    def build_into(staging: Path) -> None:
        print(f"tools: building helm {VERSION} with go install (once: about 2-3 minutes)",
              file=out, flush=True)
        started = time.monotonic()
        subprocess.run(["go", "install", "-trimpath", "-ldflags", _ldflags(),
                        f"{MODULE}/cmd/helm@{VERSION}"],
                       check=True, cwd=staging, env={**_go_env(), "GOBIN": str(staging)})
        version = installed_version(staging / "helm")
        if version != VERSION:
            raise HelmBuildError(f"built helm says it is {version!r}, not {VERSION}")
        print(f"tools: built helm {version} in {time.monotonic() - started:.0f}s",
              file=out, flush=True)

    return build_once(cache_root(), binary_path().parent.name, locate, build_into)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "build"
    try:
        if command == "build":
            print(build())
        elif command == "path":
            found = locate()
            if found is None:
                print("helm not built; run `make tools`", file=sys.stderr)
                return 1
            print(found)
        else:
            print("usage: python -m tests.tools.helm [build|path]", file=sys.stderr)
            return 2
    except (HelmBuildError, subprocess.CalledProcessError) as error:
        print(f"tools: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
