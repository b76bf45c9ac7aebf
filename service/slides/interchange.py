"""TRIDENT and CLAM interchange, both ways: their attributes and layouts out, their grids in.

Out. ``features.h5`` already follows the layout both read (``coords`` N x 2 level-0 top-left
corners, ``features`` N x D); :func:`interchange_attrs` adds what their readers look up on
``coords``:

- TRIDENT (``trident/IO.py`` ``read_coords``, the patcher): ``patch_size`` (target pixels),
  ``patch_size_level0``, ``level0_magnification``, ``target_magnification``, ``overlap``,
  ``name``, ``level0_width``, ``level0_height``, ``savetodir``. Magnifications are
  ``10 / µm per pixel`` (TRIDENT's own conversion), the objective power when the slide has one.
- CLAM (``Whole_Slide_Bag_FP``): ``patch_level`` and ``patch_size`` *at that level*, read as
  ``read_region(coord, patch_level, (patch_size, patch_size))``. Our ``patch_size`` is in target
  pixels (TRIDENT's meaning), so ``features.h5`` also carries ``custom_downsample`` (the
  legacy CLAM/fishing-rod attribute TRIDENT's legacy reader honours): level downsample x
  ``custom_downsample`` x ``patch_size`` = ``patch_size_level0``. When the target resolution is
  a pyramid level, ``custom_downsample`` is 1 and CLAM reads the file as it is; otherwise use
  the ``clam`` export, whose ``patch_size`` is in ``patch_level`` pixels.

:func:`export_layouts` writes, beside ``features.h5``:

- ``trident``: ``features_<model>/<slide>.h5`` (``features`` and ``coords``, TRIDENT's attributes
  on ``coords``) and ``patches/<slide>_patches.h5`` (the grid alone, TRIDENT's patching output);
- ``clam``: ``h5_files/<slide>.h5`` (``features``, ``coords`` with CLAM's attributes) and
  ``pt_files/<slide>.pt`` (the features as a float32 torch tensor, what CLAM's MIL training loads).

In. :func:`read_grid` reads a TRIDENT patches file or a CLAM coordinates file as the grid to
embed (the lab's own segmentation and patching, reused): coordinates are level-0 top-left
corners in both; the tile's level-0 side is ``patch_size_level0`` (TRIDENT) or ``patch_size``
x the downsample of ``patch_level`` (x ``custom_downsample``; CLAM). Coordinates outside the
slide, a file made for a slide of another size, or a file in neither layout are refused.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np

from service.errors import InvalidInput

__all__ = [
    "ExportLayout",
    "ExternalGrid",
    "export_layouts",
    "interchange_attrs",
    "magnification",
    "read_grid",
]

ExportLayout = Literal["trident", "clam"]
_CHUNK = 8192
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._\-]+")


@dataclass(frozen=True)
class ExternalGrid:
    """A grid made by another tool: level-0 corners and the tile's level-0 side."""

    coords: np.ndarray
    patch_size_level0: int
    layout: Literal["trident", "clam"]
    sha256: str
    attrs: dict[str, Any]


def magnification(mpp: float, objective_power: float | None = None) -> float:
    """The magnification TRIDENT and CLAM record for a µm/px: 10 / mpp (0.25 → 40, 0.5 → 20).

    The objective power is used when it agrees with the resolution within 10% (a 40x scanner at
    0.2527 µm/px is recorded as 40, not 39.57).
    """
    computed = 10.0 / mpp
    if objective_power and abs(objective_power - computed) <= 0.1 * computed:
        return float(objective_power)
    return round(computed, 3)


def interchange_attrs(
    *,
    name: str,
    tile: int,
    overlap: int,
    patch_size_level0: int,
    level0_mpp: float,
    target_mpp: float,
    objective_power: float | None,
    level_downsample: float,
    patch_level: int,
    savetodir: str,
) -> dict[str, Any]:
    """The TRIDENT and CLAM attributes for a grid (written on the file and on ``coords``)."""
    level0_mag = magnification(level0_mpp, objective_power)
    return {
        "name": name,
        "level0_magnification": level0_mag,
        "target_magnification": round(level0_mag * level0_mpp / target_mpp, 3),
        "overlap": int(overlap),
        "savetodir": savetodir,
        "patch_level": int(patch_level),
        "custom_downsample": float(patch_size_level0 / (tile * level_downsample)),
    }


def slide_name(path: str | Path) -> str:
    """The slide's name as TRIDENT and CLAM use it (file name without its extension)."""
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    stem = Path(name).stem or "slide"
    return _SAFE_NAME.sub("_", stem)


def export_layouts(
    features_h5: str | Path,
    out_dir: str | Path,
    layouts: tuple[ExportLayout, ...] | list[ExportLayout],
    *,
    name: str,
    model: str,
    level_dimensions: tuple[tuple[int, int], ...],
    level_downsamples: tuple[float, ...],
    read_level: int,
) -> list[Path]:
    """Write the TRIDENT and/or CLAM copies of a finished ``features.h5``; returns their paths."""
    out = Path(out_dir)
    written: list[Path] = []
    with h5py.File(features_h5, "r") as src:
        base = {k: _plain(v) for k, v in src["coords"].attrs.items()}
        coords_attrs = {
            k: base[k]
            for k in (
                "patch_size",
                "patch_size_level0",
                "level0_magnification",
                "target_magnification",
                "overlap",
                "name",
                "savetodir",
                "level0_width",
                "level0_height",
                "target_mpp",
                "level0_mpp",
                "model",
            )
            if k in base
        }
        for layout in dict.fromkeys(layouts):
            if layout == "trident":
                patches = out / "patches" / f"{name}_patches.h5"
                _copy(src, patches, ("coords",), coords_attrs, {})
                features = out / f"features_{_SAFE_NAME.sub('_', model)}" / f"{name}.h5"
                _copy(src, features, ("coords", "features"), coords_attrs, {"encoder": model})
                written += [patches, features]
            elif layout == "clam":
                level = int(read_level)
                ds = float(level_downsamples[level])
                clam = {
                    "patch_level": level,
                    "patch_size": max(1, round(int(base["patch_size_level0"]) / ds)),
                    "downsample": np.asarray([ds, ds]),
                    "level_dim": np.asarray(level_dimensions[level]),
                    "downsampled_level_dim": np.asarray(level_dimensions[level]),
                    "name": name,
                    "save_path": str(out / "h5_files"),
                }
                h5_path = out / "h5_files" / f"{name}.h5"
                _copy(src, h5_path, ("coords", "features"), clam, {})
                pt_path = out / "pt_files" / f"{name}.pt"
                _save_pt(src["features"], pt_path)
                written += [h5_path, pt_path]
            else:
                raise InvalidInput(f"unknown export layout {layout!r}; known: trident, clam", param="export")
    return written


def read_grid(
    path: str | Path,
    *,
    level0_width: int,
    level0_height: int,
    level_downsamples: tuple[float, ...],
    max_tiles: int,
) -> ExternalGrid:
    """A TRIDENT or CLAM coordinates file as the grid to embed (see the module docstring)."""
    path = Path(path)
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise InvalidInput(f"the coordinates file is not HDF5: {exc}", param="coords") from None
    with handle:
        dset = handle.get("coords")
        if not isinstance(dset, h5py.Dataset) or dset.ndim != 2 or dset.shape[1] != 2:
            raise InvalidInput("the coordinates file has no N x 2 dataset 'coords'", param="coords")
        if dset.dtype.kind not in "iuf":
            raise InvalidInput(f"'coords' must be numbers, got {dset.dtype}", param="coords")
        if dset.shape[0] > max_tiles:
            raise InvalidInput(
                f"the coordinates file has {dset.shape[0]} tiles; the limit is {max_tiles}", param="coords"
            )
        attrs = {**{k: _plain(v) for k, v in handle.attrs.items()}, **{k: _plain(v) for k, v in dset.attrs.items()}}
        raw = np.asarray(dset[()])
    if raw.dtype.kind == "f" and not np.array_equal(raw, np.round(raw)):
        raise InvalidInput("'coords' must be whole level-0 pixels", param="coords")
    coords = raw.astype(np.int64).reshape(-1, 2)
    layout, patch0 = _patch_size_level0(attrs, level_downsamples)
    for key, actual in (("level0_width", level0_width), ("level0_height", level0_height)):
        if key in attrs and int(attrs[key]) != actual:
            raise InvalidInput(
                f"the coordinates were made for a slide with {key}={int(attrs[key])}; this slide has {actual}",
                param="coords",
            )
    if len(coords) and (
        (coords < 0).any() or (coords[:, 0] >= level0_width).any() or (coords[:, 1] >= level0_height).any()
    ):
        raise InvalidInput(
            f"coordinates fall outside the slide ({level0_width} x {level0_height} level-0 pixels)", param="coords"
        )
    digest = hashlib.sha256(coords.tobytes() + str(patch0).encode()).hexdigest()
    return ExternalGrid(coords=coords, patch_size_level0=patch0, layout=layout, sha256=digest, attrs=attrs)


def _patch_size_level0(attrs: dict[str, Any], downsamples: tuple[float, ...]) -> tuple[Literal["trident", "clam"], int]:
    if "patch_size_level0" in attrs:
        value = _positive(attrs["patch_size_level0"], "patch_size_level0")
        return "trident", round(value)
    if "patch_size" in attrs and "patch_level" in attrs:
        size = _positive(attrs["patch_size"], "patch_size")
        level = int(attrs["patch_level"])
        if not 0 <= level < len(downsamples):
            raise InvalidInput(
                f"patch_level {level} does not exist in this slide ({len(downsamples)} levels)", param="coords"
            )
        custom = _positive(attrs.get("custom_downsample", 1), "custom_downsample")
        return "clam", round(size * downsamples[level] * custom)
    raise InvalidInput(
        "the coordinates file is neither TRIDENT's (coords attribute patch_size_level0) nor CLAM's "
        "(coords attributes patch_size and patch_level)",
        param="coords",
    )


def _positive(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{name} is not a number: {value!r}", param="coords") from None
    if not (math.isfinite(number) and number >= 1):
        raise InvalidInput(f"{name} must be at least 1, got {value!r}", param="coords")
    return number


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _copy(
    src: h5py.File, dest: Path, names: tuple[str, ...], coords_attrs: dict[str, Any], file_attrs: dict[str, Any]
) -> None:
    """Copy datasets in chunks into a new file (written to a temporary name, then renamed)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    with h5py.File(tmp, "w") as out:
        for name in names:
            data = src[name]
            target = out.create_dataset(name, shape=data.shape, dtype=data.dtype)
            for start in range(0, data.shape[0], _CHUNK):
                target[start : start + _CHUNK] = data[start : start + _CHUNK]
        for key, value in coords_attrs.items():
            out["coords"].attrs[key] = value
        for key, value in file_attrs.items():
            out.attrs[key] = value
            if "features" in out:
                out["features"].attrs[key] = value
    tmp.replace(dest)


def _save_pt(features: h5py.Dataset, dest: Path) -> None:
    """CLAM's ``pt_files/<slide>.pt``: the features as one float32 tensor (``torch.save``).

    PyTorch is imported here only (the slide layer otherwise never needs it).
    """
    import torch

    dest.parent.mkdir(parents=True, exist_ok=True)
    tensor = torch.from_numpy(np.asarray(features[()], dtype=np.float32))
    tmp = dest.with_name(f".{dest.name}.tmp")
    torch.save(tensor, tmp)
    tmp.replace(dest)
