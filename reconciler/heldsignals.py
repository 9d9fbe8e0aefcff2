"""SIGINT and SIGTERM while `--once` cannot act on them: before its run listens for them (half a
second of loading kr8s and the reconciler) and after it stopped listening (while the summary is
written). Python's defaults would end the process there, killed by SIGTERM without a word or with
a KeyboardInterrupt traceback, and cut a summary half-written; one that arrives during an import
may even be swallowed ("Exception ignored"). Held instead: the first is kept, and the run, when
it starts, stops at once as if the signal had come then (nothing was written yet). After the run
they are ignored: the summary is written whole and the exit status is the one it states (a
handler of ours would not do: the interpreter sets those back to the defaults as it exits)."""

from __future__ import annotations

import signal
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class HeldSignals:
    def __init__(self) -> None:
        # The first signal that came while held ("SIGINT" or "SIGTERM"), None if none did.
        self.first: str | None = None

    def hold(self) -> None:
        """From now until someone else handles them (anyio's signal receiver), keep them."""
        for signum in SIGNALS:
            signal.signal(signum, self._keep)

    def _keep(self, signum: int, frame: FrameType | None) -> None:
        if self.first is None:
            self.first = signal.Signals(signum).name

    def ignore(self) -> None:
        """From now on (the run is over: its summary says what happened) until the process has
        exited, ignore them."""
        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
