"""A long `--once` on a terminal: one line on stderr, redrawn in place, saying what it is doing
(done/total and the rate). Nothing at all when stderr is not a terminal (piped, redirected, CI),
and nothing for a run short enough not to need it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TextIO

_CLEAR = "\r\x1b[K"  # to the start of the line, erase it


class Progress:
    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic,
                 after: float = 0.5) -> None:
        """`after`: seconds before the first line is drawn (a short run shows none)."""
        self.stream = stream
        self.clock = clock
        self.enabled = _is_terminal(stream)
        self._start = clock()
        self._after = after
        self._shown = False

    def show(self, line: str) -> None:
        if not self.enabled or self.clock() - self._start < self._after:
            return
        self.stream.write(_CLEAR + line)
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        """Erase the line (before a log line or the summary is written)."""
        if self._shown:
            self.stream.write(_CLEAR)
            self.stream.flush()
            self._shown = False

    def log_filter(self) -> logging.Filter:
        """For the log handler writing to the same terminal: a log line erases the progress
        line first (the next redraw brings it back below)."""
        progress = self

        class ClearFirst(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                progress.clear()
                return True

        return ClearFirst()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a real file
        return False


def reconciled_line(done: int, total: int, seconds: float) -> str:
    rate = f", {done / seconds:,.0f}/s" if seconds > 0 and done else ""
    return f"reconciled {done:,}/{total:,} NimbusPolicies{rate}"


def listing_line(nimbus_policies: int, kubearmor_policies: int) -> str:
    return (f"listing: {nimbus_policies:,} NimbusPolicies, {kubearmor_policies:,} "
            "KubeArmorPolicies so far")
