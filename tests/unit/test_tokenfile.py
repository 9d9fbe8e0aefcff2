"""The token file read again on schedule (client-go's cached file token source);
tests/e2e/test_token_rotation.py runs it on the real API server."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from reconciler.clock import FakeClock
from reconciler.tokenfile import REREAD_AFTER, TokenFile
from tests.kubelet import ServiceAccountVolume


@pytest.fixture
def volume(tmp_path: Path) -> ServiceAccountVolume:
    return ServiceAccountVolume(tmp_path / "serviceaccount", token="first", ca_pem=b"CA",
                                namespace="system")


def test_read_again_once_fifty_seconds_old_not_before(volume: ServiceAccountVolume) -> None:
    clock = FakeClock()
    tokens = TokenFile(volume.token_path, clock)
    assert REREAD_AFTER == 50.0  # client-go: a minute, less its 10 s leeway
    assert tokens.token() == "first"
    volume.rotate("second")
    clock.advance(REREAD_AFTER - 0.1)
    assert tokens.token() == "first"
    clock.advance(0.1)
    assert tokens.token() == "second"
    volume.rotate("third")
    assert tokens.token() == "second"  # the clock starts again from that read
    assert tokens.read() == "third"  # at once, after a 401


def test_whitespace_around_the_token_is_not_part_of_it(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("  abc.def.ghi\n")
    assert TokenFile(path, FakeClock()).token() == "abc.def.ghi"


def test_a_failed_read_keeps_the_token_logs_once_and_is_tried_at_the_next_request(
        volume: ServiceAccountVolume, caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    tokens = TokenFile(volume.token_path, clock)
    assert tokens.token() == "first"
    clock.advance(REREAD_AFTER)
    (volume.directory / "..data").unlink()  # the file is gone
    with caplog.at_level(logging.INFO, logger="reconciler.tokenfile"):
        assert tokens.token() == "first"
        assert tokens.token() == "first"
        volume.rotate("")  # the file is back, empty
        assert tokens.token() == "first"
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "going on with the one read before" in warnings[0].message
        volume.rotate("second")
        assert tokens.token() == "second"  # no need to wait another 50 s
    assert caplog.records[-1].message == "read the service-account token again"


def test_no_token_before_any_read_succeeded(tmp_path: Path) -> None:
    assert TokenFile(tmp_path / "missing", FakeClock()).token() is None


def test_the_test_volume_is_laid_out_as_the_kubelet_lays_it(tmp_path: Path) -> None:
    volume = ServiceAccountVolume(tmp_path / "sa", token="first", ca_pem=b"CA", namespace="ns",
                                  run_as=(65532, 65532))
    data = volume.directory / "..data"
    first = data.readlink()
    assert first.name.startswith("..") and (volume.directory / first).is_dir()
    for name in ("token", "ca.crt", "namespace"):
        assert (volume.directory / name).readlink() == Path("..data") / name
    token = (volume.directory / first / "token").stat()
    assert (token.st_uid, token.st_mode & 0o777) == (65532, 0o600)
    assert (volume.directory / first / "ca.crt").stat().st_mode & 0o777 == 0o644
    volume.rotate("second")
    assert data.readlink() != first and not (volume.directory / first).exists()
    assert (volume.directory / "token").read_text() == "second"
    assert (volume.directory / "namespace").read_text() == "ns"
    assert sorted(p.name for p in volume.directory.iterdir() if not p.name.startswith("..2")) == [
        "..data", "ca.crt", "namespace", "token"]
