"""The model repository on disk, laid out like Triton's (torch-free).

model_repo/
  routes.yaml
  <model>/config.yaml          committed: the source of truth (``enabled: false``: a preset, skipped)
  <model>/<version>/model.onnx built: never committed
  <model>/<version>/manifest.json
"""

from __future__ import annotations

from pathlib import Path

from service.errors import NotFound
from service.models.config import ModelConfig, load_model_config
from service.models.manifest import Manifest

__all__ = ["ModelRepository"]


class ModelRepository:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"model repository {self.root} does not exist")
        self._configs: dict[str, ModelConfig] = {}
        self._disabled: dict[str, ModelConfig] = {}
        for cfg_path in sorted(self.root.glob("*/config.yaml")):
            cfg = load_model_config(cfg_path)
            if cfg.name != cfg_path.parent.name:
                raise ValueError(f"{cfg_path}: name {cfg.name!r} differs from its folder {cfg_path.parent.name!r}")
            (self._configs if cfg.enabled else self._disabled)[cfg.name] = cfg

    def names(self) -> list[str]:
        """Enabled models: the ones built, served and routed."""
        return list(self._configs)

    def configs(self) -> dict[str, ModelConfig]:
        return dict(self._configs)

    def disabled(self) -> dict[str, ModelConfig]:
        """Configs with ``enabled: false`` (presets waiting for a checkpoint): read, validated, never used."""
        return dict(self._disabled)

    def config(self, name: str) -> ModelConfig:
        try:
            return self._configs[name]
        except KeyError:
            if name in self._disabled:
                raise NotFound(
                    f"model {name!r} is disabled: set `enabled: true` and `weights.path` in "
                    f"{self.root / name / 'config.yaml'}, then run `tessera build --model {name}`",
                    param="model",
                ) from None
            raise NotFound(
                f"unknown model {name!r}; known: {', '.join(self._configs) or 'none'}", param="model"
            ) from None

    def model_dir(self, name: str) -> Path:
        self.config(name)
        return self.root / name

    def version_dir(self, name: str, version: int | None = None) -> Path:
        cfg = self.config(name)
        if version is not None and version != cfg.version:
            raise NotFound(f"model {name!r} has no version {version} (serving version {cfg.version})", param="version")
        return self.root / name / str(cfg.version)

    def manifest_path(self, name: str) -> Path:
        return self.version_dir(name) / "manifest.json"

    def manifest(self, name: str) -> Manifest | None:
        path = self.manifest_path(name)
        return Manifest.read(path) if path.exists() else None

    def require_manifest(self, name: str) -> Manifest:
        manifest = self.manifest(name)
        if manifest is None:
            raise FileNotFoundError(f"model {name!r} is not built: run `tessera build --model {name}`")
        return manifest

    @property
    def routes_path(self) -> Path:
        return self.root / "routes.yaml"
