"""`python -m reconciler --once` as a process where it needs no cluster (it stops before it
connects): SIGINT and SIGTERM that reach it before its run listens for them, while it loads
kr8s (half a second), still end it with its summary and the exit status of that signal, never
killed without a word nor with a traceback (while the summary is written:
tests/e2e/test_once.py); started with stdout closed, it exits with the status it would have
printed."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def unreachable(directory: Path) -> Path:
    """A kubeconfig for a server where nothing listens."""
    kubeconfig = directory / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n")
    return kubeconfig


@pytest.mark.parametrize(("signum", "code", "result"), [
    (signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_signal_while_loading_ends_with_the_summary(
        tmp_path: Path, signum: signal.Signals, code: int, result: str) -> None:
    kubeconfig = unreachable(tmp_path)  # it must not even try
    # -X importtime writes a line to stderr as each module's import completes. Read up to
    # httpx's (kr8s is loading it; kr8s's and the reconciler's lines, about 20 KB, are still
    # to come), then read no more: with a 4 KB pipe the process cannot get past loading kr8s
    # until the signal has come.
    process = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "reconciler", "--once", "-o", "json",
         "--kubeconfig", str(kubeconfig)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=REPO, pipesize=4096)
    assert process.stderr is not None
    unbuffered = io.FileIO(process.stderr.fileno(), closefd=False)  # reads no further ahead
    try:
        assert any(re.search(rb"\|\s*httpx$", line.rstrip())  # stops reading at the first
                   for line in iter(unbuffered.readline, b"")), "httpx was never loaded"
    finally:
        process.send_signal(signum)
        out, err = process.communicate(timeout=60)
    assert process.returncode == code, (out, err[-2000:])
    assert b"Traceback" not in err, err[-2000:]
    doc = json.loads(out)
    assert (doc["result"], doc["exitCode"], doc["error"]) == (result, code, None)
    assert doc["counts"]["nimbusPolicies"] is None  # nothing listed, nothing connected


def test_stdout_closed_changes_not_the_exit_status(tmp_path: Path) -> None:
    """`>&-`: Python has no sys.stdout at all. Not a traceback and exit 1 (which a dry run
    uses for "something would change"): the exit status of what it would have printed."""
    result = subprocess.run(
        ["sh", "-c", 'exec "$0" "$@" >&-', sys.executable, "-m", "reconciler", "--once",
         "--dry-run", "-o", "json", "--kubeconfig", str(unreachable(tmp_path))],
        stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 4 and "Traceback" not in result.stderr, result.stderr[-2000:]
