"""The dependency versions the image's build stage installs: uv.lock exported as the Dockerfile
exports it (`uv export --frozen --no-dev --no-emit-project`), its markers evaluated for the
image's own interpreter (Debian's python may not be the host's)."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]


def uv() -> str:
    """The uv the Makefile installs (it passes its path as NIMBUS_KUBEARMOR_UV), else one on
    PATH, else the one in the Makefile's cache."""
    found = (os.environ.get("NIMBUS_KUBEARMOR_UV") or shutil.which("uv")
             or next(iter(sorted(glob.glob(os.path.expanduser(
                 "~/.cache/nimbus-kubearmor/uv-*/bin/uv")))), None))
    if not found:
        raise AssertionError("uv not found: run the tests through make (make test), which "
                             "installs it")
    return found


def export(into: Path) -> Path:
    """uv.lock's runtime requirements, as the Dockerfile's build stage exports them."""
    subprocess.run([uv(), "export", "--frozen", "--no-dev", "--no-emit-project", "--no-header",
                    "--format", "requirements.txt", "--output-file", str(into)],
                   cwd=REPO, check=True, capture_output=True,
                   env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"})
    return into


def locked_runtime_versions(exported: Path, environment: dict[str, str] | None = None
                            ) -> dict[str, str]:
    """The versions an export of uv.lock (made now if `exported` does not exist) asks for in
    `environment` (packaging's marker environment; this interpreter's if None), each checked
    to be a package version in uv.lock itself."""
    if not exported.exists():
        export(exported)
    text = re.sub(r"\\\n\s*", " ", exported.read_text())
    pins = {}
    for line in text.splitlines():
        line = line.split(" --hash")[0].strip()
        if line and not line.startswith("#"):
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                (specifier,) = requirement.specifier
                pins[canonicalize_name(requirement.name)] = specifier.version
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    locked = {(canonicalize_name(p["name"]), p["version"]) for p in lock["package"]}
    assert set(pins.items()) <= locked, set(pins.items()) - locked
    assert {"kr8s", "aiohttp", "prometheus-client"} <= set(pins)
    return pins
