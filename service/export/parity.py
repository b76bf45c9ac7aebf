"""Forward checks of exported artifacts against the PyTorch model they came from."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["onnx_parity"]


def onnx_parity(
    model: nn.Module,
    path: Path,
    sizes: Sequence[int],
    *,
    rng: np.random.Generator,
    providers: Sequence[str],
    batch: int = 2,
    on_size: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Max absolute and relative error of every output, over random inputs at every size.

    Relative error is ``max|a-b| / max|b|`` per output (elementwise ratios blow up near zero).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=opts, providers=list(providers))
    max_abs = 0.0
    max_rel = 0.0
    per_size: dict[str, float] = {}
    for size in sizes:
        if on_size is not None:
            on_size(size)
        # Two images exercise the batch axis; one is enough at large sizes, which cost O(pixels).
        n = batch if size <= 512 else 1
        pixels = rng.standard_normal((n, 3, size, size)).astype(np.float32)
        with torch.no_grad():
            expected = [t.numpy() for t in model(torch.from_numpy(pixels))]
        got = session.run(None, {"pixels": pixels})
        for want, have in zip(expected, got, strict=True):
            # NaN compares false with everything (max(0.0, nan) is 0.0): a non-finite output is an
            # infinite error, so an fp16 overflow fails the check instead of passing it.
            err = float(np.abs(want - np.asarray(have, dtype=np.float32)).max())
            if not math.isfinite(err):
                err = math.inf
            max_abs = max(max_abs, err)
            max_rel = max(max_rel, err / max(float(np.abs(want).max()), 1e-12))
            per_size[str(size)] = max(per_size.get(str(size), 0.0), err)
    return {"max_abs": max_abs, "max_rel": max_rel, "sizes": list(sizes), "batch": batch, "max_abs_by_size": per_size}
