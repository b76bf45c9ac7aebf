"""Whether a model's build is current, without PyTorch: what ``tessera build`` compares before
building, and what ``tessera serve --build`` checks to know which models to (re)build."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path

from service.models import Manifest, ModelConfig, ModelRepository
from service.models.manifest import sha256_file

__all__ = ["BUILD_RECIPE", "SERVING_ONLY", "config_fingerprint", "is_current", "package_version", "up_to_date"]

#: Bump when the artifact layout or export recipe changes, so old builds are rebuilt.
BUILD_RECIPE = 5


#: Config sections that only shape serving, never an artifact: changing them rebuilds nothing.
SERVING_ONLY = frozenset({"batching", "description", "enabled"})

#: Fields added after models were first built, with the value that changes nothing: left out of
#: the fingerprint while they hold it, so that adding them did not rebuild existing artifacts.
_NEUTRAL_DEFAULTS: dict[tuple[str, str], object] = {
    ("architecture", "mlp_layer"): None,
    ("architecture", "act_layer"): None,
    ("weights", "layout"): "timm",
    ("output", "pooling"): "head",
    ("artifacts", "external_data"): False,
}


def config_fingerprint(cfg: ModelConfig, config_dir: Path) -> str:
    """Hash of everything the ONNX artifacts depend on: config (less its serving-only sections and
    which artifacts are asked for), checkpoint bytes, recipe, and the exporting packages' versions.
    Whether an fp16 artifact is wanted is checked against the manifest instead (``_up_to_date``).
    A TensorRT plan has its own fingerprint (``tensorrt_build.plan_fingerprint``: this one, the
    fp16 graph, TensorRT's version and the GPU architecture), so asking for a plan or moving to
    another GPU never rebuilds the ONNX artifacts, and a plain build keeps the plan."""
    digest = hashlib.sha256()
    exported = cfg.model_dump(mode="json", exclude=set(SERVING_ONLY))
    for switch in ("fp16", "tensorrt", "tensorrt_max_batch"):
        exported["artifacts"].pop(switch, None)
    for (section, key), neutral in _NEUTRAL_DEFAULTS.items():
        if exported[section].get(key, neutral) == neutral:
            exported[section].pop(key, None)
    digest.update(json.dumps(exported, sort_keys=True, separators=(",", ":")).encode())
    digest.update(f"recipe={BUILD_RECIPE}".encode())
    for pkg in ("torch", "timm", "onnx", "onnxruntime"):
        digest.update(f"{pkg}={package_version(pkg)}".encode())
    if cfg.weights.source == "file" and cfg.weights.path:
        ckpt = Path(cfg.weights.path)
        ckpt = ckpt if ckpt.is_absolute() else config_dir / ckpt
        if not ckpt.is_file():
            raise FileNotFoundError(f"{cfg.name}: weights.path {ckpt} does not exist; point it at the local checkpoint")
        digest.update(sha256_file(ckpt).encode())
    return digest.hexdigest()


def package_version(pkg: str) -> str:
    for name in (pkg, f"{pkg}-gpu"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "absent"


def up_to_date(manifest: Manifest | None, fingerprint: str, version_dir: Path, *, fp16: bool) -> bool:
    """The ONNX artifacts are current and complete (a TensorRT plan is checked on its own)."""
    if manifest is None or manifest.config_sha256 != fingerprint or "onnx" not in manifest.artifacts:
        return False
    if fp16 and "onnx_fp16" not in manifest.artifacts:  # never built, or its last build failed
        return False
    for record in manifest.artifacts.values():
        if record.kind == "tensorrt":
            continue
        path = version_dir / record.file
        if not path.exists() or path.stat().st_size != record.bytes:
            return False
        data = version_dir / record.data_file if record.data_file else None
        if data is not None and (not data.exists() or data.stat().st_size != record.data_bytes):
            return False
    return True


def is_current(repo: ModelRepository, name: str, *, fp16: bool = False) -> bool:
    """``name`` is built and its build matches its config, checkpoint and the installed exporters."""
    manifest = repo.manifest(name)
    fingerprint = config_fingerprint(repo.config(name), repo.model_dir(name))
    return up_to_date(manifest, fingerprint, repo.version_dir(name), fp16=fp16)
