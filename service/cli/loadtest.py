"""``tessera loadtest``: the subcommand over the ``loadtest`` package (loaded when the command runs)."""

from __future__ import annotations

import argparse
from typing import Any

from loadtest.options import add_loadtest_arguments

__all__ = ["add_loadtest_parser", "cmd_loadtest"]


def add_loadtest_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``tessera loadtest [--start] [--users N] [--spawn-rate R] [--duration 60s] [--host URL] [--mix ...]``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "loadtest",
        help="Locust load test against a loopback service, checked against loadtest/slo.yaml",
        description="Run Locust headless against a Tessera on this machine (optionally started here), "
        "write CSV, HTML and summary.json to loadtest/reports/<timestamp>/, and check the SLOs. "
        "Exits 1 when an SLO fails, 2 when the run itself fails.",
    )
    add_loadtest_arguments(parser)
    parser.set_defaults(func=cmd_loadtest)
    return parser


def cmd_loadtest(args: argparse.Namespace) -> int:
    from loadtest import runner

    return int(runner.run(runner.options_from_args(args)))
