"""The container tool (podman; docker, where an engine runs, if `make image`'s CONTAINER_TOOL
says so), with what this kind of machine needs: runc (crun refuses its hybrid cgroups) and the
ulimits this process has (podman's default nofile and nproc are more than the sandbox grants, and
runc then fails to start the container)."""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
from pathlib import Path
from typing import Any


class ContainerToolError(RuntimeError):
    pass


class ContainerTool:
    def __init__(self, name: str = "podman") -> None:
        if shutil.which(name) is None:
            raise ContainerToolError(
                f"{name} not found: install Debian's podman, mmdebstrap and runc "
                "(`apt-get install podman mmdebstrap runc`; .ci/run and `make test` do it when "
                "missing)")
        self.name = name
        self.podman = name == "podman"

    def command(self, *args: str) -> list[str]:
        runtime = ["--runtime", "runc"] if self.podman and shutil.which("runc") else []
        return [self.name, *runtime, *args]

    def run(self, *args: str, check: bool = True,
            timeout: float | None = 600) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.command(*args), text=True, timeout=timeout,
                                capture_output=True, stdin=subprocess.DEVNULL)
        if check and result.returncode != 0:
            raise ContainerToolError(f"{' '.join(self.command(*args))} exited with "
                                     f"{result.returncode}:\n{(result.stderr or '')[-3000:]}")
        return result

    def ulimits(self) -> list[str]:
        """--ulimit flags for no more than this process may have: podman's defaults (a million
        of each) are more, and runc, which may not raise a limit here, fails to start the
        container. Processes also no more than there are pids: podman holds itself, so conmon
        and the container, to that."""
        if not self.podman:
            return []
        flags = []
        for name, which in (("nofile", resource.RLIMIT_NOFILE), ("nproc", resource.RLIMIT_NPROC)):
            ceiling = _pid_max() if which == resource.RLIMIT_NPROC else resource.RLIM_INFINITY
            soft, hard = (_lesser(value, ceiling) for value in resource.getrlimit(which))
            if hard != resource.RLIM_INFINITY:  # else podman's default is within it
                flags += ["--ulimit", f"{name}={soft}:{hard}"]
        return flags

    def image_exists(self, reference: str) -> bool:
        return self.run("image", "inspect", reference, check=False).returncode == 0

    def inspect_image(self, reference: str) -> dict[str, Any]:
        inspected: list[dict[str, Any]] = json.loads(
            self.run("image", "inspect", reference).stdout)
        return inspected[0]

    def image_size(self, reference: str) -> int:
        """Bytes the image takes unpacked, every layer counted (what `podman images` shows)."""
        return int(self.inspect_image(reference)["Size"])


def _pid_max() -> int:
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        return resource.RLIM_INFINITY


def _lesser(a: int, b: int) -> int:
    """The lower of two limits, RLIM_INFINITY above every number."""
    if a == resource.RLIM_INFINITY:
        return b
    return a if b == resource.RLIM_INFINITY else min(a, b)
