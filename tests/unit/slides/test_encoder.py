"""The encoder protocol, the Backend adapter, and the layer's import boundary."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest

from service.errors import InvalidInput
from service.models.config import ModelConfig
from service.slides import BackendEncoder, TileEncoder, encoder_facts

from ._fakes import FakeEncoder
from .conftest import HERE


def _config(**overrides) -> ModelConfig:
    raw = {
        "name": "vit-s16",
        "version": 3,
        "family": "vit",
        "architecture": {"timm_name": "vit_small_patch16_224"},
        "input": {
            "native_size": 32,
            "patch_size": 16,
            "mean": [0.5, 0.5, 0.5],
            "std": [0.25, 0.25, 0.25],
            "interpolation": "bilinear",
        },
        "output": {"embedding_dim": 6},
        "batching": {"max_batch_size": 4},
    }
    raw.update(overrides)
    return ModelConfig.model_validate(raw)


@dataclass
class _Result:
    outputs: dict[str, np.ndarray]


class _Backend:
    def __init__(self) -> None:
        self.batches: list[int] = []

    def infer(self, pixels: np.ndarray) -> _Result:
        self.batches.append(pixels.shape[0])
        embedding = np.repeat(pixels.mean(axis=(1, 2, 3))[:, None], 6, axis=1).astype(np.float64)
        return _Result(outputs={"embedding": embedding, "logits": np.zeros((pixels.shape[0], 10))})


def test_backend_encoder_takes_its_facts_from_the_config() -> None:
    encoder = BackendEncoder(_Backend(), _config())
    assert isinstance(encoder, TileEncoder)
    assert (encoder.tile_size, encoder.max_batch_size, encoder.embedding_dim) == (32, 4, 6)
    assert encoder.mean == (0.5, 0.5, 0.5) and encoder.std == (0.25, 0.25, 0.25)
    assert (encoder.name, encoder.version, encoder.weights) == ("vit-s16", "3", "untrained")
    facts = encoder_facts(encoder)
    assert facts["interpolation"] == "bilinear" and facts["model_version"] == "3"
    trained = BackendEncoder(_Backend(), _config(weights={"source": "file", "path": "w.safetensors"}))
    assert trained.weights == "trained"


def test_backend_encoder_splits_batches_and_returns_float32() -> None:
    backend = _Backend()
    encoder = BackendEncoder(backend, _config())
    pixels = np.random.default_rng(0).standard_normal((10, 3, 32, 32)).astype(np.float32)
    out = encoder.encode(pixels)
    assert out.shape == (10, 6) and out.dtype == np.float32
    assert backend.batches == [4, 4, 2]
    np.testing.assert_allclose(out[:, 0], pixels.mean(axis=(1, 2, 3)), rtol=1e-5)
    with pytest.raises(InvalidInput):
        encoder.encode(np.zeros((2, 3, 16, 16), dtype=np.float32))


def test_fake_encoder_is_a_tile_encoder_and_batch_independent() -> None:
    encoder = FakeEncoder(tile_size=16, dim=8)
    assert isinstance(encoder, TileEncoder)
    pixels = np.random.default_rng(1).standard_normal((6, 3, 16, 16)).astype(np.float32)
    whole = encoder.encode(pixels)
    parts = np.concatenate([encoder.encode(pixels[:2]), encoder.encode(pixels[2:])])
    np.testing.assert_allclose(whole, parts, rtol=1e-6, atol=1e-6)


def test_the_layer_imports_no_ray_fastapi_or_torch() -> None:
    code = (
        "import sys; import service.slides; "
        "bad = [m for m in ('ray', 'fastapi', 'torch', 'onnxruntime') if m in sys.modules]; "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=HERE.parents[2], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"service.slides imported: {proc.stdout.strip()} {proc.stderr[-2000:]}"
