"""Latency and peak memory of each backbone from 224² to 2048², per runtime.

Each (model, backend, size) point runs in a fresh subprocess so that peak memory is that point's
own: the peak resident set during the forward minus the resident set just before it. Goals
(DESIGN.md): windowed and neighbourhood backbones within 1.2x of their 512² time and memory per
pixel at 2048²; a global ViT with fused attention (PyTorch SDPA) without the N² memory term.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from service.bench._common import write_result

__all__ = ["measure_point", "run"]

DEFAULT_SIZES = (224, 512, 1024, 1536, 2048)


def measure_point(repo_path: str, model: str, backend: str, size: int, repeats: int) -> dict[str, Any]:
    """Runs inside the subprocess: load, warm up at 224, measure one size."""
    import numpy as np

    from service.bench._common import peak_and_median
    from service.models import ModelRepository
    from service.runtime import load_backend
    from service.runtime.memory import current_rss_bytes

    repo = ModelRepository(repo_path)
    runner = load_backend(repo, model, prefer="torch" if backend == "torch" else "onnxruntime")
    runner.infer(np.zeros((1, 3, 224, 224), np.float32))
    pixels = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    before = current_rss_bytes()
    seconds, peak_delta = peak_and_median(lambda: runner.infer(pixels), repeats=repeats)
    return {
        "model": model,
        "backend": backend,
        "size": size,
        "latency_ms": round(seconds * 1e3, 2),
        "peak_delta_bytes": peak_delta,
        "rss_before_bytes": before,
        "repeats": repeats,
    }


def _point(repo_path: str, model: str, backend: str, size: int, repeats: int, timeout_s: float) -> dict[str, Any]:
    code = (
        "import json,sys; from service.bench.attention_scaling import measure_point; "
        f"print('RESULT ' + json.dumps(measure_point({repo_path!r}, {model!r}, {backend!r}, {size}, {repeats})))"
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"model": model, "backend": backend, "size": size, "skipped": f"over {timeout_s:.0f}s"}
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"model": model, "backend": backend, "size": size, "skipped": f"failed: {tail[0][:200]}"}


def run(
    repo_path: str = "model_repo",
    models: list[str] | None = None,
    backends: tuple[str, ...] = ("onnxruntime", "torch"),
    sizes: tuple[int, ...] = DEFAULT_SIZES,
    repeats: int = 2,
    timeout_s: float = 240.0,
    vit_max: int = 2048,
) -> dict[str, Any]:
    from service.models import ModelRepository

    repo = ModelRepository(repo_path)
    rows = []
    for name in models or repo.names():
        family = repo.config(name).family
        largest_bucket = max(repo.config(name).input.buckets)
        for backend in backends:
            for size in sizes:
                if family == "vit" and size > vit_max and backend == "onnxruntime":
                    rows.append(
                        {"model": name, "backend": backend, "size": size, "skipped": f"above --vit-max {vit_max}"}
                    )
                    continue
                row = _point(repo_path, name, backend, size, repeats, timeout_s)
                row["family"] = family
                if backend == "onnxruntime" and size > largest_bucket:
                    # one dynamic-H/W artifact: it runs at any size; parity was checked at the buckets
                    row["note"] = f"beyond the buckets checked for parity at build (max {largest_bucket})"
                if "latency_ms" in row:
                    row["ms_per_mpixel"] = round(row["latency_ms"] / (size * size / 1e6), 3)
                    row["bytes_per_pixel"] = round(row["peak_delta_bytes"] / (size * size), 2)
                print(json.dumps(row), flush=True)
                rows.append(row)
    summary = _summary(rows)
    result = {
        "benchmark": "attention_scaling",
        "rows": rows,
        "summary": summary,
        "goal": "windowed/NA: per-pixel time and memory at 2048² within 1.2x of 512²; "
        "fused global attention: no N² memory term",
    }
    print(f"wrote {write_result('attention_scaling', result)}")
    return result


def _summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    keyed = {(r["model"], r["backend"], r["size"]): r for r in rows if "latency_ms" in r}
    for (model, backend, size), row in sorted(keyed.items()):
        if size != 2048 or (model, backend, 512) not in keyed:
            continue
        base = keyed[(model, backend, 512)]
        out.append(
            {
                "model": model,
                "backend": backend,
                "time_per_pixel_ratio_2048_vs_512": round(row["ms_per_mpixel"] / base["ms_per_mpixel"], 3),
                "memory_per_pixel_ratio_2048_vs_512": round(
                    row["bytes_per_pixel"] / max(base["bytes_per_pixel"], 1e-9), 3
                ),
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-repo", default="model_repo")
    parser.add_argument("--model", action="append")
    parser.add_argument("--backend", action="append", choices=["onnxruntime", "torch"])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--vit-max", type=int, default=2048, help="largest side for the global-attention ViT on ORT")
    args = parser.parse_args(argv)
    run(
        args.model_repo,
        args.model,
        tuple(args.backend or ("onnxruntime", "torch")),
        tuple(args.sizes),
        args.repeats,
        vit_max=args.vit_max,
    )


if __name__ == "__main__":
    main()
