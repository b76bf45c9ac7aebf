"""torch → ONNX (fp32, fp16) → TensorRT, parity checks, and the manifest.

``fingerprint`` (is a build current?) imports no PyTorch; the builders are imported on first use,
so that a replica asking whether a model is current does not load the exporter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.export.build import build_model, build_repository
    from service.export.rows import BuildRow

__all__ = ["BuildRow", "build_model", "build_repository"]


def __getattr__(name: str) -> Any:
    if name == "BuildRow":
        from service.export.rows import BuildRow

        return BuildRow
    if name in ("build_model", "build_repository"):
        from service.export import build

        return getattr(build, name)
    raise AttributeError(f"module 'service.export' has no attribute {name!r}")
