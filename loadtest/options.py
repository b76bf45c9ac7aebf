"""The load test's command-line options, shared by ``tessera loadtest`` and ``python -m loadtest.runner``.

A leaf module (argparse only), so that the ``tessera`` parser can offer the options without
importing the runner, and the runner can parse them without importing the CLI.
"""

from __future__ import annotations

import argparse

__all__ = ["add_loadtest_arguments"]


def add_loadtest_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the load test's options to ``parser``."""
    parser.add_argument(
        "--start", action="store_true", help="start `tessera serve` on loopback ports first; SIGTERM it at the end"
    )
    parser.add_argument("-u", "--users", type=int, default=8, help="concurrent Locust users (1..256; default 8)")
    parser.add_argument(
        "-r", "--spawn-rate", type=float, default=4.0, help="users started per second (default 4, at most 100)"
    )
    parser.add_argument(
        "-t", "--duration", default="3m", help="how long to run, e.g. 30s, 2m, 1m30s (at most 30m; default 3m)"
    )
    parser.add_argument(
        "--host", default=None, help="service URL, loopback only (default http://127.0.0.1:8000, or the started one)"
    )
    parser.add_argument(
        "--grpc-host", default=None, help="gRPC HOST:PORT, loopback only (default the HTTP host on port 9000)"
    )
    parser.add_argument(
        "--mix",
        default=None,
        help="user weights, e.g. predict=6,oip=2,grpc=2,slide=1 (default $TESSERA_LT_MIX or that)",
    )
    parser.add_argument(
        "--sizes",
        default=None,
        help="/v1/predict image sides with weights, e.g. 224=8,512=4,1024=2,2048=1 (default $TESSERA_LT_SIZES or that)",
    )
    parser.add_argument("--model", default=None, help="model for the OIP and gRPC users (default vit_small)")
    parser.add_argument("--oip-batch", type=int, default=None, help="images per OIP request, N in Nx3x224x224")
    parser.add_argument(
        "--pace",
        type=float,
        default=None,
        help="seconds between the starts of one user's requests, so users/pace requests/s are offered "
        "(default $TESSERA_LT_PACE_S or 10; 0 = closed loop, each user sends as soon as it has its answer)",
    )
    parser.add_argument("--slo", default=None, help="SLO file (default loadtest/slo.yaml)")
    parser.add_argument(
        "--record",
        action="store_true",
        help="also write the result to bench/results/<host>-<date>-loadtest.json for `tessera bench report`",
    )
    parser.add_argument("--out", default=None, help="reports folder (default loadtest/reports)")
    parser.add_argument("--http-port", type=int, default=None, help="with --start: REST port (default a free one)")
    parser.add_argument("--grpc-port", type=int, default=None, help="with --start: gRPC port (default a free one)")
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="with --start: metrics port (default a free one)"
    )
    parser.add_argument(
        "--ready-timeout", type=float, default=300.0, help="with --start: seconds to wait for the ready line"
    )
