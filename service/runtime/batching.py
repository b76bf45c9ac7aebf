"""Running a list of single-image requests as batches on one backend."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from service.runtime.base import Backend

__all__ = ["run_batch"]


def run_batch(backend: Backend, items: list[np.ndarray]) -> list[dict[str, Any]]:
    """Run ``items`` (each (3, H, W) float32) and return one reply dict per item, in order.

    Items of different shapes never share a batch: they are grouped by shape and each group runs
    as one backend call. Every reply carries the batch it ran in and that batch's latency.
    """
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        if item.ndim != 3 or item.shape[0] != 3:
            raise ValueError(f"expected pixels of shape (3, H, W), got {item.shape}")
        groups[tuple(item.shape)].append(index)
    replies: list[dict[str, Any] | None] = [None] * len(items)
    for indices in groups.values():
        result = backend.infer(np.stack([items[i] for i in indices]))
        memory = result.memory.to_dict()
        for row, index in enumerate(indices):
            replies[index] = {
                "outputs": {name: value[row] for name, value in result.outputs.items()},
                "inference_ms": result.latency_ms,
                "batch_size": result.batch_size,
                "memory": memory,
                **backend.describe(),
            }
    return [r for r in replies if r is not None]
