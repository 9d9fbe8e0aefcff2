"""The exit statuses of `python -m reconciler --once`, for scripts. `--dry-run` follows
`kubectl diff`: 0 nothing would change, 1 something would, more on an error. When several apply,
the first in this order wins: interrupted, could not run, failed, would change, bad input."""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0  # converged: nothing failed, no bad input; with --dry-run: nothing would change
    WOULD_CHANGE = 1  # --dry-run only: something would be created, patched, deleted or a status written
    BAD_INPUT = 2  # a NimbusPolicy has bad input (reported); everything else converged
    FAILED = 3  # a reconcile failed: a write refused or unanswered, its namespace being deleted
    NOT_RUN = 4  # could not run: bad flags, bad kubeconfig or credentials, unreachable, a LIST failed
    INTERRUPTED = 130  # SIGINT (128 + 2): stopped early; the summary says what was done
    TERMINATED = 143  # SIGTERM (128 + 15): the same
