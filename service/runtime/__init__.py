"""One ``Backend`` interface over ONNX Runtime, TensorRT and PyTorch."""

from service.runtime.base import Backend, InferenceResult
from service.runtime.loader import load_backend
from service.runtime.memory import MemoryReport, host_memory

__all__ = ["Backend", "InferenceResult", "MemoryReport", "host_memory", "load_backend"]
