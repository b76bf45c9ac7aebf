"""The router's evidence: for a mix of sizes, its choice, predicted vs measured latency and
memory, and what every alternative actually cost (measured, not predicted).

Goals (issue "routing"): the choice is the cheapest measured candidate that fits the budget, and
predicted latency is within 25% of measured on the calibrated host.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

from service.bench._common import write_result

__all__ = ["DEFAULT_SIZES", "run"]

#: (width, height): squares from 224 to 2048 and a few extremes.
DEFAULT_SIZES: tuple[tuple[int, int], ...] = (
    (224, 224),
    (384, 384),
    (512, 512),
    (768, 768),
    (1024, 1024),
    (1536, 1536),
    (2048, 2048),
    (4000, 300),
    (300, 4000),
    (96, 96),
    (1280, 720),
)


def _measure(backend: Any, height: int, width: int, repeats: int) -> tuple[float, int]:
    from service.runtime.memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss

    pixels = np.random.default_rng(0).standard_normal((1, 3, height, width)).astype(np.float32)
    backend.infer(pixels)  # warm-up at this shape
    reset_peak_rss()
    before = current_rss_bytes()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        backend.infer(pixels)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, max(0, peak_rss_bytes() - before)


def run(
    repo_path: str = "model_repo", sizes: tuple[tuple[int, int], ...] = DEFAULT_SIZES, repeats: int = 3
) -> dict[str, Any]:
    from service.models import ModelRepository
    from service.routing.factory import make_router
    from service.runtime import load_backend

    repo = ModelRepository(repo_path)
    router = make_router(repo)
    backends = {name: load_backend(repo, name) for name in repo.names()}
    measured_cache: dict[tuple[str, int, int], tuple[float, int]] = {}
    rows: list[dict[str, Any]] = []
    for width, height in sizes:
        decision = router.decide(width, height)
        alternatives: list[dict[str, Any]] = []
        for cand in decision.candidates:
            h, w = cand.input_size
            key = (cand.model, h, w)
            if key not in measured_cache:
                measured_cache[key] = _measure(backends[cand.model], h, w, repeats)
            ms, peak = measured_cache[key]
            alternatives.append(
                {
                    "model": cand.model,
                    "fits": cand.fits,
                    "input_size": [h, w],
                    "predicted_ms": cand.predicted_latency_ms,
                    "measured_ms": round(ms, 2),
                    "predicted_peak_bytes": cand.predicted_peak_bytes,
                    "measured_peak_delta_bytes": peak,
                    "error_pct": round(100 * (cand.predicted_latency_ms - ms) / ms, 1)
                    if cand.predicted_latency_ms
                    else None,
                    "calibrated": cand.calibrated,
                }
            )
        fitting = [a for a in alternatives if a["fits"]]
        cheapest = min(fitting, key=lambda a: a["measured_ms"])["model"] if fitting else None
        chosen = next(a for a in alternatives if a["model"] == decision.model)
        rows.append(
            {
                "width": width,
                "height": height,
                "chosen": decision.model,
                "reason": decision.reason,
                "fit": decision.fit,
                "input_size": list(decision.input_size),
                "predicted_ms": chosen["predicted_ms"],
                "measured_ms": chosen["measured_ms"],
                "error_pct": chosen["error_pct"],
                "measured_cheapest_fitting": cheapest,
                "chose_cheapest": cheapest == decision.model,
                "alternatives": alternatives,
            }
        )
        print(
            f"{width:>5}x{height:<5} -> {decision.model:<10} ({decision.reason}, {decision.fit}) "
            f"pred {chosen['predicted_ms'] or 0:8.1f} ms  meas {chosen['measured_ms']:8.1f} ms  "
            f"err {chosen['error_pct']}%  cheapest measured: {cheapest}",
            flush=True,
        )
    errors = [abs(r["error_pct"]) for r in rows if r["error_pct"] is not None]
    alt_errors = [abs(a["error_pct"]) for r in rows for a in r["alternatives"] if a["error_pct"] is not None]
    summary = {
        "sizes": len(rows),
        "chose_cheapest": sum(r["chose_cheapest"] for r in rows),
        "max_abs_error_pct_chosen": max(errors) if errors else None,
        "median_abs_error_pct_chosen": statistics.median(errors) if errors else None,
        "max_abs_error_pct_all_candidates": max(alt_errors) if alt_errors else None,
        "within_25pct_chosen": sum(e <= 25 for e in errors),
        "calibrated": all(a["calibrated"] for r in rows for a in r["alternatives"]),
    }
    result = {
        "benchmark": "router",
        "rows": rows,
        "summary": summary,
        "goal": "choice = cheapest fitting candidate; predicted latency within 25% of measured",
    }
    print(summary)
    print(f"wrote {write_result('router', result)}")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-repo", default="model_repo")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    run(args.model_repo, repeats=args.repeats)


if __name__ == "__main__":
    main()
