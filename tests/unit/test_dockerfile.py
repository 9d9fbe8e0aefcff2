"""The Dockerfile without a container engine: hadolint, the shape of the stages, and the build
stage's own commands replayed in a fresh virtualenv, which ends up with exactly the versions
uv.lock pins. (tests/e2e/test_image.py builds the image with podman and runs it.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

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


def test_the_build_stage_in_a_fresh_virtualenv_installs_exactly_the_locked_versions(
        tmp_path: Path) -> None:
    """The build stage replayed in order (COPY, RUN) with a fresh virtualenv for the base's
    python and pip: what ends up in /opt/app is what the final stage gets."""
    build, _ = stages()
    context = tmp_path / "src"
    context.mkdir()
    app = tmp_path / "app"
    builder = tmp_path / "builder"
    venv.create(builder, with_pip=True)

    def run(command: str) -> None:
        command = command.replace("/opt/app", str(app))
        result = subprocess.run(["bash", "-c", command], cwd=context, capture_output=True,
                                text=True, env={"PATH": f"{builder / 'bin'}:/usr/bin:/bin",
                                                "HOME": str(tmp_path)})
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}{result.stderr[-2000:]}"

    for keyword, rest in build:
        if keyword == "COPY":
            *sources, _ = rest.split()
            for source in sources:
                origin = REPO / source
                if origin.is_dir():
                    shutil.copytree(origin, context / source,
                                    ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(origin, context / source)
        elif keyword == "RUN":
            run(rest)
    python = str(app / "bin" / "python")
    installed = installed_versions(python)
    assert "pip" not in installed and "setuptools" not in installed, "nothing to install with"
    assert installed.pop("nimbus-kubearmor") == tomllib.loads(
        (REPO / "pyproject.toml").read_text())["project"]["version"]
    assert installed == locked_runtime_versions(context / "requirements.txt")
    assert subprocess.run([python, "-m", "reconciler", "--help"], capture_output=True,
                          cwd=tmp_path).returncode == 0
    rendered = subprocess.run([python, "-m", "reconciler", "render", "-f",
                               str(REPO / "config/samples/nimbuspolicies.yaml")],
                              capture_output=True, text=True, cwd=tmp_path)
    assert rendered.returncode == 2 and "name: web-dnsmanipulation" in rendered.stdout


def locked_runtime_versions(exported: Path) -> dict[str, str]:
    """The versions the build stage's export of uv.lock asks for here, each checked to be a
    package version in uv.lock itself."""
    text = re.sub(r"\\\n\s*", " ", exported.read_text())
    pins = {}
    for line in text.splitlines():
        line = line.split(" --hash")[0].strip()
        if line and not line.startswith("#"):
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate():
                (specifier,) = requirement.specifier
                pins[canonicalize_name(requirement.name)] = specifier.version
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    locked = {(canonicalize_name(p["name"]), p["version"]) for p in lock["package"]}
    assert set(pins.items()) <= locked, set(pins.items()) - locked
    assert {"kr8s", "aiohttp", "prometheus-client"} <= set(pins)
    return pins


def installed_versions(python: str) -> dict[str, str]:
    """Every distribution in the virtualenv of `python` (which has no pip to ask)."""
    listed = subprocess.run([python, "-c", "import importlib.metadata as m, json; print(json.dumps("
                             "{d.metadata['Name']: d.version for d in m.distributions()}))"],
                            capture_output=True, text=True, check=True).stdout
    return {canonicalize_name(name): version for name, version in json.loads(listed).items()}
