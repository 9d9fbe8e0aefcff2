"""A base image made from Debian's archive alone, for where python:3.11-slim cannot be pulled (no
registry): Debian 12's python3 (3.11) on its Essential packages, with a virtualenv at /opt/venv
first on PATH so that `python` and `pip` are there as in the registry's image. Made by mmdebstrap
once into a cache keyed by everything that goes into it (about a minute), then imported into the
container tool's store (seconds)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

from tests.buildcache import build_once

from .tool import ContainerTool, ContainerToolError

REPOSITORY = "localhost/nimbus-kubearmor-base"
SUITE = "bookworm"
SOURCES = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)
PACKAGES = ("python3", "python3-venv", "ca-certificates")
# The Essential packages, not minbase's apt as well: nothing in the image installs packages.
# Merged /usr set up by mmdebstrap's hook (else usrmerge comes, and perl with it: 46 MB), no
# manuals, docs (but the copyright files) or translations; setuptools left out of /opt/venv
# (the project's build gets the one pyproject.toml asks for).
OPTIONS = (
    "--variant=essential",
    f"--include={','.join(PACKAGES)}",
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    *(f"--dpkgopt=path-exclude=/usr/share/{d}/*" for d in ("man", "doc", "locale", "info")),
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    '--customize-hook=chroot "$1" python3 -m venv /opt/venv',
    '--customize-hook=chroot "$1" /opt/venv/bin/pip uninstall --quiet --yes setuptools',
)
CHANGES = (
    "ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python"]',
)
TARBALL = "base.tar"


def cache_key() -> str:
    """Changes with anything that changes what the base is."""
    inputs = json.dumps([SUITE, SOURCES, OPTIONS, CHANGES]).encode()
    return hashlib.sha256(inputs).hexdigest()[:12]


def cache_root() -> Path:
    override = os.environ.get("NIMBUS_IMAGE_CACHE")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "nimbus-kubearmor" / "image"


def tarball(log: TextIO = sys.stderr) -> Path:
    """The base's root filesystem as a tar, made once (concurrent callers wait on a lock)."""
    name = f"base-{cache_key()}"

    def locate() -> Path | None:
        path = cache_root() / name / TARBALL
        return path if path.is_file() else None

    def build_into(staging: Path) -> None:
        if shutil.which("mmdebstrap") is None:
            raise ContainerToolError(
                "mmdebstrap not found: it makes the base image from Debian's archive "
                "(`apt-get install mmdebstrap`), or build on the registry's base: "
                "`make image BASE_IMAGE=python:3.11-slim`")
        print(f"image: making the base from Debian's archive with mmdebstrap ({SUITE}, "
              f"{', '.join(PACKAGES)}): about a minute, once", file=log, flush=True)
        started = time.monotonic()
        result = subprocess.run(["mmdebstrap", "--quiet", *OPTIONS, SUITE,
                                 str(staging / TARBALL), *SOURCES],
                                capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise ContainerToolError(f"mmdebstrap exited with {result.returncode}:\n"
                                     f"{result.stderr[-3000:]}")
        print(f"image: base made in {time.monotonic() - started:.0f}s", file=log, flush=True)
        for stale in cache_root().glob("base-*"):
            if stale.name != name:  # an older recipe's: nothing will use it again
                shutil.rmtree(stale, ignore_errors=True)

    return build_once(cache_root(), name, locate, build_into)


def base_image(tool: ContainerTool, log: TextIO = sys.stderr) -> str:
    """The base's reference in the tool's store, imported from the cache if it is not there."""
    reference = f"{REPOSITORY}:{cache_key()}"
    if not tool.image_exists(reference):
        changes = [flag for change in CHANGES for flag in ("--change", change)]
        tool.run("import", *changes, str(tarball(log)), reference)
    return reference
