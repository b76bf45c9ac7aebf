"""Pick the fastest runtime this host offers for a built model."""

from __future__ import annotations

import logging
from typing import Literal

from service.models import ModelRepository
from service.runtime.base import Backend

__all__ = ["RuntimePreference", "load_backend"]

log = logging.getLogger(__name__)

RuntimePreference = Literal["auto", "onnxruntime", "tensorrt", "torch"]


def load_backend(
    repo: ModelRepository,
    model: str,
    *,
    prefer: RuntimePreference = "auto",
    providers: str = "auto",
    intra_op_threads: int = 0,
    spin: bool = False,
) -> Backend:
    """Load ``model``'s best artifact.

    ``auto`` order: a TensorRT plan (when TensorRT and a GPU are present and a plan was built),
    then ONNX Runtime with the fp16 artifact on a GPU provider, then ONNX Runtime fp32.
    """
    manifest = repo.require_manifest(model)
    version_dir = repo.version_dir(model)
    if prefer in ("auto", "tensorrt") and "tensorrt" in manifest.artifacts:
        from service.runtime.tensorrt import TensorRTBackend, tensorrt_available

        if tensorrt_available():
            return TensorRTBackend(version_dir / manifest.artifacts["tensorrt"].file)
        if prefer == "tensorrt":
            raise RuntimeError("TensorRT requested but tensorrt or a CUDA GPU is not available")
    if prefer == "torch":
        from service.runtime.torch_backend import TorchBackend

        return TorchBackend.from_repository(repo, model)
    from service.runtime.ort import OrtBackend, choose_providers

    chosen = choose_providers(providers)
    on_gpu = chosen[0] != "CPUExecutionProvider"
    if on_gpu and "onnx_fp16" in manifest.artifacts:
        record = manifest.artifacts["onnx_fp16"]
        return OrtBackend(
            version_dir / record.file, providers=chosen, precision="fp16", intra_op_threads=intra_op_threads, spin=spin
        )
    if "onnx" not in manifest.artifacts:
        raise FileNotFoundError(f"model {model!r} has no ONNX artifact: run `tessera build --model {model}`")
    return OrtBackend(
        version_dir / manifest.artifacts["onnx"].file, providers=chosen, intra_op_threads=intra_op_threads, spin=spin
    )
