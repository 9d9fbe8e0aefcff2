"""tests/controlplane/auditlog.py: the log read as it grows, as a list would read it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.controlplane.auditlog import AuditLog


def test_read_as_it_grows(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    assert len(log.events()) == 0  # not written yet
    path.write_text("".join(json.dumps({"n": i}) + "\n" for i in range(3)) + '{"n": 3')
    before = log.events()
    assert [e["n"] for e in before] == [0, 1, 2]  # the line being written is not read
    with path.open("a") as f:
        f.write("}\n\n" + json.dumps({"n": 4}) + "\n")
    after = log.events()
    assert [e["n"] for e in after[len(before):]] == [3, 4]
    assert after[-1] == {"n": 4} and after[1] == {"n": 1}
    assert [e["n"] for e in after[::2]] == [0, 2, 4] and after[3:3] == []
    assert len(before) == 3  # a snapshot stays one
    with pytest.raises(IndexError):
        after[5]


def test_a_log_that_shrinks_fails_loudly(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_text(json.dumps({"n": 0}) + "\n" + json.dumps({"n": 1}) + "\n")
    log = AuditLog(path)
    assert len(log.events()) == 2
    path.write_text(json.dumps({"n": 0}) + "\n")
    with pytest.raises(AssertionError, match="shrank"):
        log.events()
