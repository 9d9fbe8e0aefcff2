"""The metrics flags, as kubebuilder v4's main.go spells them: `--metrics-secure` (on unless
`=false`), `--metrics-cert-path/-name/-key`; and the combinations refused before anything starts."""

from __future__ import annotations

import pytest

from reconciler import cli
from reconciler.exitcode import ExitCode


@pytest.mark.parametrize(("flags", "secure"), [
    ([], True), (["--metrics-secure"], True), (["--metrics-secure=true"], True),
    (["--metrics-secure=false"], False), (["--metrics-secure=0"], False),
    (["--metrics-secure=F"], False)])
def test_metrics_secure(flags: list[str], secure: bool) -> None:
    args = cli.build_parser().parse_args(flags)
    assert args.metrics_secure is secure
    assert (args.metrics_cert_name, args.metrics_cert_key) == ("tls.crt", "tls.key")


@pytest.mark.parametrize(("flags", "message"), [
    (["--metrics-secure=maybe"], "'maybe' is not true or false"),
    (["--metrics-bind-address=:9000", "--health-probe-bind-address=:9000"],
     "must differ with --metrics-secure"),
    (["--metrics-secure=false", "--metrics-cert-path=/certs"],
     "--metrics-cert-path goes with --metrics-secure")])
def test_refused(flags: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(flags)
    assert exit_.value.code == ExitCode.NOT_RUN  # bad flags: could not run (2 is bad input)
    assert message in capsys.readouterr().err
