"""ViT-B/16 fp16 at batch 256 under torch.compile's modes, beside eager, as fractions of the bf16
matmul rate measured in the same run (the GPU goal in docs/performance.md is 55%). Run by
``bash bench/gpu/run.sh --compile-modes``; prints a line per mode as it finishes (a mode whose
compilation outlasts the call still leaves the ones before it) and writes nothing: what it printed
goes into bench/gpu/NOTES.md. Exploration: Tessera serves eager, or ``compile=True`` (dynamic
shapes, default mode); a mode that wins here is a candidate, not a setting.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

MODES = (
    ("eager", None),
    ("default, static shapes", {"dynamic": False}),
    ("default, dynamic shapes (TorchBackend(compile=True))", {"dynamic": True}),
    ("max-autotune-no-cudagraphs, static", {"dynamic": False, "mode": "max-autotune-no-cudagraphs"}),
)


def main() -> int:
    import torch

    from service.bench.gpu import matmul_rate, median_s, vit_b16_backbone
    from service.models._factory import EmbeddingModel

    device, batch = "cuda:0", 256
    backbone, flops = vit_b16_backbone()
    model = EmbeddingModel(backbone.eval()).to(device=device, dtype=torch.float16).eval()
    x = torch.randn(batch, 3, 224, 224, device=device, dtype=torch.float16)
    rate = matmul_rate(device, 8192, 20)
    print(json.dumps({"bf16_matmul_flops_per_s": rate, "flops_per_image": flops}), flush=True)
    eager_ips = None
    for name, options in MODES:
        torch._dynamo.reset()
        forward = model if options is None else torch.compile(model, **options)

        def step(forward: object = forward) -> object:
            with torch.inference_mode():
                return forward(x)  # type: ignore[operator]

        started = time.perf_counter()
        step()
        torch.cuda.synchronize()
        first_s = time.perf_counter() - started
        ips = batch / median_s(step, device, 20)
        eager_ips = eager_ips or ips
        row = {
            "mode": name,
            "img_per_s": round(ips),
            "fraction_of_matmul_rate": round(ips * flops / rate, 4),
            "vs_eager": round(ips / eager_ips, 3),
            "first_call_s": round(first_s, 1),
        }
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
