"""``tessera build``: export what each config asks for, check it against PyTorch, write the manifest."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from service.export.onnx_export import count_fused, export_onnx, optimize_onnx
from service.export.parity import onnx_parity
from service.export.rows import BuildRow
from service.models import ArtifactRecord, Manifest, ModelConfig, ModelRepository
from service.models._factory import EmbeddingModel, build_from_config, facts_from_model
from service.models.manifest import sha256_file
from service.models.meta import ArchFacts

__all__ = ["BuildRow", "build_model", "build_repository", "config_fingerprint"]

log = logging.getLogger(__name__)

#: Bump when the artifact layout or export recipe changes, so old builds are rebuilt.
BUILD_RECIPE = 4


#: Config sections that only shape serving, never an artifact: changing them rebuilds nothing.
SERVING_ONLY = frozenset({"batching", "description"})


def config_fingerprint(cfg: ModelConfig, config_dir: Path, *, fp16: bool, tensorrt: bool) -> str:
    """Hash of everything an artifact depends on: config (less its serving-only sections),
    checkpoint bytes, recipe, requested artifacts and the exporting packages' versions."""
    digest = hashlib.sha256()
    exported = cfg.model_dump(mode="json", exclude=set(SERVING_ONLY))
    digest.update(json.dumps(exported, sort_keys=True, separators=(",", ":")).encode())
    digest.update(f"recipe={BUILD_RECIPE};fp16={fp16};trt={tensorrt}".encode())
    for pkg in ("torch", "timm", "onnx", "onnxruntime"):
        digest.update(f"{pkg}={_version(pkg)}".encode())
    if cfg.weights.source == "file" and cfg.weights.path:
        ckpt = Path(cfg.weights.path)
        ckpt = ckpt if ckpt.is_absolute() else config_dir / ckpt
        digest.update(sha256_file(ckpt).encode())
    return digest.hexdigest()


def _version(pkg: str) -> str:
    for name in (pkg, f"{pkg}-gpu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "absent"


def _up_to_date(manifest: Manifest | None, fingerprint: str, version_dir: Path) -> bool:
    if manifest is None or manifest.config_sha256 != fingerprint or not manifest.artifacts:
        return False
    for record in manifest.artifacts.values():
        path = version_dir / record.file
        if not path.exists() or path.stat().st_size != record.bytes:
            return False
    return True


def _gmacs(facts: ArchFacts, size: int) -> float:
    """Analytic GMACs (the router's cost model). PyTorch's FlopCounter cannot be used on real
    tensors here: it misses fused CPU attention kernels and the gather-based NA kernel."""
    from service.routing.cost import estimate_cost

    return float(estimate_cost(facts, size, size).gmacs)


def _optimize(raw: Path, final: Path, cfg: ModelConfig, facts: ArchFacts) -> tuple[dict[str, int], dict[str, Any]]:
    """ORT's transformer optimizer when it works on this graph; the exported graph when it does not.

    A failure is recorded in the manifest (and the session still applies ORT's generic fusions at
    load time): an optimizer that silently does nothing is a finding to report, not to hide.
    """
    if not cfg.artifacts.optimize:
        raw.replace(final)
        return count_fused(onnx.load(str(final), load_external_data=False)), {"applied": False, "reason": "disabled"}
    try:
        fused = optimize_onnx(raw, final, family=cfg.family, num_heads=facts.num_heads[0], hidden_size=facts.dims[0])
    except Exception as exc:
        log.warning("%s: ORT transformer optimizer failed (%s); keeping the exported graph", cfg.name, exc)
        raw.replace(final)
        fused = count_fused(onnx.load(str(final), load_external_data=False))
        return fused, {"applied": False, "reason": f"optimizer failed: {type(exc).__name__}: {exc}"[:400]}
    raw.unlink()
    return fused, {"applied": True, "model_type": cfg.family}


def build_model(
    repo: ModelRepository, name: str, *, fp16: bool | None = None, tensorrt: bool | None = None, force: bool = False
) -> list[BuildRow]:
    """Build one model's artifacts; skip them when the manifest says they are current."""
    cfg = repo.config(name)
    model_dir = repo.model_dir(name)
    version_dir = repo.version_dir(name)
    want_fp16 = cfg.artifacts.fp16 if fp16 is None else fp16
    want_trt = cfg.artifacts.tensorrt if tensorrt is None else tensorrt
    fingerprint = config_fingerprint(cfg, model_dir, fp16=want_fp16, tensorrt=want_trt)
    existing = repo.manifest(name)
    if not force and _up_to_date(existing, fingerprint, version_dir):
        assert existing is not None
        return [
            BuildRow(name, key, "up-to-date", rec.parity.get("max_abs"), 0.0) for key, rec in existing.artifacts.items()
        ]

    version_dir.mkdir(parents=True, exist_ok=True)
    rows: list[BuildRow] = []
    torch.set_grad_enabled(False)
    backbone = build_from_config(cfg, model_dir)
    wrapped = EmbeddingModel(backbone).eval()
    facts = facts_from_model(backbone, cfg.family, cfg)
    buckets = cfg.input.buckets
    dynamic_hw = len(buckets) > 1
    manifest = Manifest(
        model=name,
        version=cfg.version,
        config_sha256=fingerprint,
        weights="trained" if cfg.trained else "untrained",
        arch=facts.to_dict(),
        params=facts.params,
        gmacs_native=round(_gmacs(facts, cfg.input.native_size), 4),
        native_size=cfg.input.native_size,
        versions={pkg: _version(pkg) for pkg in ("torch", "timm", "onnx", "onnxruntime", "onnxscript")},
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    manifest.versions["exporter"] = "torch.onnx dynamo"
    manifest.versions["tessera_recipe"] = str(BUILD_RECIPE)

    rng = np.random.default_rng(cfg.weights.seed)
    if cfg.artifacts.onnx:
        start = time.perf_counter()
        raw = version_dir / "model.raw.onnx"
        final = version_dir / "model.onnx"
        axes = export_onnx(
            wrapped,
            raw,
            size=(buckets[0], buckets[0]),
            opset=cfg.artifacts.opset,
            dynamic_hw=dynamic_hw,
            max_batch=max(1024, cfg.batching.max_batch_size),
        )
        fused, optimizer = _optimize(raw, final, cfg, facts)
        parity = onnx_parity(wrapped, final, buckets, rng=rng, providers=["CPUExecutionProvider"])
        seconds = time.perf_counter() - start
        record = ArtifactRecord(
            file=final.name,
            sha256=sha256_file(final),
            bytes=final.stat().st_size,
            precision="fp32",
            kind="onnx",
            opset=cfg.artifacts.opset,
            input_sizes=buckets,
            dynamic_axes=axes,
            parity=parity,
            fused=fused,
            optimizer=optimizer,
            build_s=round(seconds, 2),
        )
        ok = parity["max_abs"] <= cfg.artifacts.parity_atol
        rows.append(
            BuildRow(
                name,
                "onnx",
                "built" if ok else "failed",
                parity["max_abs"],
                seconds,
                "" if ok else f"parity {parity['max_abs']:.2e} > {cfg.artifacts.parity_atol:.0e}",
            )
        )
        if not ok:
            raise RuntimeError(
                f"{name}: ONNX parity {parity['max_abs']:.3e} exceeds "
                f"{cfg.artifacts.parity_atol:.0e}; artifact not recorded"
            )
        manifest.artifacts["onnx"] = record

        if want_fp16:
            from service.export.fp16 import build_fp16

            rows.append(build_fp16(wrapped, final, version_dir, manifest, buckets, rng))
    if want_trt:
        from service.export.tensorrt_build import build_plan

        rows.append(build_plan(version_dir, manifest, cfg))
    manifest.write(version_dir / "manifest.json")
    return rows


def build_repository(repo: ModelRepository, models: list[str] | None = None, **kwargs: bool | None) -> list[BuildRow]:
    rows: list[BuildRow] = []
    for name in models or repo.names():
        rows.extend(build_model(repo, name, **kwargs))  # type: ignore[arg-type]
    return rows
