"""The GPU benchmark: one command on a bare H100/H200 (``bash bench/gpu/run.sh``).

That host has Python 3.12, PyTorch (CUDA), timm, onnx and the CPU onnxruntime and none of
Tessera's other dependencies; ``bench/gpu/run.sh`` installs the few pure-Python wheels it needs
from ``bench/gpu/wheels/`` (``bench/gpu/fetch_wheels.sh`` fills it, well under 64 MiB). It runs
the PyTorch CUDA runtime (``TorchBackend``: fp16, SDPA, NATTEN or the tiled / flex NA kernels)
and writes four results to bench/results/, which ``tessera bench report`` renders:

* ``gpu_parity``: fp16 on the GPU against fp32 on the CPU, three default families, every bucket;
* ``gpu_throughput``: ViT-B/16 fp16 images/s at batch 256, as a fraction of a bf16 matmul rate
  measured in the same run (model FLOPs from the cost model);
* ``gpu_scaling``: Swin-T and NAT-T (tiled and flex kernels) time and peak memory per pixel,
  512² to 2048², relative to 512²;
* ``gpu_slide``: a UNI-style ViT-L/16 tile encoder's tiles/s at batch 256, and what that makes of
  a 15,000-tile slide (the encoder's share: no slide reader runs on the bare host).

``--device cpu --tiny`` runs the same harness on shallow models and small sizes: the tests use it.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["main", "matmul_rate", "median_s", "run", "vit_b16_backbone"]

ROOT = Path(__file__).resolve().parents[2]
SLIDE_TILES = 15_000
_TINY: dict[str, dict[str, Any]] = {
    "vit": {"depth": 1},
    "swin": {"depths": [1, 1, 1, 1]},
    "nat": {"depths": [1, 1, 1, 1]},
}


SCALING_KERNELS: tuple[tuple[str, str | None], ...] = (("swin_tiny", None), ("nat_tiny", "tiled"), ("nat_tiny", "flex"))


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_s(fn: Callable[[], object], device: str, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _model(name: str, tiny: bool, **overrides: Any) -> Any:
    """A default model-repository backbone (seeded random init), shallow with ``tiny``."""
    from service.models import load_model_config
    from service.models._factory import EmbeddingModel, build_from_config

    cfg = load_model_config(ROOT / "model_repo" / name / "config.yaml")
    kwargs = dict(cfg.architecture.kwargs)
    if tiny:
        kwargs.update(_TINY[cfg.family])
    kwargs.update(overrides)
    cfg = cfg.model_copy(update={"architecture": cfg.architecture.model_copy(update={"kwargs": kwargs})})
    return cfg, EmbeddingModel(build_from_config(cfg, ROOT / "model_repo" / name))


def matmul_rate(device: str, n: int, repeats: int) -> float:
    """bf16 matrix-multiply FLOP/s on ``device`` (the roofline the ViT-B goal is a fraction of)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    seconds = median_s(lambda: a @ b, device, repeats)
    return 2 * n**3 / seconds


def parity(device: str, precision: str, tiny: bool) -> dict[str, Any]:
    import numpy as np

    from service.runtime.torch_backend import TorchBackend

    rows = []
    for name in ("vit_small", "swin_tiny", "nat_tiny"):
        cfg, cpu_model = _model(name, tiny)
        _, gpu_model = _model(name, tiny)
        reference = TorchBackend(cpu_model, device="cpu", precision="fp32")
        runner = TorchBackend(gpu_model, device=device, precision=precision)
        buckets = [s for s in cfg.input.buckets if not tiny or s <= 224]
        for side in buckets:
            x = np.random.default_rng(side).standard_normal((2 if side <= 512 else 1, 3, side, side)).astype(np.float32)
            want, got = reference.infer(x).outputs, runner.infer(x).outputs
            rel = max(float(np.abs(got[k] - want[k]).max() / max(float(np.abs(want[k]).max()), 1e-12)) for k in want)
            rows.append({"model": name, "family": cfg.family, "size": side, "precision": precision, "max_rel": rel})
    return {"rows": rows, "summary": {"worst_max_rel": max(r["max_rel"] for r in rows)}}


def vit_b16_backbone(tiny: bool = False) -> tuple[Any, float]:
    """timm's ViT-B/16 (seeded random init, every block on fused attention; one block with
    ``tiny``) and its model FLOPs per 224² image from the cost model."""
    import torch

    from service.models._factory import create_model, facts_from_model, use_fused_attention
    from service.routing.cost import estimate_cost

    torch.manual_seed(0)
    backbone = create_model("vit_base_patch16_224", **({"depth": 1} if tiny else {}))
    use_fused_attention(backbone)
    return backbone, 2e9 * estimate_cost(facts_from_model(backbone, "vit"), 224, 224).gmacs


def vit_b16(
    device: str, precision: str, batch: int, tiny: bool, rate: float, repeats: int, compile: bool = False
) -> dict[str, Any]:
    import numpy as np
    import torch

    from service.models._factory import EmbeddingModel
    from service.runtime.torch_backend import TorchBackend

    backbone, flops_per_image = vit_b16_backbone(tiny)
    runner = TorchBackend(EmbeddingModel(backbone.eval()), device=device, precision=precision)
    on_device = torch.randn(batch, 3, 224, 224, device=device, dtype=runner.dtype)

    def model_only() -> object:
        with torch.inference_mode():
            return runner.model(on_device)

    model_s = median_s(model_only, device, repeats)
    host = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    backend_s = median_s(lambda: runner.infer(host), device, max(2, repeats // 2))

    # The same TorchBackend.infer with the copy it made before the page-locked staging buffer
    # (straight from pageable memory): the one difference between the two rows.
    runner._to_device = lambda pixels: torch.from_numpy(pixels).to(device).to(runner.dtype)  # type: ignore[method-assign]
    pageable_s = median_s(lambda: runner.infer(host), device, max(2, repeats // 2))
    del runner._to_device
    ips = batch / model_s
    rows = [
        {"path": f"model on device ({precision} in, {precision} out)", "batch": batch, "img_per_s": ips},
        {"path": "TorchBackend.infer (host fp32 in and out)", "batch": batch, "img_per_s": batch / backend_s},
        {
            "path": "TorchBackend.infer copying from pageable memory (before staging)",
            "batch": batch,
            "img_per_s": batch / pageable_s,
        },
    ]
    if compile:
        compiled = TorchBackend(EmbeddingModel(backbone.eval()), device=device, precision=precision, compile=True)

        def compiled_only() -> object:
            with torch.inference_mode():
                return compiled._forward(on_device)

        started = time.perf_counter()
        compiled_only()  # the compilation, timed on its own
        _sync(device)
        compile_s = time.perf_counter() - started
        compiled_ips = batch / median_s(compiled_only, device, repeats)
        rows.append(
            {
                "path": "model on device, torch.compile (TorchBackend(compile=True))",
                "batch": batch,
                "img_per_s": compiled_ips,
                "compile_s": compile_s,
                "vs_eager": compiled_ips / ips,
            }
        )
    return {
        "rows": rows,
        "summary": {
            "img_per_s": ips,
            "backend_img_per_s": batch / backend_s,
            "pageable_img_per_s": batch / pageable_s,
            "flops_per_image": flops_per_image,
            "bf16_matmul_flops_per_s": rate,
            "fraction_of_matmul_rate": ips * flops_per_image / rate,
            "precision": precision,
            "batch": batch,
        },
    }


def _peak_bytes(device: str, fn: Callable[[], object]) -> int:
    import torch

    if not device.startswith("cuda"):
        from service.runtime.memory import current_rss_bytes, peak_rss_bytes, reset_peak_rss

        reset_peak_rss()
        before = current_rss_bytes()
        fn()
        return max(0, peak_rss_bytes() - before)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return int(torch.cuda.max_memory_allocated() - before)


def scaling(
    device: str,
    precision: str,
    sizes: list[int],
    tiny: bool,
    repeats: int,
    progress: Callable[[dict[str, Any]], None] | None = None,
    kernels: tuple[tuple[str, str | None], ...] = SCALING_KERNELS,
) -> dict[str, Any]:
    """``progress`` gets the result so far after each kernel (a slow compile cut short keeps the
    rest); the result names the kernels planned and says whether all of them ran."""
    import torch

    from service.runtime.torch_backend import TorchBackend

    rows, summary = [], []
    planned = [f"{name}:{kernel or 'sdpa'}" for name, kernel in kernels]
    for name, kernel in kernels:
        cfg, model = _model(name, tiny)
        if kernel is not None:
            model.backbone.set_attn_backend(kernel)
        runner = TorchBackend(model, device=device, precision=precision)
        points = {}
        for side in sizes:
            x = torch.randn(1, 3, side, side, device=device, dtype=runner.dtype)

            def forward(x: torch.Tensor = x, model: Any = runner.model) -> object:
                with torch.inference_mode():
                    return model(x)

            try:
                seconds = median_s(forward, device, repeats)
                peak = _peak_bytes(device, forward)
            except Exception as exc:  # a kernel that cannot run a size is a row, not a crash
                rows.append({"model": name, "kernel": kernel or "sdpa", "size": side, "error": str(exc)[:200]})
                continue
            points[side] = (seconds / side**2, peak / side**2)
            rows.append(
                {
                    "model": name,
                    "family": cfg.family,
                    "kernel": kernel or "sdpa",
                    "size": side,
                    "latency_ms": seconds * 1e3,
                    "peak_bytes": peak,
                }
            )
        base, top = min(sizes), max(sizes)
        if base in points and top in points:
            summary.append(
                {
                    "model": name,
                    "kernel": kernel or "sdpa",
                    "backend": f"torch[{device}] {precision}",
                    f"time_per_pixel_ratio_{top}_vs_{base}": points[top][0] / points[base][0],
                    f"memory_per_pixel_ratio_{top}_vs_{base}": points[top][1] / max(points[base][1], 1e-12),
                }
            )
        if progress is not None:
            progress({"rows": rows, "summary": summary, "planned": planned, "complete": False})
    return {"rows": rows, "summary": summary, "planned": planned, "complete": True}


def tile_encoder(device: str, precision: str, batch: int, tiny: bool, repeats: int) -> dict[str, Any]:
    import numpy as np
    import torch

    from service.models._factory import EmbeddingModel, create_model, use_fused_attention
    from service.runtime.torch_backend import TorchBackend

    torch.manual_seed(0)
    kwargs: dict[str, Any] = {"init_values": 1e-5, "dynamic_img_size": True, "num_classes": 0}
    backbone = create_model("vit_large_patch16_224", **kwargs, **({"depth": 1} if tiny else {}))
    use_fused_attention(backbone)
    runner = TorchBackend(EmbeddingModel(backbone.eval()), device=device, precision=precision)
    host = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    seconds = median_s(lambda: runner.infer(host), device, repeats)
    tiles_per_s = batch / seconds
    return {
        "rows": [{"encoder": "ViT-L/16 (UNI-style)", "batch": batch, "tiles_per_s": tiles_per_s}],
        "summary": {
            "tiles": SLIDE_TILES,
            "tiles_per_s": tiles_per_s,
            "seconds": SLIDE_TILES / tiles_per_s,
            "scope": "tile encoder only, host fp32 tiles in and embeddings out through TorchBackend.infer; "
            "slide reading and tiling did not run on the bare GPU host",
        },
    }


PARTS = ("throughput", "slide", "parity", "scaling")
_RESULT_NAMES = {"throughput": "gpu_throughput", "slide": "gpu_slide", "parity": "gpu_parity", "scaling": "gpu_scaling"}


def run(
    *,
    device: str,
    tiny: bool,
    out: Path | None = None,
    parts: tuple[str, ...] = PARTS,
    compile: bool = False,
    flex: bool = True,
) -> dict[str, Path]:
    """The parts in the order given; each writes its result as soon as it is done, and a part that
    fails is reported (traceback printed) without stopping the others."""
    import os
    import traceback

    from service.bench._common import write_result

    if out is not None:
        os.environ["TESSERA_BENCH_RESULTS"] = str(out)
    precision = "fp16" if device.startswith("cuda") else "bf16"
    sizes = [64, 128] if tiny else [512, 1024, 1536, 2048]
    repeats = 2 if tiny else 10
    written: dict[str, Path] = {}
    started = time.perf_counter()

    def save(name: str, result: dict[str, Any]) -> None:
        result["device"] = device
        result["elapsed_s"] = round(time.perf_counter() - started, 1)
        written[name] = write_result(name, result)

    def throughput() -> dict[str, Any]:
        rate = matmul_rate(device, 512 if tiny else 8192, repeats * 2)
        return vit_b16(device, precision, 4 if tiny else 256, tiny, rate, repeats, compile=compile)

    steps: dict[str, tuple[str, Callable[[], dict[str, Any]]]] = {
        "throughput": (_RESULT_NAMES["throughput"], throughput),
        "slide": (_RESULT_NAMES["slide"], lambda: tile_encoder(device, precision, 4 if tiny else 256, tiny, repeats)),
        "parity": (_RESULT_NAMES["parity"], lambda: parity(device, precision, tiny)),
        "scaling": (
            _RESULT_NAMES["scaling"],
            lambda: scaling(
                device,
                precision,
                sizes,
                tiny,
                max(2, repeats // 2),
                lambda part: save("gpu_scaling", dict(part)),
                tuple(k for k in SCALING_KERNELS if flex or k[1] != "flex"),
            ),
        ),
    }
    for part in parts:
        name, step = steps[part]
        try:
            result = step()
        except Exception:
            print(f"{name}: FAILED after {time.perf_counter() - started:.0f} s", flush=True)
            traceback.print_exc()
            continue
        save(name, result)
        print(f"{name}: {result.get('summary')} -> {written[name]}", flush=True)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--tiny", action="store_true", help="shallow models, small sizes (the harness check)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: bench/results)")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated, in the order to run (default: {','.join(PARTS)})"
    )
    parser.add_argument("--compile", action="store_true", help="also time ViT-B/16 under torch.compile")
    parser.add_argument(
        "--no-flex", action="store_true", help="leave out NAT's flex-attention kernel (slow to compile)"
    )
    args = parser.parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device visible: this benchmark is for a GPU host (--device cpu --tiny checks it)")
        torch.backends.cuda.matmul.allow_tf32 = True
    parts = tuple(p for p in args.parts.split(",") if p)
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    written = run(
        device=args.device, tiny=args.tiny, out=args.out, parts=parts, compile=args.compile, flex=not args.no_flex
    )
    failed = [p for p in parts if _RESULT_NAMES[p] not in written]
    if failed:
        print(f"failed: {', '.join(failed)} (tracebacks above)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
