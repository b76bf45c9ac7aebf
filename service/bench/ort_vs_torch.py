"""ONNX Runtime (the optimised artifact) vs PyTorch eager, fp32, same host, one run.

Rounds interleave the two runtimes so that drift on a noisy machine hits both alike; the ratio
of medians is the result (goal in DESIGN.md: >= 2x on CPU at batch 8).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np

from service.bench._common import write_result
from service.models import ModelRepository

__all__ = ["run"]


def run(
    repo_path: str = "model_repo", models: list[str] | None = None, batch: int = 8, size: int = 224, rounds: int = 7
) -> dict[str, Any]:
    import torch

    from service.runtime import load_backend
    from service.runtime.torch_backend import TorchBackend

    torch.set_grad_enabled(False)
    repo = ModelRepository(repo_path)
    rows = []
    for name in models or repo.names():
        ort_backend = load_backend(repo, name, prefer="onnxruntime")
        torch_backend = TorchBackend.from_repository(repo, name)
        pixels = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
        ort_backend.infer(pixels)
        torch_backend.infer(pixels)  # warm-up both
        ort_times, torch_times = [], []
        for _ in range(rounds):
            start = time.perf_counter()
            torch_backend.infer(pixels)
            torch_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            ort_backend.infer(pixels)
            ort_times.append(time.perf_counter() - start)
        t_ms = statistics.median(torch_times) * 1e3
        o_ms = statistics.median(ort_times) * 1e3
        manifest = repo.require_manifest(name)
        rows.append(
            {
                "model": name,
                "batch": batch,
                "size": size,
                "torch_eager_ms": round(t_ms, 2),
                "onnxruntime_ms": round(o_ms, 2),
                "speedup": round(t_ms / o_ms, 3),
                "torch_img_per_s": round(batch / t_ms * 1e3, 2),
                "onnxruntime_img_per_s": round(batch / o_ms * 1e3, 2),
                "fused": manifest.artifacts["onnx"].fused,
                "torch_threads": torch.get_num_threads(),
            }
        )
        print(f"{name:<12} torch {t_ms:8.1f} ms  onnxruntime {o_ms:8.1f} ms  speed-up {t_ms / o_ms:5.2f}x")
    result = {"benchmark": "ort_vs_torch", "goal": ">= 2x at batch 8 on CPU", "rows": rows, "rounds": rounds}
    path = write_result("ort_vs_torch", result)
    print(f"wrote {path}")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-repo", default="model_repo")
    parser.add_argument("--model", action="append")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    run(args.model_repo, args.model, args.batch, rounds=args.rounds)


if __name__ == "__main__":
    main()
