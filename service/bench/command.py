"""``tessera bench``: argument parser and dispatch (benchmark modules load lazily).

``tessera bench NAME [options]`` hands ``options`` to the benchmark module's own ``main``, so
``tessera bench attention --help`` lists that benchmark's options; the ``tessera`` command's
``--model-repo`` is passed on to the benchmarks that take one.

``service.bench`` is the top of the runtime package: only the CLI imports it, lazily, when a
``tessera`` command is parsed (an import-linter contract checks that no other module does).
``tessera loadtest`` is ``service/cli/loadtest.py`` over the ``loadtest`` package.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

__all__ = [
    "BENCHMARKS",
    "add_bench_parser",
    "cmd_bench",
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
    "lanes": ("service.bench.lanes", True),
    "slide": ("service.bench.slide_vs_raw", True),
    "router": ("service.bench.router", True),
    "latency": ("service.bench.latency", True),
    "report": ("service.bench.report", False),
}


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``tessera bench NAME [options]`` for every name in ``BENCHMARKS``."""
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
