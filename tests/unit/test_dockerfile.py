"""No Docker engine exists here, so the image is checked without one: hadolint, the shape of
the stages, and the Dockerfile's own install commands run in a fresh virtualenv, which ends up
with exactly the versions uv.lock pins."""

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
    result: list[list[tuple[str, str]]] = []
    for keyword, rest in instructions():
        if keyword == "FROM":
            result.append([])
        result[-1].append((keyword, rest))
    return result


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_slim_non_root_no_compilers() -> None:
    build, final = stages()
    assert build[0][1].endswith(" AS build") and "slim" in build[0][1]
    assert "slim" in final[0][1]
    user = [rest for keyword, rest in final if keyword == "USER"]
    assert user and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", user[-1]), user
    assert [rest for keyword, rest in final if keyword == "ENTRYPOINT"] == [
        '["python", "-m", "reconciler"]']
    final_text = " ".join(rest for _, rest in final)
    assert not re.search(r"\b(gcc|g\+\+|build-essential|apt-get|apk add)\b", final_text)
    assert "from=build" in final_text  # only the wheels cross over


def _runs(stage: list[tuple[str, str]]) -> list[str]:
    return [re.sub(r"--mount=\S+\s*", "", rest) for keyword, rest in stage if keyword == "RUN"]


def test_the_dockerfiles_install_commands_work_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    build, final = stages()
    context = tmp_path / "src"
    context.mkdir()
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
    wheels = tmp_path / "wheels"
    builder, image = tmp_path / "builder", tmp_path / "image"
    for environment in (builder, image):
        venv.create(environment, with_pip=True)

    def run(command: str, environment: Path) -> None:
        command = command.replace("/wheels", str(wheels))
        result = subprocess.run(["bash", "-c", command], cwd=context, capture_output=True,
                                text=True, env={"PATH": f"{environment / 'bin'}:/usr/bin:/bin",
                                                "HOME": str(tmp_path)})
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}{result.stderr[-2000:]}"

    for command in _runs(build):
        run(command, builder)
    assert list(wheels.glob("nimbus_kubearmor-*.whl"))
    assert not list(wheels.glob("*.tar.gz")), "a dependency had no wheel: the image would compile"
    for command in _runs(final):
        run(command, image)
    python = str(image / "bin" / "python")
    assert installed_versions(python) == locked_runtime_versions(wheels / "requirements.txt")
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
    """What pip installed, but pip itself and the project."""
    listed = json.loads(subprocess.run([python, "-m", "pip", "list", "--format=json"],
                                       capture_output=True, text=True, check=True).stdout)
    return {canonicalize_name(d["name"]): d["version"] for d in listed
            if canonicalize_name(d["name"]) not in ("pip", "setuptools", "nimbus-kubearmor")}
