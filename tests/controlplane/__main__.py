"""`python -m tests.controlplane`: start a local control plane, print its kubeconfig path,
keep it up until interrupted (Ctrl-C or SIGTERM), then tear it down."""

from __future__ import annotations

import signal
import sys
import threading

from .assets import build
from .launcher import LocalControlPlane


def main() -> int:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with LocalControlPlane(build(log=sys.stderr), log=sys.stderr) as control_plane:
        print(control_plane.kubeconfig, flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
