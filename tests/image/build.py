"""The project's image from its Dockerfile on a base (BASE_IMAGE). The tests' image is tagged by a
digest of everything that goes into it, so an unchanged tree reuses it (a warm run costs a
fraction of a second) and a change builds again (the dependencies' layer reused: seconds)."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path
from typing import TextIO

from .base import base_image
from .tool import ContainerTool

REPO = Path(__file__).resolve().parents[2]
TEST_REPOSITORY = "localhost/nimbus-kubearmor-test"
# What the host's pip needs to reach PyPI (a CA bundle with a proxy's CA, an index): mounted
# read-only into the build's RUN steps, never into the image (podman only: docker build has no -v).
HOST_PIP_FILES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pip.conf")
KEEP_OTHER_TEST_IMAGES = 3600.0  # seconds: another checkout's test run may be about to use one


def context_files() -> list[Path]:
    """The Dockerfile, .dockerignore and the files it lets into the build (its `!` lines)."""
    ignore = REPO / ".dockerignore"
    files = [REPO / "Dockerfile", ignore]
    for line in ignore.read_text().splitlines():
        if line.startswith("!"):
            included = REPO / line[1:].strip().rstrip("/")
            files += sorted(p for p in included.rglob("*") if p.is_file()
                            and "__pycache__" not in p.parts) if included.is_dir() else [included]
    return files


def context_digest(base: str) -> str:
    digest = hashlib.sha256(base.encode())
    for path in context_files():
        digest.update(f"\0{path.relative_to(REPO)}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def build(tool: ContainerTool, base: str | None, tag: str, log: TextIO = sys.stderr) -> None:
    """`base` None: the Dockerfile's own (python:3.11-slim)."""
    flags = ["--build-arg", f"BASE_IMAGE={base}"] if base else []
    if tool.podman:
        flags += ["--network", "host", *tool.ulimits()]
        flags += [f"--volume={path}:{path}:ro" for path in HOST_PIP_FILES if Path(path).is_file()]
    print(f"image: building {tag} on {base or 'the Dockerfile base'}", file=log, flush=True)
    started = time.monotonic()
    tool.run("build", *flags, "--tag", tag, "--file", str(REPO / "Dockerfile"), str(REPO),
             timeout=1200)
    print(f"image: built {tag} in {time.monotonic() - started:.0f}s", file=log, flush=True)


def image_under_test(tool: ContainerTool, log: TextIO = sys.stderr) -> str:
    """The image of this tree on the Debian base, built unless it already is."""
    base = base_image(tool, log)
    tag = f"{TEST_REPOSITORY}:{context_digest(base)}"
    if not tool.image_exists(tag):
        build(tool, base, tag, log)
        _remove_old_test_images(tool, keep=tag)
    return tag


def _remove_old_test_images(tool: ContainerTool, keep: str) -> None:
    """Earlier trees' test images (an hour old: another checkout may be testing with one)."""
    listed = tool.run("images", "--filter", f"reference={TEST_REPOSITORY}", "--format", "json",
                      check=False)
    if listed.returncode != 0 or not listed.stdout.strip():
        return
    for image in json.loads(listed.stdout):
        names = image.get("Names") or []
        age = time.time() - float(image.get("Created", 0))
        if names and keep not in names and age > KEEP_OTHER_TEST_IMAGES:
            tool.run("rmi", *names, check=False)
