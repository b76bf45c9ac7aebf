"""``tessera build``: export what each config asks for, check it against PyTorch, write the manifest."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import torch

from service.export.fingerprint import BUILD_RECIPE, config_fingerprint, package_version, up_to_date
from service.export.onnx_export import (
    EXTERNAL_DATA_BYTES,
    artifact_files,
    copy_onnx,
    count_fused,
    export_onnx,
    nonstandard_domains,
    optimize_onnx,
    remove_onnx,
)
from service.export.parity import onnx_parity
from service.export.rows import BuildRow
from service.models import ArtifactRecord, Manifest, ModelConfig, ModelRepository
from service.models._factory import EmbeddingModel, build_from_config, facts_from_model
from service.models.meta import ArchFacts

__all__ = ["BuildEstimate", "BuildRow", "Progress", "build_model", "build_repository", "config_fingerprint"]


class Progress(Protocol):
    """Called as a build moves on: the model, the phase it enters, and the estimated seconds left
    (``None`` until the first parity check has been timed). ``tessera build`` prints it."""

    def __call__(self, model: str, phase: str, eta_s: float | None = None) -> None: ...


def _quiet(model: str, phase: str, eta_s: float | None = None) -> None:
    pass


class BuildEstimate:
    """Seconds left in a build, from its parity checks: each runs PyTorch and ONNX Runtime at one
    size bucket, their cost follows the analytic GMACs at that size, and they are most of a
    build's time. The rate measured on the checks done so far prices the checks still ahead
    (fp32, then fp16 when it is built); export and conversion are not priced, so the estimate is
    low by about an export until the last check."""

    def __init__(self, model: str, facts: ArchFacts, buckets: list[int], passes: int, progress: Progress):
        self.model = model
        self.progress = progress
        self.weights = {size: _gmacs(facts, size) for size in buckets}
        self.total = sum(self.weights.values()) * passes
        self.done = 0.0
        self.spent = 0.0
        self._current: tuple[int, float] | None = None

    def __call__(self, phase: str) -> None:
        now = time.perf_counter()
        if self._current is not None:
            size, started = self._current
            self.done += self.weights.get(size, 0.0)
            self.spent += now - started
            self._current = None
        match = re.search(r"parity at (\d+)²", phase)
        if match:
            self._current = (int(match[1]), now)
        eta = self.spent / self.done * max(0.0, self.total - self.done) if self.done else None
        self.progress(self.model, phase, eta)


log = logging.getLogger(__name__)


def _gmacs(facts: ArchFacts, size: int) -> float:
    """Analytic GMACs (the router's cost model). PyTorch's FlopCounter cannot be used on real
    tensors here: it misses fused CPU attention kernels and the gather-based NA kernel."""
    from service.routing.cost import estimate_cost

    return float(estimate_cost(facts, size, size).gmacs)


def _optimize(
    raw: Path, final: Path, cfg: ModelConfig, facts: ArchFacts, *, external_data: bool = False
) -> tuple[dict[str, int], dict[str, Any]]:
    """ORT's transformer optimizer when it works on this graph; the exported graph when it does not.

    ``raw`` is left in place: it is the standard-ops graph the fp16 artifact (and from it TensorRT)
    is made from. A failure is recorded in the manifest (and the session still applies ORT's
    generic fusions at load time): an optimizer that silently does nothing is a finding to report.
    """
    if not cfg.artifacts.optimize:
        copy_onnx(raw, final, external_data=external_data)
        return count_fused(onnx.load(str(final), load_external_data=False)), {"applied": False, "reason": "disabled"}
    try:
        fused = optimize_onnx(
            raw,
            final,
            family=cfg.family,
            num_heads=facts.num_heads[0],
            hidden_size=facts.dims[0],
            external_data=external_data,
        )
    except Exception as exc:
        log.warning("%s: ORT transformer optimizer failed (%s); keeping the exported graph", cfg.name, exc)
        copy_onnx(raw, final, external_data=external_data)
        fused = count_fused(onnx.load(str(final), load_external_data=False))
        return fused, {"applied": False, "reason": f"optimizer failed: {type(exc).__name__}: {exc}"[:400]}
    return fused, {"applied": True, "model_type": cfg.family}


def attention_blocks(facts: ArchFacts) -> int:
    """Attention blocks in the architecture: each should be one fused attention op when exported."""
    return int(sum(facts.depths))


def build_model(
    repo: ModelRepository,
    name: str,
    *,
    fp16: bool | None = None,
    tensorrt: bool | None = None,
    force: bool = False,
    progress: Progress = _quiet,
) -> list[BuildRow]:
    """Build one model's artifacts; skip them when the manifest says they are current.

    A TensorRT plan needs the fp16 graph, so asking for one builds fp16 too. A plan is built (or
    rebuilt for another TensorRT version or GPU) without touching current ONNX artifacts, and a
    plain build keeps a plan that is still valid.
    """
    cfg = repo.config(name)
    model_dir = repo.model_dir(name)
    version_dir = repo.version_dir(name)
    want_trt = cfg.artifacts.tensorrt if tensorrt is None else tensorrt
    want_fp16 = (cfg.artifacts.fp16 if fp16 is None else fp16) or want_trt
    fingerprint = config_fingerprint(cfg, model_dir)
    existing = repo.manifest(name)
    if not force and up_to_date(existing, fingerprint, version_dir, fp16=want_fp16):
        assert existing is not None
        return _up_to_date(name, version_dir, existing, cfg, want_trt, progress)

    progress(name, "load weights")
    version_dir.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)
    backbone = build_from_config(cfg, model_dir)
    wrapped = EmbeddingModel(backbone).eval()
    facts = facts_from_model(backbone, cfg.family, cfg)
    rng = np.random.default_rng(cfg.weights.seed)
    buckets = cfg.input.buckets
    if existing is not None and not force and want_fp16 and up_to_date(existing, fingerprint, version_dir, fp16=False):
        # Built without fp16 (``tessera serve --build`` serves the fp32 graph first): add it alone.
        step = BuildEstimate(name, facts, buckets, 1, progress)
        return _add_fp16(wrapped, version_dir, existing, cfg, rng, step, want_trt)

    step = BuildEstimate(name, facts, buckets, 2 if want_fp16 else 1, progress)
    manifest = _new_manifest(cfg, fingerprint, facts)
    rows = _build_graphs(wrapped, version_dir, manifest, cfg, facts, rng, step, want_fp16) if cfg.artifacts.onnx else []
    _keep_plan(existing, manifest, version_dir)
    if want_trt:
        step("tensorrt plan")
        rows.append(_plan(version_dir, manifest, cfg, force=force))
    manifest.write(version_dir / "manifest.json")
    return rows


def _up_to_date(
    name: str, version_dir: Path, existing: Manifest, cfg: ModelConfig, want_trt: bool, progress: Progress
) -> list[BuildRow]:
    """The current artifacts as ``up-to-date`` rows, no model loaded; the TensorRT plan built or
    checked when asked for (it may be missing, or made for another TensorRT version or GPU)."""
    current = [
        BuildRow(name, key, "up-to-date", rec.parity.get("max_abs"), 0.0)
        for key, rec in existing.artifacts.items()
        if rec.kind != "tensorrt"
    ]
    if want_trt:
        progress(name, "tensorrt plan")
        current.append(_plan(version_dir, existing, cfg, force=False))
        existing.write(version_dir / "manifest.json")
    return current


def _add_fp16(
    wrapped: EmbeddingModel,
    version_dir: Path,
    existing: Manifest,
    cfg: ModelConfig,
    rng: np.random.Generator,
    step: Callable[[str], None],
    want_trt: bool,
) -> list[BuildRow]:
    """The fp16 artifact added to a current fp32 build, whose ``model.onnx`` is kept as it is: export
    the standard-ops graph again, convert and check it; then the TensorRT plan when asked for and
    fp16 did not fail. The rows of what was added."""
    raw = version_dir / "model.raw.onnx"
    external = needs_external_data(cfg, wrapped)
    try:
        _export_raw(wrapped, raw, cfg, step, external_data=external)
        row = _fp16_artifact(wrapped, raw, version_dir, existing, cfg, rng, step, external)
    finally:
        remove_onnx(raw)
    added = [row]
    if want_trt and row.status != "failed":
        step("tensorrt plan")
        added.append(_plan(version_dir, existing, cfg, force=False))
    existing.write(version_dir / "manifest.json")
    return added


def _build_graphs(
    wrapped: EmbeddingModel,
    version_dir: Path,
    manifest: Manifest,
    cfg: ModelConfig,
    facts: ArchFacts,
    rng: np.random.Generator,
    step: Callable[[str], None],
    want_fp16: bool,
) -> list[BuildRow]:
    """``model.onnx`` and, when asked for, ``model.fp16.onnx``, both from one standard-ops export
    (removed after)."""
    raw = version_dir / "model.raw.onnx"
    external = needs_external_data(cfg, wrapped)
    rows: list[BuildRow] = []
    try:
        rows.append(_build_onnx(wrapped, raw, version_dir, manifest, cfg, facts, rng, step, external))
        if want_fp16:
            rows.append(_fp16_artifact(wrapped, raw, version_dir, manifest, cfg, rng, step, external))
    finally:
        remove_onnx(raw)
    return rows


def _fp16_artifact(
    wrapped: EmbeddingModel,
    raw: Path,
    version_dir: Path,
    manifest: Manifest,
    cfg: ModelConfig,
    rng: np.random.Generator,
    step: Callable[[str], None],
    external_data: bool,
) -> BuildRow:
    """``model.fp16.onnx``: the standard-ops graph at ``raw`` converted to fp16 and checked at every bucket."""
    from service.export.fp16 import build_fp16

    return build_fp16(
        wrapped,
        raw,
        version_dir,
        manifest,
        cfg.input.buckets,
        rng,
        family=cfg.family,
        external_data=external_data,
        progress=step,
    )


def needs_external_data(cfg: ModelConfig, model: torch.nn.Module) -> bool:
    """Whether the graphs keep their weights in a ``.data`` file: asked for, or fp32 weights above
    ``EXTERNAL_DATA_BYTES`` (a ViT-H or ViT-g: a single protobuf cannot hold them)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    return cfg.artifacts.external_data or weights > EXTERNAL_DATA_BYTES


def _new_manifest(cfg: ModelConfig, fingerprint: str, facts: ArchFacts) -> Manifest:
    manifest = Manifest(
        model=cfg.name,
        version=cfg.version,
        config_sha256=fingerprint,
        weights="trained" if cfg.trained else "untrained",
        arch=facts.to_dict(),
        params=facts.params,
        gmacs_native=round(_gmacs(facts, cfg.input.native_size), 4),
        native_size=cfg.input.native_size,
        versions={pkg: package_version(pkg) for pkg in ("torch", "timm", "onnx", "onnxruntime", "onnxscript")},
        built_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    manifest.versions["exporter"] = "torch.onnx dynamo"
    manifest.versions["tessera_recipe"] = str(BUILD_RECIPE)
    return manifest


def _build_onnx(
    wrapped: EmbeddingModel,
    raw: Path,
    version_dir: Path,
    manifest: Manifest,
    cfg: ModelConfig,
    facts: ArchFacts,
    rng: np.random.Generator,
    step: Callable[[str], None],
    external_data: bool,
) -> BuildRow:
    """Export (standard ops, left at ``raw``), optimise for ONNX Runtime, check parity: ``model.onnx``."""
    start = time.perf_counter()
    buckets = cfg.input.buckets
    final = version_dir / "model.onnx"
    axes = _export_raw(wrapped, raw, cfg, step, external_data=external_data)
    step("optimise for ONNX Runtime")
    fused, optimizer = _optimize(raw, final, cfg, facts, external_data=external_data)
    fused["attention_blocks"] = attention_blocks(facts)
    parity = onnx_parity(
        wrapped,
        final,
        buckets,
        rng=rng,
        providers=["CPUExecutionProvider"],
        on_size=lambda size: step(f"parity at {size}²"),
    )
    seconds = time.perf_counter() - start
    manifest.artifacts["onnx"] = ArtifactRecord(
        **artifact_files(final),
        precision="fp32",
        kind="onnx",
        opset=cfg.artifacts.opset,
        input_sizes=buckets,
        dynamic_axes=axes,
        parity=parity,
        fused=fused,
        optimizer=optimizer,
        domains=sorted(nonstandard_domains(onnx.load(str(final), load_external_data=False))),
        build_s=round(seconds, 2),
    )
    if parity["max_abs"] > cfg.artifacts.parity_atol:
        del manifest.artifacts["onnx"]
        raise RuntimeError(
            f"{cfg.name}: ONNX parity {parity['max_abs']:.3e} exceeds "
            f"{cfg.artifacts.parity_atol:.0e}; artifact not recorded"
        )
    return BuildRow(cfg.name, "onnx", "built", parity["max_abs"], seconds)


def _export_raw(
    wrapped: EmbeddingModel, raw: Path, cfg: ModelConfig, step: Callable[[str], None], *, external_data: bool = False
) -> list[str]:
    """The standard-ops export every artifact is made from (dynamic batch, and H/W with buckets)."""
    buckets = cfg.input.buckets
    step(f"export (opset {cfg.artifacts.opset}, dynamic {'batch, height, width' if len(buckets) > 1 else 'batch'})")
    return export_onnx(
        wrapped,
        raw,
        size=(buckets[0], buckets[0]),
        opset=cfg.artifacts.opset,
        dynamic_hw=len(buckets) > 1,
        max_batch=max(1024, cfg.batching.max_batch_size),
        external_data=external_data,
    )


def _keep_plan(old: Manifest | None, new: Manifest, version_dir: Path) -> None:
    """A rebuild that produced the same graphs keeps the plan built from them (it is still valid)."""
    plan = old.artifacts.get("tensorrt") if old is not None else None
    if plan is None or not (version_dir / plan.file).exists() or "onnx_fp16" not in new.artifacts:
        return
    source = old.artifacts.get("onnx_fp16") if old is not None else None
    same_config = old is not None and old.config_sha256 == new.config_sha256
    if same_config and source is not None and source.sha256 == new.artifacts["onnx_fp16"].sha256:
        new.artifacts["tensorrt"] = plan
        if old is not None and "tensorrt" in old.versions:
            new.versions["tensorrt"] = old.versions["tensorrt"]


def _plan(version_dir: Path, manifest: Manifest, cfg: ModelConfig, *, force: bool) -> BuildRow:
    from service.export.tensorrt_build import build_plan

    return build_plan(version_dir, manifest, cfg, force=force)


def build_repository(
    repo: ModelRepository,
    models: list[str] | None = None,
    *,
    progress: Progress = _quiet,
    **kwargs: bool | None,
) -> list[BuildRow]:
    """Build every model (or ``models``); a model that fails is a ``failed`` row and the rest go on."""
    rows: list[BuildRow] = []
    for name in models or repo.names():
        try:
            rows.extend(build_model(repo, name, progress=progress, **kwargs))  # type: ignore[arg-type]
        except Exception as exc:
            log.warning("%s: build failed: %s", name, exc)
            rows.append(BuildRow(name, "onnx", "failed", note=f"{type(exc).__name__}: {exc}"[:300]))
    return rows
