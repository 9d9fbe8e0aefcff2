"""SIGINT and SIGTERM while `--once` cannot act on them: before its run listens for them (from
the process's first moment, through half a second of loading kr8s and the reconciler; the other
modes get Python's defaults back once the flags are read) and after it stopped listening (while
the summary is written). Python's defaults would end the process there, killed by SIGTERM
without a word or with a KeyboardInterrupt traceback, and cut a summary half-written; one that
arrives during an import may even be swallowed ("Exception ignored").

    hold()       before the run: the first is kept, and the run, when it starts, stops at once
                 as if the signal had come then (nothing was written yet)
    finishing()  after the run, while the summary is written (a reader may be slow): the first
                 is let pass, so the summary is whole and the exit status the one it states; a
                 second ends the process at once, as a second signal does during the run
    ignore()     the summary written: nothing left to stop (a handler of ours would not do here:
                 the interpreter sets those back to the defaults as it exits)
"""

from __future__ import annotations

import os
import signal
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class HeldSignals:
    def __init__(self) -> None:
        # The first signal that came while held ("SIGINT" or "SIGTERM"), None if none did.
        self.first: str | None = None
        # Signals that came since finishing(); None before it.
        self._while_finishing: int | None = None

    def hold(self) -> None:
        """Until someone else handles them (anyio's signal receiver during the run)."""
        self._install()

    def release(self) -> None:
        """Python's defaults back (not --once), and the signal that came meanwhile, now."""
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if self.first is not None:
            signal.raise_signal(signal.Signals[self.first])

    def finishing(self) -> None:
        self._while_finishing = 0
        self._install()

    def ignore(self) -> None:
        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_IGN)

    def _install(self) -> None:
        for signum in SIGNALS:
            signal.signal(signum, self._keep)

    def _keep(self, signum: int, frame: FrameType | None) -> None:
        if self.first is None:
            self.first = signal.Signals(signum).name
        if self._while_finishing is not None:
            self._while_finishing += 1
            if self._while_finishing > 1:
                os._exit(128 + signum)  # the summary's end is lost: asked for twice
