"""The FP16 artifact: fp16 weights and activations, fp32 inputs and outputs, standard ops only.

It is converted from the exported graph before ONNX Runtime's transformer optimizer touches it,
so it holds only standard ONNX operators: ONNX Runtime's CUDA and TensorRT providers run it, and
TensorRT builds its strongly typed plan from it (``tensorrt_build``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from torch import nn

from service.export.onnx_export import artifact_files, count_fused, nonstandard_domains, remove_onnx, save_onnx
from service.export.parity import onnx_parity
from service.export.rows import BuildRow
from service.models import ArtifactRecord, Manifest

__all__ = ["FP16_PARITY_RTOL", "build_fp16", "convert_fp16", "fp16_parity_bound"]

#: Largest accepted ``max|fp16 - fp32| / max|fp32|`` per output, against the PyTorch fp32 model,
#: per family. fp16 keeps ~3 decimal digits; measured on the default models at every bucket up to
#: 2048² (their manifests, 2026-12-03): ViT-S 9.2e-4, Swin-T 7.9e-4, NAT-T 7.1e-4. The bounds
#: leave 10x room for other weights and deeper checkpoints.
FP16_PARITY_RTOL: dict[str, float] = {"vit": 1e-2, "swin": 1e-2, "nat": 1e-2}


def fp16_parity_bound(family: str) -> float:
    return FP16_PARITY_RTOL.get(family, 2e-2)


def convert_fp16(src: Path, dst: Path, *, external_data: bool = False) -> None:
    """``src`` in fp16 at ``dst``. With ``external_data`` (``src`` has its weights beside it) the
    converter reads the file itself (ONNX's in-memory shape inference stops at 2 GiB; its
    path-based one does not) and ``dst`` keeps its weights in its own data file."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model: onnx.ModelProto | str = str(src) if external_data else onnx.load(str(src))
    # keep_io_types adds the casts so that clients send and receive fp32 exactly as with the fp32
    # artifact. Reductions stay accurate inside the kernels: ONNX Runtime's and TensorRT's
    # LayerNormalization accumulate in fp32, and the fused Attention op's softmax runs in fp32
    # (the CPU kernel upcasts; flash / memory-efficient kernels accumulate in fp32).
    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    save_onnx(converted, dst, external_data=external_data)


def build_fp16(
    model: nn.Module,
    src_path: Path,
    version_dir: Path,
    manifest: Manifest,
    sizes: Sequence[int],
    rng: np.random.Generator,
    *,
    family: str,
    external_data: bool = False,
    progress: Callable[[str], None] = lambda phase: None,
) -> BuildRow:
    """Convert ``src_path`` (the standard-ops export) to fp16 and check it against PyTorch fp32."""
    start = time.perf_counter()
    dst = version_dir / "model.fp16.onnx"
    progress("fp16: convert")
    convert_fp16(src_path, dst, external_data=external_data)
    graph = onnx.load(str(dst), load_external_data=False)
    bound = fp16_parity_bound(family)
    parity: dict[str, Any]
    try:
        parity = onnx_parity(
            model,
            dst,
            sizes,
            rng=rng,
            providers=["CPUExecutionProvider"],
            on_size=lambda size: progress(f"fp16: parity at {size}²"),
        )
    except Exception as exc:  # an fp16 kernel missing on this provider is a failed build, said plainly
        parity = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    seconds = time.perf_counter() - start
    rel = parity.get("max_rel")
    ok = isinstance(rel, float) and rel <= bound
    if not ok:
        remove_onnx(dst)
        note = f"fp16 relative error {rel:.2e} > {bound:.0e}" if isinstance(rel, float) else str(parity["error"])
        return BuildRow(manifest.model, "onnx_fp16", "failed", None, seconds, note)
    fused = count_fused(graph)
    fused["attention_blocks"] = manifest.artifacts["onnx"].fused.get("attention_blocks", 0)
    manifest.artifacts["onnx_fp16"] = ArtifactRecord(
        **artifact_files(dst),
        precision="fp16",
        kind="onnx",
        opset=manifest.artifacts["onnx"].opset,
        input_sizes=list(sizes),
        dynamic_axes=manifest.artifacts["onnx"].dynamic_axes,
        parity={**parity, "rtol_bound": bound, "reference": "pytorch fp32"},
        fused=fused,
        optimizer={"applied": False, "reason": "standard ops only (CUDA, TensorRT)"},
        domains=sorted(nonstandard_domains(graph)),
        build_s=round(seconds, 2),
    )
    return BuildRow(manifest.model, "onnx_fp16", "built", parity["max_abs"], seconds)
