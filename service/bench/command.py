"""``tessera bench`` and ``tessera loadtest``: argument parsers and dispatch (modules load lazily).

``tessera bench NAME [options]`` hands ``options`` to the benchmark module's own ``main``, so
``tessera bench attention --help`` lists that benchmark's options; the ``tessera`` command's
``--model-repo`` is passed on to the benchmarks that take one. ``tessera loadtest`` runs
``loadtest/runner.py`` of this checkout (the load test is not part of the installed package).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "BENCHMARKS",
    "add_bench_parser",
    "add_loadtest_arguments",
    "add_loadtest_parser",
    "cmd_bench",
    "cmd_loadtest",
    "load_loadtest_runner",
]

#: ``tessera bench NAME`` → (module, whether its ``main`` takes ``--model-repo``)
BENCHMARKS: dict[str, tuple[str, bool]] = {
    "all": ("service.bench.all", True),
    "ort-vs-torch": ("service.bench.ort_vs_torch", True),
    "attention": ("service.bench.attention_scaling", True),
    "fusion": ("service.bench.fusion", True),
    "gpu": ("service.bench.gpu", False),
    "service": ("service.bench.service_vs_raw", True),
    "peer": ("service.bench.peer", True),
    "slide": ("service.bench.slide_vs_raw", True),
    "router": ("service.bench.router", True),
    "latency": ("service.bench.latency", True),
    "report": ("service.bench.report", False),
}


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``tessera bench {all,ort-vs-torch,attention,fusion,gpu,service,peer,slide,router,latency,report} [options]``."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="benchmarks (ratios in one run): results in bench/results/, report in docs/performance.md",
        description="Run a benchmark; its options follow its name (`tessera bench NAME --help`). "
        "`all` runs every benchmark that fits this host, then `report`.",
    )
    parser.add_argument("name", choices=list(BENCHMARKS), help="which benchmark")
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's own options")
    parser.set_defaults(func=cmd_bench)
    return parser


def cmd_bench(args: argparse.Namespace) -> int:
    module_name, takes_repo = BENCHMARKS[args.name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        print(f"tessera bench: {args.name!r} is not available in this checkout ({module_name})", file=sys.stderr)
        return 2
    argv = list(args.options or [])
    repo = getattr(args, "model_repo", None)
    if repo and takes_repo:
        if not any(a == "--model-repo" or a.startswith("--model-repo=") for a in argv):
            argv = ["--model-repo", repo, *argv]
    elif repo:
        os.environ.setdefault("TESSERA_MODEL_REPO", repo)  # for a benchmark without the flag
    return int(module.main(argv) or 0)


# -- tessera loadtest ------------------------------------------------------------------------------------
def add_loadtest_arguments(parser: argparse.ArgumentParser) -> None:
    """The load test's options (shared by ``tessera loadtest`` and ``python -m loadtest.runner``)."""
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


def load_loadtest_runner() -> ModuleType:
    """``loadtest.runner`` from this checkout (beside ``service/``), or from the working directory."""
    for root in (Path(__file__).resolve().parents[2], Path.cwd()):
        if (root / "loadtest" / "runner.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            return importlib.import_module("loadtest.runner")
    raise FileNotFoundError("loadtest/runner.py not found: run `tessera loadtest` from a Tessera checkout")


def cmd_loadtest(args: argparse.Namespace) -> int:
    runner = load_loadtest_runner()
    return int(runner.run(runner.options_from_args(args)))
