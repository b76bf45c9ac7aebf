"""Every benchmark that fits this host in under 15 minutes, then the report.

Steps, each isolated (a failing step is recorded and the rest still run): ONNX Runtime vs
PyTorch, CPU lanes against one session, attention scaling at reduced sizes, service vs raw, slide
pipeline vs raw, the router benchmark when this checkout has ``service/bench/router.py``, then
``report`` (docs/performance.md).
``--quick`` runs each at a small scale that only proves the harness works (minutes, not numbers).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

__all__ = ["STEPS", "main", "run"]

STEPS = ("ort_vs_torch", "lanes", "attention", "service", "slide", "router", "report")


def _steps(repo: str, quick: bool, report_out: str, img_dir: str) -> dict[str, Callable[[], Any]]:
    def ort_vs_torch() -> Any:
        from service.bench import ort_vs_torch as bench

        return bench.run(repo, batch=8, rounds=3 if quick else 7)

    def lanes() -> Any:
        from service.bench import lanes as bench

        return bench.run(repo, rounds=2 if quick else 3, duration_s=3.0 if quick else 8.0)

    def attention() -> Any:
        from service.bench import attention_scaling as bench

        sizes = (224, 512) if quick else (224, 512, 1024, 2048)
        return bench.run(repo, sizes=sizes, repeats=1 if quick else 2, timeout_s=120 if quick else 150)

    def service() -> Any:
        from service.bench import service_vs_raw as bench

        if quick:
            return bench.run(repo, concurrency=16, duration_s=4, warmup_s=2, raw_duration_s=3)
        return bench.run(repo, concurrency=32, duration_s=15, warmup_s=3, raw_duration_s=10)

    def slide() -> Any:
        from service.bench import slide_vs_raw as bench

        return bench.run(repo, side=2048 if quick else 8192, raw_duration_s=3 if quick else 10)

    def router() -> Any:
        try:
            bench = importlib.import_module("service.bench.router")
        except ModuleNotFoundError as exc:
            if exc.name != "service.bench.router":
                raise
            return "skipped: service/bench/router.py is not in this checkout"
        params = inspect.signature(bench.run).parameters if hasattr(bench, "run") else {}
        if "sizes" in params and "repeats" in params:
            if quick:
                return bench.run(repo, sizes=((224, 224), (512, 512)), repeats=1)
            return bench.run(repo, repeats=2)
        return bench.main(["--model-repo", repo])

    def report() -> Any:
        from service.bench import report as bench

        return str(bench.write_report(None, report_out, img_dir))

    return {
        "ort_vs_torch": ort_vs_torch,
        "lanes": lanes,
        "attention": attention,
        "service": service,
        "slide": slide,
        "router": router,
        "report": report,
    }


def run(
    repo: str = "model_repo",
    *,
    quick: bool = False,
    skip: tuple[str, ...] = (),
    report_out: str = "docs/performance.md",
    img_dir: str = "docs/img",
) -> dict[str, Any]:
    """Run the steps in order; returns {step: {"seconds", "status", "error"?}}."""
    outcome: dict[str, Any] = {}
    started = time.perf_counter()
    for name, step in _steps(repo, quick, report_out, img_dir).items():
        if name in skip:
            outcome[name] = {"status": "skipped (--skip)", "seconds": 0.0}
            continue
        print(f"\n=== {name} ===", flush=True)
        t = time.perf_counter()
        try:
            value = step()
            status = value if isinstance(value, str) and value.startswith("skipped") else "ok"
            outcome[name] = {"status": status, "seconds": round(time.perf_counter() - t, 1)}
        except Exception as exc:
            traceback.print_exc()
            outcome[name] = {
                "status": "failed",
                "error": f"{type(exc).__name__}: {exc}"[:500],
                "seconds": round(time.perf_counter() - t, 1),
            }
    total = round(time.perf_counter() - started, 1)
    print(f"\n=== done in {total} s ===")
    for name, info in outcome.items():
        print(f"{name:<14} {info['status']:<12} {info['seconds']:>7.1f} s  {info.get('error', '')}")
    outcome["total_seconds"] = total
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tessera bench all", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-repo", default="model_repo")
    parser.add_argument("--quick", action="store_true", help="small scale: proves the harness, numbers mean little")
    parser.add_argument("--skip", action="append", choices=list(STEPS), default=[], help="leave a step out")
    parser.add_argument("--report-out", default="docs/performance.md", help="where the report goes")
    parser.add_argument("--img-dir", default="docs/img", help="where the report's plots go")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON at the end")
    args = parser.parse_args(argv)
    outcome = run(
        args.model_repo, quick=args.quick, skip=tuple(args.skip), report_out=args.report_out, img_dir=args.img_dir
    )
    if args.json:
        print(json.dumps(outcome, indent=2))
    failed = [n for n, info in outcome.items() if isinstance(info, dict) and info.get("status") == "failed"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
