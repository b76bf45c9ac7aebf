"""Shapes a GPU runtime is prepared for: one profile per size bucket, batches a GPU needs.

Read by the TensorRT plan builder (``service.export.tensorrt_build``) and by ONNX Runtime's
TensorRT provider options (``service.runtime.ort``), so both prepare the same shapes.
"""

from __future__ import annotations

__all__ = ["Profile", "optimization_profiles", "profile_max_batch"]

Profile = dict[str, tuple[int, int, int, int]]


def profile_max_batch(size: int, native_size: int, native_max_batch: int) -> int:
    """Largest batch of a profile: ``native_max_batch`` at the native size, the same pixels per
    batch at larger sizes (224² tiles at 256 → 512² at 49, 1024² at 12, 2048² at 3)."""
    if native_max_batch < 1:
        raise ValueError("max batch must be >= 1")
    scaled = native_max_batch * (native_size / size) ** 2
    return max(1, min(native_max_batch, int(scaled)))


def optimization_profiles(buckets: list[int], max_batch: int, native_size: int | None = None) -> list[Profile]:
    """One profile per size bucket: (min, opt, max) shapes of ``pixels``.

    Batch ranges from 1 to the bucket's largest batch (:func:`profile_max_batch`) with the optimum
    at the full batch (what a busy GPU runs); the spatial size is fixed per profile so TensorRT
    picks tactics for that exact shape.
    """
    if max_batch < 1:
        raise ValueError("max_batch must be >= 1")
    native = native_size or min(buckets)
    profiles: list[Profile] = []
    for size in sorted(set(buckets)):
        top = profile_max_batch(size, native, max_batch)
        profiles.append({"min": (1, 3, size, size), "opt": (top, 3, size, size), "max": (top, 3, size, size)})
    return profiles
