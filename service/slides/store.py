"""Slide results on disk: the HDF5 feature store and the files written beside it.

``features.h5`` follows the layout CLAM and TRIDENT read: dataset ``coords`` (N x 2 int64,
level-0 x, y of each tile's top-left corner) and dataset ``features`` (N x D float32), with
the attributes ``patch_size``, ``patch_size_level0``, ``target_mpp``, ``level0_mpp``,
``level0_width``, ``level0_height``, ``model``, ``model_version`` and ``weights`` on the file and
on ``coords`` (TRIDENT reads them there).

The store is written one batch at a time and flushed after each: features, then coords, then
the ``tiles_written`` attribute, which is the commit point. Reopening a store whose
``fingerprint`` (slide, options, model and batch size) matches truncates it to
``tiles_written`` and continues from there, so an interrupted run resumes instead of
restarting; anything else (another fingerprint, an unreadable file) starts afresh.

At the end: ``slide_embedding.npy`` (mean of the tile features), ``heatmap.png`` (the first
principal component of the features, colour-mapped over the thumbnail) and ``report.json``;
all computed by streaming through the store, never holding all features at once.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image

__all__ = [
    "FEATURES_FILE",
    "HEATMAP_FILE",
    "REPORT_FILE",
    "SLIDE_EMBEDDING_FILE",
    "TILES_GEOJSON_FILE",
    "TISSUE_GEOJSON_FILE",
    "TISSUE_MASK_FILE",
    "FeatureStore",
    "colormap",
    "copy_committed",
    "first_principal_component",
    "render_heatmap",
    "save_png",
    "slide_embedding",
    "write_json_atomic",
]

log = logging.getLogger(__name__)

FEATURES_FILE = "features.h5"
HEATMAP_FILE = "heatmap.png"
TISSUE_MASK_FILE = "tissue_mask.png"
TISSUE_GEOJSON_FILE = "tissue.geojson"
TILES_GEOJSON_FILE = "tiles.geojson"
SLIDE_EMBEDDING_FILE = "slide_embedding.npy"
REPORT_FILE = "report.json"

#: attributes every store carries (the CLAM/TRIDENT set)
REQUIRED_ATTRS = (
    "patch_size",
    "patch_size_level0",
    "target_mpp",
    "level0_mpp",
    "level0_width",
    "level0_height",
    "model",
    "model_version",
    "weights",
)
_READ_CHUNK = 4096
# viridis, sampled at 9 points; ``colormap`` interpolates linearly between them
_VIRIDIS = np.array(
    [
        [68, 1, 84],
        [71, 44, 122],
        [59, 81, 139],
        [44, 113, 142],
        [33, 144, 141],
        [39, 173, 129],
        [92, 200, 99],
        [170, 220, 50],
        [253, 231, 37],
    ],
    dtype=np.float32,
)
_VIRIDIS.flags.writeable = False


class FeatureStore:
    """An HDF5 ``features.h5`` being written batch by batch (see the module docstring)."""

    def __init__(self, path: Path, handle: h5py.File, resumed: int):
        self.path = path
        self._h5 = handle
        #: held while a batch is committed or a snapshot is taken (the writer and readers of
        #: partial results share the one open handle: HDF5 refuses a second one while writing)
        self.lock = threading.RLock()
        #: tiles that were already in the store when it was opened
        self.resumed = resumed

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        attrs: dict[str, Any],
        fingerprint: str,
        planned_coords: np.ndarray | None = None,
        embedding_dim: int | None = None,
    ) -> FeatureStore:
        """Open for writing: resume a matching partial store, or create a new one.

        ``attrs`` must hold every name in ``REQUIRED_ATTRS``. With ``planned_coords`` a resumed
        store must also hold a prefix of them, in order, or it is started afresh.
        """
        missing = [name for name in REQUIRED_ATTRS if name not in attrs]
        if missing:
            raise ValueError(f"store attributes missing: {missing}")
        path = Path(path)
        if path.exists():
            store = cls._try_resume(path, fingerprint, planned_coords)
            if store is not None:
                return store
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = h5py.File(path, "w")
        try:
            for target in (
                handle.attrs,
                handle.create_dataset(
                    "coords", shape=(0, 2), maxshape=(None, 2), dtype=np.int64, chunks=(4096, 2)
                ).attrs,
            ):
                for key, value in attrs.items():
                    target[key] = _attr_value(value)
            handle.attrs["fingerprint"] = fingerprint
            handle.attrs["tiles_written"] = 0
            handle.attrs["complete"] = False
            if embedding_dim:
                _create_features(handle, int(embedding_dim))
            handle.flush()
        except BaseException:
            handle.close()
            raise
        return cls(path, handle, resumed=0)

    @classmethod
    def _try_resume(cls, path: Path, fingerprint: str, planned: np.ndarray | None) -> FeatureStore | None:
        try:
            handle = h5py.File(path, "a")
        except OSError as exc:
            log.warning("%s is unreadable (%s); starting afresh", path, exc)
            return None
        try:
            if handle.attrs.get("fingerprint") != fingerprint or "coords" not in handle:
                log.info("%s was written with other options; starting afresh", path)
                handle.close()
                return None
            written = int(handle.attrs.get("tiles_written", 0))
            coords = handle["coords"]
            features = handle.get("features")
            if coords.shape[0] < written or (features is not None and features.shape[0] < written):
                log.warning("%s is shorter than its commit mark; starting afresh", path)
                handle.close()
                return None
            if planned is not None and (
                written > len(planned) or not np.array_equal(coords[:written], planned[:written])
            ):
                log.warning("%s holds other tiles than planned; starting afresh", path)
                handle.close()
                return None
            coords.resize((written, 2))
            if features is not None:
                features.resize((written, features.shape[1]))
            handle.attrs["complete"] = False
            handle.flush()
        except BaseException:
            handle.close()
            raise
        return cls(path, handle, resumed=written)

    # -- writing -----------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Tiles committed so far."""
        return int(self._h5.attrs["tiles_written"])

    @property
    def embedding_dim(self) -> int | None:
        features = self._h5.get("features")
        return None if features is None else int(features.shape[1])

    def append(self, coords: np.ndarray, features: np.ndarray) -> None:
        """Commit one batch and flush it to disk."""
        coords = np.asarray(coords, dtype=np.int64)
        features = np.asarray(features, dtype=np.float32)
        if coords.ndim != 2 or coords.shape[1] != 2:
            raise ValueError(f"coords must be (N, 2), got {coords.shape}")
        if features.ndim != 2 or features.shape[0] != coords.shape[0]:
            raise ValueError(f"features must be (N, D) with N={coords.shape[0]}, got {features.shape}")
        n = coords.shape[0]
        if n == 0:
            return
        with self.lock:
            self._append(coords, features, n)

    def _append(self, coords: np.ndarray, features: np.ndarray, n: int) -> None:
        start = self.count
        dset = self._h5.get("features")
        if dset is None:
            dset = _create_features(self._h5, features.shape[1])
        elif dset.shape[1] != features.shape[1]:
            raise ValueError(f"feature width changed from {dset.shape[1]} to {features.shape[1]}")
        dset.resize((start + n, dset.shape[1]))
        dset[start : start + n] = features
        cset = self._h5["coords"]
        cset.resize((start + n, 2))
        cset[start : start + n] = coords
        self._h5.attrs["tiles_written"] = start + n
        self._h5.flush()

    def snapshot(self, dest: str | Path) -> int:
        """Copy the committed tiles (coords, features, attributes) into a new HDF5 file while the
        store is still being written; returns the number of tiles copied."""
        with self.lock:
            return copy_committed(self._h5, Path(dest))

    def finish(self, extra_attrs: dict[str, Any] | None = None) -> None:
        """Mark the store complete (and make sure ``features`` exists, even when empty)."""
        if "features" not in self._h5:
            _create_features(self._h5, 0)
        for key, value in (extra_attrs or {}).items():
            self._h5.attrs[key] = _attr_value(value)
        self._h5.attrs["complete"] = True
        self._h5.flush()

    def close(self) -> None:
        if self._h5.id.valid:
            self._h5.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------------
    def coords(self) -> np.ndarray:
        return np.asarray(self._h5["coords"][: self.count])

    def iter_features(self, chunk: int = _READ_CHUNK) -> Iterator[np.ndarray]:
        dset = self._h5.get("features")
        if dset is None:
            return
        for start in range(0, self.count, chunk):
            yield np.asarray(dset[start : min(self.count, start + chunk)], dtype=np.float32)


def copy_committed(src: h5py.File, dest: Path) -> int:
    """The committed prefix (``tiles_written``) of a store, as a complete file at ``dest``."""
    count = int(src.attrs.get("tiles_written", 0))
    tmp = dest.with_name(f".{dest.name}.tmp")
    with h5py.File(tmp, "w") as out:
        for key, value in src.attrs.items():
            out.attrs[key] = value
        out.attrs["partial"] = not bool(src.attrs.get("complete", False))
        for name in ("coords", "features"):
            data = src.get(name)
            if data is None:
                continue
            width = data.shape[1]
            target = out.create_dataset(name, shape=(count, width), dtype=data.dtype)
            for start in range(0, count, _READ_CHUNK):
                target[start : min(count, start + _READ_CHUNK)] = data[start : min(count, start + _READ_CHUNK)]
            for key, value in data.attrs.items():
                target.attrs[key] = value
    os.replace(tmp, dest)
    return count


def slide_embedding(chunks: Iterator[np.ndarray], dim: int | None) -> np.ndarray:
    """Mean of the tile features (float64 accumulation), float32 (D,); empty when no tiles."""
    total: np.ndarray | None = None
    count = 0
    for block in chunks:
        part = block.astype(np.float64).sum(axis=0)
        total = part if total is None else total + part
        count += block.shape[0]
    if total is None or count == 0:
        return np.zeros(dim or 0, dtype=np.float32)
    return (total / count).astype(np.float32)


def first_principal_component(chunks_factory: Any) -> np.ndarray | None:
    """Projection of every tile's features on their first principal component.

    ``chunks_factory()`` yields the features in blocks (called twice: once for the covariance,
    once for the projection). The sign is fixed so that the largest loading is positive, so
    the result is deterministic. ``None`` when fewer than two tiles.
    """
    count, total, outer = 0, None, None
    for block in chunks_factory():
        b = block.astype(np.float64)
        total = b.sum(axis=0) if total is None else total + b.sum(axis=0)
        outer = b.T @ b if outer is None else outer + b.T @ b
        count += b.shape[0]
    if count < 2 or total is None or outer is None or total.shape[0] == 0:
        return None
    mean = total / count
    cov = (outer - count * np.outer(mean, mean)) / (count - 1)
    eigvals, eigvecs = np.linalg.eigh(cov)
    component = eigvecs[:, -1]
    if eigvals[-1] <= 0:
        return np.zeros(count, dtype=np.float32)
    if component[np.argmax(np.abs(component))] < 0:
        component = -component
    return np.concatenate([(block.astype(np.float64) - mean) @ component for block in chunks_factory()]).astype(
        np.float32
    )


def colormap(values: np.ndarray) -> np.ndarray:
    """Viridis colours (uint8 RGB) for values in 0..1."""
    lut_x = np.linspace(0.0, 1.0, len(_VIRIDIS))
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0)
    return np.stack([np.interp(v, lut_x, _VIRIDIS[:, c]) for c in range(3)], axis=-1).astype(np.uint8)


def render_heatmap(
    thumbnail: np.ndarray,
    coords: np.ndarray,
    values: np.ndarray | None,
    *,
    patch_size_level0: int,
    level0_width: int,
    level0_height: int,
    alpha: float = 0.55,
) -> np.ndarray:
    """Tiles coloured by ``values`` (robustly scaled to 0..1) over the thumbnail, RGB uint8.

    Overlapping tiles average; pixels under no tile show the thumbnail unchanged.
    """
    th, tw = thumbnail.shape[:2]
    out = thumbnail.astype(np.float32)
    if values is None or len(values) == 0:
        return thumbnail.copy()
    lo, hi = np.percentile(values, [2.0, 98.0])
    scaled = np.clip((values - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.full(len(values), 0.5)
    total = np.zeros((th, tw), dtype=np.float32)
    weight = np.zeros((th, tw), dtype=np.float32)
    sx, sy = tw / level0_width, th / level0_height
    for (x, y), value in zip(np.asarray(coords), scaled, strict=True):
        x0, y0 = int(x * sx), int(y * sy)
        x1 = max(x0 + 1, round(float(x + patch_size_level0) * sx))
        y1 = max(y0 + 1, round(float(y + patch_size_level0) * sy))
        total[y0:y1, x0:x1] += value
        weight[y0:y1, x0:x1] += 1.0
    covered = weight > 0
    mean = np.divide(total, weight, out=np.zeros_like(total), where=covered)
    colours = colormap(mean).astype(np.float32)
    out[covered] = (1.0 - alpha) * out[covered] + alpha * colours[covered]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def save_png(image: np.ndarray, path: str | Path) -> None:
    Image.fromarray(image).save(path)


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as fh:
        json.dump(payload, fh, indent=2, sort_keys=False, default=_json_default)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _create_features(handle: h5py.File, dim: int) -> h5py.Dataset:
    if dim <= 0:  # an empty slide whose encoder width is unknown: (0, 0)
        return handle.create_dataset("features", shape=(0, 0), dtype=np.float32)
    rows = max(1, min(1024, (1 << 20) // max(1, 4 * dim)))
    return handle.create_dataset(
        "features", shape=(0, dim), maxshape=(None, dim), dtype=np.float32, chunks=(rows, max(1, dim))
    )


def _attr_value(value: Any) -> Any:
    if value is None:
        return "none"
    if isinstance(value, (bool, int, float, str, np.generic, np.ndarray)):
        return value
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    return str(value)
