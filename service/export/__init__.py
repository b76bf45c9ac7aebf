"""torch → ONNX (fp32, fp16) → TensorRT, parity checks, and the manifest."""

from service.export.build import BuildRow, build_model, build_repository

__all__ = ["BuildRow", "build_model", "build_repository"]
