"""ONNX → TensorRT plan: FP16, one optimization profile per size bucket, per GPU architecture.

Unverified on the development machines (no GPU, no TensorRT); guarded so that everything else
builds without it. See docs/performance.md.
"""

from __future__ import annotations

import time
from pathlib import Path

from service.export.rows import BuildRow
from service.models import ArtifactRecord, Manifest, ModelConfig
from service.models.manifest import sha256_file

__all__ = ["build_plan", "optimization_profiles", "plan_name"]


def optimization_profiles(buckets: list[int], max_batch: int) -> list[dict[str, tuple[int, int, int, int]]]:
    """One profile per size bucket: (min, opt, max) shapes of ``pixels``.

    Batch ranges from 1 to ``max_batch`` with the optimum at the full batch (what a busy server
    runs); the spatial size is fixed per profile so TensorRT picks tactics for that exact shape.
    """
    if max_batch < 1:
        raise ValueError("max_batch must be >= 1")
    return [
        {"min": (1, 3, size, size), "opt": (max_batch, 3, size, size), "max": (max_batch, 3, size, size)}
        for size in sorted(set(buckets))
    ]


def plan_name(compute_capability: tuple[int, int]) -> str:
    """Plans are specific to a GPU architecture; the name says which (``model.sm90.plan``)."""
    return f"model.sm{compute_capability[0]}{compute_capability[1]}.plan"


def build_plan(version_dir: Path, manifest: Manifest, cfg: ModelConfig) -> BuildRow:
    from service.runtime.tensorrt import tensorrt_available

    if not tensorrt_available():
        return BuildRow(cfg.name, "tensorrt", "skipped", note="TensorRT or a CUDA GPU is not available here")
    import tensorrt as trt
    import torch

    start = time.perf_counter()
    onnx_path = version_dir / manifest.artifacts["onnx"].file
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        return BuildRow(cfg.name, "tensorrt", "failed", note=f"ONNX parse failed: {errors}"[:300])
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 8 << 30)
    profiles = optimization_profiles(cfg.input.buckets, cfg.batching.max_batch_size)
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        profile.set_shape("pixels", shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        return BuildRow(cfg.name, "tensorrt", "failed", note="TensorRT builder returned no plan")
    capability = torch.cuda.get_device_capability()
    dst = version_dir / plan_name(capability)
    dst.write_bytes(bytes(serialized))
    seconds = time.perf_counter() - start
    manifest.artifacts["tensorrt"] = ArtifactRecord.model_validate(
        {
            "file": dst.name,
            "sha256": sha256_file(dst),
            "bytes": dst.stat().st_size,
            "precision": "fp16",
            "kind": "tensorrt",
            "input_sizes": cfg.input.buckets,
            "dynamic_axes": ["batch"],
            "build_s": round(seconds, 2),
            "profiles": [{k: list(v) for k, v in p.items()} for p in profiles],
            "gpu": torch.cuda.get_device_name(),
            "compute_capability": list(capability),
        }
    )
    manifest.versions["tensorrt"] = trt.__version__
    return BuildRow(cfg.name, "tensorrt", "built", None, seconds)
