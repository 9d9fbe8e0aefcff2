"""Command line: `python -m reconciler [--once [--dry-run]] [flags]` and `render -f FILE`."""

from __future__ import annotations

import argparse
import sys

from . import render


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m reconciler",
        description="Reconciles Nimbus NimbusPolicies into KubeArmor KubeArmorPolicies.",
    )
    commands = parser.add_subparsers(dest="command")
    render_cmd = commands.add_parser(
        "render", help="print the KubeArmorPolicies a NimbusPolicy file requires (no cluster)")
    render_cmd.add_argument("-f", "--filename", required=True,
                            help="YAML file with one or more NimbusPolicies; - for stdin")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "render":
        return render.main(args.filename)
    build_parser().print_help()
    return 2
