"""Test doubles for the slide layer: a tiny deterministic tile encoder."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

import numpy as np


class FakeEncoder:
    """Per-channel means, stds and a 2x2 grid of channel means, through a fixed projection.

    Deterministic (a seeded projection of statistics of each tile alone), so the same tile
    always gives the same features whatever batch it is in. Counts the tiles it has seen and
    can run a hook after each batch (to cancel or crash a run mid-way).
    """

    def __init__(
        self,
        *,
        tile_size: int = 224,
        max_batch_size: int = 16,
        dim: int = 32,
        seed: int = 0,
        name: str = "fake-vit",
        after_batch: Callable[[int], None] | None = None,
    ):
        self.tile_size = tile_size
        self.max_batch_size = max_batch_size
        self.mean = (0.485, 0.456, 0.406)
        self.std = (0.229, 0.224, 0.225)
        self.interpolation = "bilinear"
        self.name = name
        self.version = "1"
        self.weights: Literal["trained", "untrained"] = "untrained"
        self.embedding_dim = dim
        self._projection = np.random.default_rng(seed).standard_normal((18, dim)).astype(np.float32)
        self._after_batch = after_batch
        self._lock = threading.Lock()
        self.batches = 0
        self.tiles = 0
        self.batch_sizes: list[int] = []

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        if pixels.dtype != np.float32 or pixels.ndim != 4 or pixels.shape[1:] != (3, self.tile_size, self.tile_size):
            raise ValueError(f"bad batch {pixels.dtype} {pixels.shape}")
        n, _, h, w = pixels.shape
        quads = pixels.reshape(n, 3, 2, h // 2, 2, w // 2).mean(axis=(3, 5)).reshape(n, 12)
        stats = np.concatenate([pixels.mean(axis=(2, 3)), pixels.std(axis=(2, 3)), quads], axis=1)
        out = np.tanh(stats @ self._projection).astype(np.float32)
        with self._lock:
            self.batches += 1
            self.tiles += n
            self.batch_sizes.append(n)
            count = self.batches
        if self._after_batch is not None:
            self._after_batch(count)
        return out


class FakeReader:
    """Stands in for a ``SlideReader`` in ``TileStream`` tests: tiles are a pure function of
    their coordinates, reads can be slowed down (with per-tile jitter) and are counted."""

    def __init__(self, *, delay_s: float = 0.0, jitter_seed: int | None = None, fail_at: tuple[int, int] | None = None):
        self.delay_s = delay_s
        self.fail_at = fail_at
        self._rng = np.random.default_rng(jitter_seed) if jitter_seed is not None else None
        self._lock = threading.Lock()
        self.reads = 0
        self.threads: set[int] = set()

    @staticmethod
    def pixels(x: int, y: int, w: int, h: int) -> np.ndarray:
        tile = np.empty((h, w, 3), dtype=np.uint8)
        tile[..., 0] = (x // 7) % 256
        tile[..., 1] = (y // 7) % 256
        tile[..., 2] = np.arange(w, dtype=np.int64)[None, :] % 256
        return tile

    def read_region(self, x0: int, y0: int, level: int, w: int, h: int) -> np.ndarray:
        if self.fail_at == (x0, y0):
            raise OSError("corrupt tile")
        with self._lock:
            delay = self.delay_s * (self._rng.uniform(0.0, 2.0) if self._rng is not None else 1.0)
            self.threads.add(threading.get_ident())
        if delay:
            time.sleep(delay)
        with self._lock:
            self.reads += 1
        return self.pixels(x0, y0, w, h)
