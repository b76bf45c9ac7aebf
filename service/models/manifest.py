"""``manifest.json``: what a build produced and how well it matches PyTorch (torch-free)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ArtifactRecord", "Manifest", "sha256_file"]


class ArtifactRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    file: str = Field(description="File name inside the version folder.")
    sha256: str
    bytes: int
    data_file: str | None = Field(
        default=None, description="The graph's external weights beside it (`<file>.data`), above 2 GiB of weights."
    )
    data_sha256: str | None = None
    data_bytes: int = 0
    precision: str = Field(description="fp32 | fp16")
    kind: str = Field(description="onnx | tensorrt")
    opset: int | None = None
    input_sizes: list[int] = Field(default_factory=list, description="Square sizes checked for parity.")
    dynamic_axes: list[str] = Field(default_factory=list)
    parity: dict[str, Any] = Field(default_factory=dict, description="max_abs / max_rel error vs PyTorch.")
    fused: dict[str, int] = Field(default_factory=dict, description="Fused-operator counts in the graph.")
    optimizer: dict[str, Any] = Field(
        default_factory=dict, description="Whether ORT's transformer optimizer was applied, and why not if it failed."
    )
    domains: list[str] = Field(
        default_factory=list, description="Operator domains beyond standard ONNX (com.microsoft after ORT's optimizer)."
    )
    build_s: float = 0.0


class Manifest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    version: int
    config_sha256: str = Field(
        description="Hash of the config (less its serving-only sections) plus the checkpoint it names."
    )
    weights: str = Field(description="trained | untrained")
    arch: dict[str, Any] = Field(description="ArchFacts as a dict.")
    params: int
    gmacs_native: float
    native_size: int
    artifacts: dict[str, ArtifactRecord] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict, description="torch, timm, onnx, onnxruntime, ...")
    built_at: str = ""

    @classmethod
    def read(cls, path: Path) -> Manifest:
        return cls.model_validate(json.loads(path.read_text()))

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
