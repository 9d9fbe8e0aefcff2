"""The progress line of a long `--once`: on a terminal only, after a moment, erased before a log
line or the summary."""

from __future__ import annotations

import io
import logging

from reconciler.progress import Progress, listing_line, reconciled_line


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_nothing_when_not_a_terminal() -> None:
    piped, clock = io.StringIO(), Clock()
    progress = Progress(piped, clock, after=0.5)
    clock.now += 10
    progress.show(reconciled_line(5, 10, 1.0))
    progress.clear()
    assert not progress.enabled and piped.getvalue() == ""


def test_on_a_terminal_after_a_moment_redrawn_in_place_and_erased() -> None:
    terminal, clock = Terminal(), Clock()
    progress = Progress(terminal, clock, after=0.5)
    progress.show("too early")
    assert terminal.getvalue() == ""  # a short run shows nothing
    clock.now += 0.6
    progress.show(reconciled_line(1200, 5000, 3.0))
    progress.show(reconciled_line(2500, 5000, 6.0))
    progress.clear()
    assert terminal.getvalue() == ("\r\x1b[Kreconciled 1,200/5,000 NimbusPolicies, 400/s"
                                   "\r\x1b[Kreconciled 2,500/5,000 NimbusPolicies, 417/s\r\x1b[K")
    progress.clear()  # nothing shown, nothing to erase
    assert terminal.getvalue().endswith("417/s\r\x1b[K")


def test_a_log_line_erases_it_first() -> None:
    terminal, clock = Terminal(), Clock()
    progress = Progress(terminal, clock, after=0)
    handler = logging.StreamHandler(terminal)
    handler.addFilter(progress.log_filter())
    logger = logging.getLogger("test_progress")
    logger.addHandler(handler)
    try:
        progress.show(listing_line(10, 2500))
        logger.warning("list/watch failed")
    finally:
        logger.removeHandler(handler)
    assert terminal.getvalue() == ("\r\x1b[Klisting: 10 NimbusPolicies, 2,500 KubeArmorPolicies "
                                   "so far\r\x1b[Klist/watch failed\n")


def test_lines() -> None:
    assert reconciled_line(0, 10, 0.0) == "reconciled 0/10 NimbusPolicies"
