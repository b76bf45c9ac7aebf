"""The tile encoder the slide pipeline is given: a protocol, and an adapter over a ``Backend``.

The pipeline never loads a model: it is handed a :class:`TileEncoder`, a local runtime
(:class:`BackendEncoder`), a Ray deployment handle wrapped the same way, or a fake in tests.

Besides the protocol's members, the pipeline reads two optional attributes when present:
``interpolation`` (``bilinear``/``bicubic``/``nearest``, default ``bicubic``) for resizing tiles,
and ``embedding_dim`` (int), which lets an empty slide still write a ``features`` dataset of the
right width.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from service.errors import InvalidInput
from service.models.config import ModelConfig

__all__ = ["BackendEncoder", "InferenceBackend", "TileEncoder", "encoder_facts"]

Weights = Literal["trained", "untrained"]


@runtime_checkable
class TileEncoder(Protocol):
    """Turns a batch of normalised tiles into one embedding per tile."""

    #: square side (pixels) of the tiles ``encode`` takes
    tile_size: int
    #: the largest batch ``encode`` is given
    max_batch_size: int
    #: per-channel normalisation (0-1 scale) the pipeline applies before ``encode``
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    #: model name, version and whether its weights were trained (recorded with every result)
    name: str
    version: str
    weights: Weights

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """float32 (N, 3, tile_size, tile_size), normalised → float32 (N, D) embeddings."""
        ...


class InferenceBackend(Protocol):
    """What :class:`BackendEncoder` needs of ``service.runtime.Backend``."""

    def infer(self, pixels: np.ndarray) -> Any:
        """Returns an object with ``outputs: dict[str, np.ndarray]`` holding ``embedding``."""
        ...


class BackendEncoder:
    """A :class:`TileEncoder` over a loaded ``Backend`` and its model's config."""

    def __init__(self, backend: InferenceBackend, config: ModelConfig, *, max_batch_size: int | None = None):
        self.backend = backend
        self.config = config
        self.tile_size = config.input.native_size
        self.max_batch_size = int(max_batch_size or config.batching.max_batch_size)
        self.mean = config.input.mean
        self.std = config.input.std
        self.interpolation = config.input.interpolation
        self.embedding_dim = config.output.embedding_dim
        self.name = config.name
        self.version = str(config.version)
        self.weights: Weights = "trained" if config.trained else "untrained"

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        expected = (3, self.tile_size, self.tile_size)
        if pixels.ndim != 4 or pixels.shape[1:] != expected:
            raise InvalidInput(
                f"{self.name} takes (N, {expected[0]}, {expected[1]}, {expected[2]}) tiles, got {pixels.shape}"
            )
        chunks = []
        for start in range(0, pixels.shape[0], self.max_batch_size):
            result = self.backend.infer(pixels[start : start + self.max_batch_size])
            embedding = np.asarray(result.outputs["embedding"], dtype=np.float32)
            chunks.append(embedding.reshape(embedding.shape[0], -1))
        if not chunks:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        return np.concatenate(chunks, axis=0)


def encoder_facts(encoder: TileEncoder) -> dict[str, Any]:
    """The encoder facts recorded in results and reports."""
    return {
        "model": str(encoder.name),
        "model_version": str(encoder.version),
        "weights": str(encoder.weights),
        "tile_size": int(encoder.tile_size),
        "max_batch_size": int(encoder.max_batch_size),
        "mean": [float(v) for v in encoder.mean],
        "std": [float(v) for v in encoder.std],
        "interpolation": str(getattr(encoder, "interpolation", "bicubic")),
    }
