"""The FP16 artifact: fp16 weights and activations, fp32 inputs and outputs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from torch import nn

from service.export.parity import onnx_parity
from service.export.rows import BuildRow
from service.models import ArtifactRecord, Manifest
from service.models.manifest import sha256_file

__all__ = ["FP16_PARITY_RTOL", "build_fp16", "convert_fp16"]

#: fp16 keeps ~3 decimal digits; across a 12-block transformer, 2% of the output range is the bound.
FP16_PARITY_RTOL = 2e-2


def convert_fp16(src: Path, dst: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    # LayerNorm/Softmax reductions stay in fp32 inside ORT's fused kernels; keep_io_types adds the
    # casts so that clients send and receive fp32 exactly as with the fp32 artifact.
    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    onnx.save(converted, str(dst))


def build_fp16(
    model: nn.Module,
    fp32_path: Path,
    version_dir: Path,
    manifest: Manifest,
    sizes: Sequence[int],
    rng: np.random.Generator,
) -> BuildRow:

    start = time.perf_counter()
    dst = version_dir / "model.fp16.onnx"
    convert_fp16(fp32_path, dst)
    note = ""
    parity: dict[str, Any]
    try:
        parity = onnx_parity(model, dst, sizes, rng=rng, providers=["CPUExecutionProvider"])
    except Exception as exc:  # an fp16 kernel missing on this provider is a finding, not a crash
        parity = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        note = "parity not checked on this host"
    seconds = time.perf_counter() - start
    rel = parity.get("max_rel")
    ok = isinstance(rel, float) and rel <= FP16_PARITY_RTOL
    record = ArtifactRecord(
        file=dst.name,
        sha256=sha256_file(dst),
        bytes=dst.stat().st_size,
        precision="fp16",
        kind="onnx",
        opset=manifest.artifacts["onnx"].opset,
        input_sizes=list(sizes),
        dynamic_axes=manifest.artifacts["onnx"].dynamic_axes,
        parity={**parity, "rtol_bound": FP16_PARITY_RTOL},
        build_s=round(seconds, 2),
    )
    manifest.artifacts["onnx_fp16"] = record
    max_abs = parity.get("max_abs")
    status = "built" if ok else ("built" if note else "failed")
    if not ok and not note:
        note = f"fp16 relative error {rel:.2e} > {FP16_PARITY_RTOL:.0e}"
    return BuildRow(manifest.model, "onnx_fp16", status, max_abs if isinstance(max_abs, float) else None, seconds, note)
