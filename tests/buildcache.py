"""Tools the tests need (the control plane's binaries, helm) are built from the Go module proxy
once into a version-keyed directory of a cache outside the repository: built into a staging
directory under a file lock (concurrent callers wait, then find it there), moved into place only
when complete, so a build cut short leaves nothing that looks finished."""

from __future__ import annotations

import fcntl
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def build_once(root: Path, name: str, locate: Callable[[], T | None],
               build_into: Callable[[Path], None]) -> T:
    """What `locate()` finds; if nothing, `build_into(staging)` fills a fresh directory that
    then becomes `root/name`, and `locate()` finds that."""
    found = locate()
    if found is not None:
        return found
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = locate()
        if found is not None:
            return found  # another process built it while this one waited
        final = root / name
        staging = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
        try:
            build_into(staging)
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    found = locate()
    if found is None:
        raise RuntimeError(f"{final} was built but is not complete")
    return found
