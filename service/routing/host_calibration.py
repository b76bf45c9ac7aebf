"""Calibrating the cost model on this host with the real backends (``tessera calibrate``)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence

import numpy as np

from service.models import ArchFacts, ModelRepository
from service.routing.calibration import Calibration, calibrate, load_calibration

__all__ = ["DEFAULT_CALIBRATION_SIZES", "calibrate_repository"]

#: Square sides measured by default; models are measured at those within their largest bucket.
#: Larger buckets are predicted from the fit (latency is linear in MACs and memory traffic).
DEFAULT_CALIBRATION_SIZES = (224, 320, 384, 512, 640, 768, 1024)


def calibrate_repository(
    repo: ModelRepository,
    *,
    models: Sequence[str] | None = None,
    sizes: Sequence[int] = DEFAULT_CALIBRATION_SIZES,
    repeats: int = 2,
    progress: Callable[[str], None] | None = None,
) -> Calibration:
    """Measure each built model through the backend the service would load, fit, merge, save."""
    from service.routing.factory import CALIBRATION_FILE
    from service.runtime import load_backend

    result = load_calibration(repo.root / CALIBRATION_FILE, missing_ok=True)
    for name in models or repo.names():
        manifest = repo.require_manifest(name)
        cfg = repo.config(name)
        backend = load_backend(repo, name)
        largest = max(cfg.input.buckets)
        own = [s for s in sizes if s <= largest] or [cfg.input.native_size]
        if len(own) < 4:  # the fit needs four distinct points: add non-square ones
            own_pairs: list[int | tuple[int, int]] = [*own, *[(s, s // 2) for s in own if s // 2 >= 32]]
        else:
            own_pairs = list(own)

        def measure(_model: str, height: int, width: int, batch: int, backend=backend) -> float:
            pixels = np.zeros((batch, 3, height, width), dtype=np.float32)
            return backend.infer(pixels).latency_ms / 1e3

        entry = calibrate(
            measure,
            {name: ArchFacts.from_dict(manifest.arch)},
            own_pairs,
            backend=backend.name,
            device=backend.device.split(":")[0],
            repeats=repeats,
            num_classes={name: cfg.output.num_classes},
            host=socket.gethostname(),
            progress=progress,
        )
        result = result.merged(entry)
        backend.close()
    result.save(repo.root / CALIBRATION_FILE)
    return result
