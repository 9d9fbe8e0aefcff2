"""The Kubernetes releases this project supports, and the one a run uses.

One release per minor: the newest patch the Go module proxy serves. The newest is the default
(`make test`); CI also runs the end-to-end suite on the oldest. Why these, and what differs between
them: README, "Supported Kubernetes versions".

    KUBERNETES_VERSION=v1.30.14 make e2e              # any release the proxy serves
    python -m tests.controlplane.versions oldest      # prints v1.30.14 (also: newest, supported)
"""

from __future__ import annotations

import os
import re
import sys

SUPPORTED = (
    "v1.30.14",  # the oldest: ValidatingAdmissionPolicy v1, which the suite relies on, is GA here
    "v1.31.14",
    "v1.32.13",
    "v1.33.13",
    "v1.34.4",
    "v1.35.4",
    "v1.36.3",
    "v1.37.2",
)
OLDEST = SUPPORTED[0]
NEWEST = SUPPORTED[-1]
ENVIRONMENT_VARIABLE = "KUBERNETES_VERSION"
_RELEASE = re.compile(r"v1\.\d+\.\d+")


class VersionError(ValueError):
    pass


def requested() -> str:
    """The release to build and run: $KUBERNETES_VERSION, else the newest supported."""
    version = os.environ.get(ENVIRONMENT_VARIABLE, "").strip() or NEWEST
    if not _RELEASE.fullmatch(version):
        raise VersionError(f"{ENVIRONMENT_VARIABLE}={version!r} is not a Kubernetes release "
                           f"like {NEWEST} (supported: {', '.join(SUPPORTED)})")
    return version


def minor(version: str) -> int:
    return int(version.split(".")[1])


def main(argv: list[str]) -> int:
    choices = {"oldest": OLDEST, "newest": NEWEST, "supported": " ".join(SUPPORTED)}
    if len(argv) != 1 or argv[0] not in choices:
        print(f"usage: python -m tests.controlplane.versions {{{','.join(choices)}}}",
              file=sys.stderr)
        return 2
    print(choices[argv[0]])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
