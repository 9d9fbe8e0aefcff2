"""The Dockerfile without a container engine: hadolint and the shape of the stages.
(tests/e2e/test_image.py builds the image with podman, runs it, and checks that it holds exactly
the versions uv.lock pins.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def stages() -> list[list[tuple[str, str]]]:
    """The instructions of each stage (the ARGs before the first FROM are not in any)."""
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            result.append([])
        if result:
            result[-1].append((keyword, rest))
    return result


def global_args() -> dict[str, str]:
    found = {}
    for keyword, rest in instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            found[name] = default
    return found


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_slim_non_root_nothing_to_build_or_install_with() -> None:
    # python:3.11-slim unless BASE_IMAGE says otherwise (tests/image/ builds on Debian's archive)
    assert global_args() == {"BASE_IMAGE": "python:3.11-slim"}
    build, final = stages()
    assert build[0] == ("FROM", "${BASE_IMAGE} AS build") and final[0] == ("FROM", "${BASE_IMAGE}")
    user = [rest for keyword, rest in final if keyword == "USER"]
    assert user and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", user[-1]), user
    assert [rest for keyword, rest in final if keyword == "ENTRYPOINT"] == [
        '["python", "-m", "reconciler"]']
    # Only the virtualenv crosses over, whole; the final stage runs nothing (no pip, no compiler,
    # no package manager), and its `python` is the virtualenv's.
    assert [k for k, _ in final] == ["FROM", "COPY", "ENV", "USER", "EXPOSE", "ENTRYPOINT"]
    assert dict(final)["COPY"] == "--from=build /opt/app /opt/app"
    assert dict(final)["ENV"].startswith("PATH=/opt/app/bin:$PATH ")
    # The dependencies are installed before the code is copied in: their layer outlives a change
    # to the code alone.
    order = [rest for keyword, rest in build if keyword in ("COPY", "RUN")]
    assert order.index("reconciler ./reconciler") > next(
        i for i, rest in enumerate(order) if "-r requirements.txt" in rest)
