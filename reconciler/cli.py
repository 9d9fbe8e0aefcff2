"""Command line: the controller (default), `--once [--dry-run]`, and `render -f FILE`.
Flags follow controller-runtime's names where it has them.

Loading this module loads nothing else of weight: `--help` and bad flags answer at once, and
each mode imports what it needs when it runs (render: the builder and YAML; --once: kr8s first,
then the controller once connected; the controller: also the HTTP server)."""

from __future__ import annotations

import argparse
import re
import sys
from typing import NoReturn

from .bindaddress import parse_bind_address
from .exitcode import ExitCode
from .heldsignals import HeldSignals

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?$")


def _namespace(value: str) -> str:
    if not _DNS_LABEL.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a namespace name (a DNS label)")
    return value


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of at least 1")
    return int(value)


def _duration(value: str) -> float:
    match = _DURATION.match(value)
    if not value or match is None:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration such as 10m, 90s or 1h30m")
    hours, minutes, seconds = match.groups()
    total = int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(seconds or 0)
    if total <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be longer than 0")
    return total


def _go_bool(value: str) -> bool:
    """A boolean flag's value as Go's flag package takes it (`--metrics-secure=false`)."""
    if value in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if value in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise argparse.ArgumentTypeError(f"{value!r} is not true or false")


def _bind_address(value: str) -> str:
    try:
        parse_bind_address(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Bad flags exit 4 (could not run), not argparse's 2: with --once, 2 means bad input
        in a NimbusPolicy."""
        self.print_usage(sys.stderr)
        self.exit(ExitCode.NOT_RUN, f"{self.prog}: error: {message}\n")


ONCE_EPILOG = """\
--once exit status (the first that applies; --dry-run follows kubectl diff):
  130, 143  interrupted by SIGINT, SIGTERM (the summary says what was done)
  4         could not run: bad flags, bad kubeconfig or credentials, API server
            unreachable, a LIST failed
  3         a NimbusPolicy failed: a write refused or unanswered, its namespace being deleted
  1         --dry-run: something would change (the diff is printed)
  2         bad input reported in a NimbusPolicy (everything else converged)
  0         converged; with --dry-run: nothing would change
The controller exits 0 after SIGTERM/SIGINT and 1 when it lost its leader election Lease.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m reconciler",
        description="Reconciles Nimbus NimbusPolicies into KubeArmor KubeArmorPolicies.",
        epilog=ONCE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG; if unset, "
                        "the in-cluster service account; outside a cluster, ~/.kube/config)")
    parser.add_argument("--once", action="store_true",
                        help="reconcile every NimbusPolicy once, print a summary and exit "
                             "(exit status below)")
    parser.add_argument("--dry-run", action="store_true",
                        help="with --once: write nothing; print what would change as a unified "
                             "diff per object")
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text",
                        help="with --once: the summary (and the diff) as text or as one JSON "
                             "document (default text)")
    parser.add_argument("--workers", type=_positive_int, default=4,
                        help="NimbusPolicies reconciled at once (default 4)")
    parser.add_argument("--namespace", dest="namespaces", action="append", type=_namespace,
                        default=[], metavar="NAMESPACE",
                        help="watch only this namespace; repeat for several (default: all)")
    parser.add_argument("--resync-period", type=_duration, default=600.0, metavar="DURATION",
                        help="reconcile every NimbusPolicy at least this often (default 10m)")
    parser.add_argument("--metrics-bind-address", type=_bind_address,
                        help="address for /metrics, or 0 to disable (default :8443, and :8080 "
                             "with --metrics-secure=false)")
    parser.add_argument("--metrics-secure", type=_go_bool, nargs="?", const=True, default=True,
                        metavar="BOOL",
                        help="serve /metrics over HTTPS to those the API server authenticates "
                             "(TokenReview) and authorizes (SubjectAccessReview: get on the URL "
                             "/metrics) (default true); --metrics-secure=false serves plain HTTP "
                             "to anyone")
    parser.add_argument("--metrics-cert-path", metavar="DIR",
                        help="directory with the metrics server's certificate and key, read "
                             "again when they change (default: a self-signed one made at start)")
    parser.add_argument("--metrics-cert-name", default="tls.crt", metavar="FILE",
                        help="the certificate's file in --metrics-cert-path (default tls.crt)")
    parser.add_argument("--metrics-cert-key", default="tls.key", metavar="FILE",
                        help="the key's file in --metrics-cert-path (default tls.key)")
    parser.add_argument("--health-probe-bind-address", type=_bind_address, default=":8081",
                        help="address for /healthz and /readyz, or 0 to disable (default :8081)")
    parser.add_argument("--leader-elect", action="store_true",
                        help="reconcile only while holding a Lease, so replicas can stand by")
    parser.add_argument("--leader-election-id", default="nimbus-kubearmor-leader",
                        help="name of the Lease (default nimbus-kubearmor-leader)")
    parser.add_argument("--leader-election-namespace", type=_namespace,
                        help="namespace of the Lease (default: the pod's namespace)")
    parser.add_argument("--leader-elect-lease-duration", type=_duration, default=15.0,
                        metavar="DURATION", help="how long a Lease holds without renewal (15s)")
    parser.add_argument("--leader-elect-renew-deadline", type=_duration, default=10.0,
                        metavar="DURATION", help="the leader gives up if it cannot renew within "
                        "this (10s)")
    parser.add_argument("--leader-elect-retry-period", type=_duration, default=2.0,
                        metavar="DURATION", help="time between tries to acquire or renew (2s)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        default="info")
    parser.add_argument("--log-format", choices=["json", "text"], default="json")
    commands = parser.add_subparsers(dest="command", metavar="{render}")
    render_cmd = commands.add_parser(
        "render", help="print the KubeArmorPolicies a NimbusPolicy file requires (no cluster)")
    render_cmd.add_argument("-f", "--filename", required=True,
                            help="YAML file with one or more NimbusPolicies; - for stdin")
    return parser


def main(argv: list[str] | None = None, held: HeldSignals | None = None) -> int:
    """`held`: SIGINT and SIGTERM, held since the process started (`python -m reconciler`).
    Until the flags say --once (which then ends with its summary whenever a signal comes) they
    stay held; any other mode gets Python's defaults back, and a signal that came meanwhile."""
    held = held or HeldSignals()
    held.hold()
    once = False
    try:
        parser = build_parser()
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        if args.command != "render":
            if args.dry_run and not args.once:
                parser.error("--dry-run needs --once (the controller never runs dry)")
            if args.output != "text" and not args.once:
                parser.error("--output needs --once (the controller logs, it prints no summary)")
            if args.once and args.leader_elect:
                parser.error("--leader-elect does not go with --once")
            once = args.once
    finally:
        if not once:
            held.release()
    if args.command == "render":
        from . import render
        return render.main(args.filename)
    from . import logs
    logs.setup(args.log_level, args.log_format)
    namespaces = tuple(dict.fromkeys(args.namespaces))
    if once:
        from . import once as one_shot
        return one_shot.main(one_shot.OnceOptions(
            kubeconfig=args.kubeconfig, namespaces=namespaces, workers=args.workers,
            dry_run=args.dry_run, output=args.output), held)
    return _run_controller(parser, args, namespaces)


def _run_controller(parser: argparse.ArgumentParser, args: argparse.Namespace,
                    namespaces: tuple[str, ...]) -> int:
    import anyio

    from .app import RunOptions, run_controller
    from .controller import ControllerConfig
    from .leaderelection import LeaderElectionConfig, default_namespace

    leader_election = None
    if args.leader_elect:
        namespace = args.leader_election_namespace or default_namespace()
        if namespace is None:
            parser.error("--leader-election-namespace is required outside a cluster "
                         "(POD_NAMESPACE is not set)")
        if not args.leader_elect_retry_period < args.leader_elect_renew_deadline \
                < args.leader_elect_lease_duration:
            parser.error("leader election needs retry period < renew deadline < lease duration")
        leader_election = LeaderElectionConfig(
            namespace=namespace, name=args.leader_election_id,
            lease_duration=args.leader_elect_lease_duration,
            renew_deadline=args.leader_elect_renew_deadline,
            retry_period=args.leader_elect_retry_period)
    if args.metrics_bind_address is None:
        args.metrics_bind_address = ":8443" if args.metrics_secure else ":8080"
    metrics_bind = parse_bind_address(args.metrics_bind_address)
    if args.metrics_secure and not args.once and metrics_bind is not None and \
            metrics_bind[1] != 0 and metrics_bind == parse_bind_address(args.health_probe_bind_address):
        parser.error("--metrics-bind-address and --health-probe-bind-address must differ with "
                     "--metrics-secure: the probes are plain HTTP, without a token")
    if args.metrics_cert_path is not None and not args.metrics_secure:
        parser.error("--metrics-cert-path goes with --metrics-secure (plain HTTP has no "
                     "certificate)")
    options = RunOptions(
        controller=ControllerConfig(namespaces=namespaces, workers=args.workers,
                                    resync_period=args.resync_period),
        kubeconfig=args.kubeconfig,
        metrics_bind_address=args.metrics_bind_address,
        metrics_secure=args.metrics_secure,
        metrics_cert_path=args.metrics_cert_path,
        metrics_cert_name=args.metrics_cert_name,
        metrics_cert_key=args.metrics_cert_key,
        health_probe_bind_address=args.health_probe_bind_address,
        leader_election=leader_election,
    )
    return anyio.run(run_controller, options)
