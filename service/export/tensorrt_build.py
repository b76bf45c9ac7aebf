"""fp16 ONNX → TensorRT plan: strongly typed, one optimization profile per size bucket, per GPU.

The plan is built from ``model.fp16.onnx`` (standard ONNX ops only; ONNX Runtime's optimised
``model.onnx`` holds ``com.microsoft`` ops TensorRT's parser cannot import). The network is
strongly typed, so precision comes from the graph's own types: that is the only way TensorRT 11
builds fp16 (it removed ``BuilderFlag.FP16``), and TensorRT 10 builds the same plan. A plan is
tied to the TensorRT version and the GPU architecture that built it: both are in its record and
its fingerprint, and the loader refuses a plan that does not match (``runtime.tensorrt``).

Unverified on the development machines (no GPU, no TensorRT): everything up to the builder call
is tested with a stand-in ``tensorrt`` module; docs/performance.md says what has not run.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import onnx

from service.export.onnx_export import nonstandard_domains
from service.export.rows import BuildRow
from service.models import ArtifactRecord, Manifest, ModelConfig
from service.models.manifest import sha256_file
from service.runtime.profiles import Profile, optimization_profiles

__all__ = ["build_plan", "plan_fingerprint", "plan_name"]

log = logging.getLogger(__name__)

#: Builder workspace (scratch memory for tactics).
WORKSPACE_BYTES = 8 << 30


def plan_name(compute_capability: tuple[int, int]) -> str:
    """Plans are specific to a GPU architecture; the name says which (``model.sm90.plan``)."""
    return f"model.sm{compute_capability[0]}{compute_capability[1]}.plan"


def plan_fingerprint(manifest: Manifest, trt_version: str, compute_capability: tuple[int, int], profiles: Any) -> str:
    """What a plan depends on: the ONNX build, the fp16 graph, TensorRT's version, the GPU, the profiles."""
    digest = hashlib.sha256()
    digest.update(manifest.config_sha256.encode())
    digest.update(manifest.artifacts["onnx_fp16"].sha256.encode())
    digest.update(f"trt={trt_version};sm={compute_capability[0]}.{compute_capability[1]};{profiles!r}".encode())
    return digest.hexdigest()


def _timing_cache_path() -> Path:
    from service.settings import ServerSettings

    return Path(ServerSettings.from_env().trt_cache_dir) / "timing.cache"


def build_plan(version_dir: Path, manifest: Manifest, cfg: ModelConfig, *, force: bool = False) -> BuildRow:
    """Build (or keep) the plan for this GPU; every failure is a ``failed`` row with its reason."""
    from service.runtime.tensorrt import compute_capability, tensorrt_status

    status = tensorrt_status()
    if not status.ok:
        return BuildRow(cfg.name, "tensorrt", "skipped", note=status.reason)
    if "onnx_fp16" not in manifest.artifacts:
        return BuildRow(cfg.name, "tensorrt", "failed", note="no fp16 ONNX artifact to build from")
    source = version_dir / manifest.artifacts["onnx_fp16"].file
    foreign = nonstandard_domains(onnx.load(str(source), load_external_data=False))
    if foreign:
        return BuildRow(cfg.name, "tensorrt", "failed", note=f"graph holds non-standard ops ({sorted(foreign)})")
    capability = compute_capability()
    profiles = optimization_profiles(cfg.input.buckets, cfg.artifacts.tensorrt_max_batch, cfg.input.native_size)
    fingerprint = plan_fingerprint(manifest, status.version, capability, profiles)
    current = manifest.artifacts.get("tensorrt")
    recorded = (current.model_extra or {}).get("plan_sha") if current is not None else None
    if not force and current is not None and recorded == fingerprint and (version_dir / current.file).exists():
        return BuildRow(cfg.name, "tensorrt", "up-to-date")
    start = time.perf_counter()
    try:
        serialized = _build_serialized(source, profiles)
    except Exception as exc:  # a builder error is a row in the table, not a traceback
        log.warning("%s: TensorRT build failed: %s", cfg.name, exc)
        return BuildRow(cfg.name, "tensorrt", "failed", note=f"{type(exc).__name__}: {exc}"[:300])
    dst = version_dir / plan_name(capability)
    dst.write_bytes(serialized)
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
            "gpu": status.device_name,
            "compute_capability": list(capability),
            "tensorrt_version": status.version,
            "plan_sha": fingerprint,
            "source": manifest.artifacts["onnx_fp16"].file,
        }
    )
    manifest.versions["tensorrt"] = status.version
    return BuildRow(cfg.name, "tensorrt", "built", None, seconds)


def _build_serialized(source: Path, profiles: list[Profile]) -> bytes:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is None:
        raise RuntimeError(f"TensorRT {trt.__version__} cannot build strongly typed networks; TensorRT >= 10 is needed")
    network = builder.create_network(1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"ONNX parse failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    cache_path = _timing_cache_path()
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, False)
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        profile.set_shape("pixels", shapes["min"], shapes["opt"], shapes["max"])
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT's builder returned no plan (see the TensorRT log above)")
    try:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(bytes(cache.serialize()))
        tmp.replace(cache_path)
    except OSError as exc:  # a read-only cache folder costs the next build time, nothing else
        log.warning("could not save TensorRT's timing cache to %s: %s", cache_path, exc)
    return bytes(serialized)
