"""TRIDENT and CLAM interchange: our files read by readers written to their published layouts,
and their coordinate files (written here to those layouts) embedded as the grid."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import openslide
import pytest
import torch

from service.errors import InvalidInput
from service.slides import SlideOptions, process_slide
from service.slides.interchange import magnification, read_grid

from ._fakes import FakeEncoder
from .conftest import CMU, FAST

OPTIONS = SlideOptions(mpp=1.0, export=("trident", "clam"))


@pytest.fixture(scope="module")
def ours(slides_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ours")
    process_slide(slides_dir / CMU, out, FakeEncoder(), OPTIONS, settings=FAST)
    return out


def _trident_read_coords(path: Path) -> tuple[dict, np.ndarray]:
    """TRIDENT's ``read_coords``: the attributes of ``coords`` and the coordinates."""
    with h5py.File(path, "r") as f:
        return dict(f["coords"].attrs), f["coords"][:]


def test_trident_reads_our_files(ours: Path, slides_dir: Path) -> None:
    attrs, coords = _trident_read_coords(ours / "patches" / "CMU-1-Small-Region_patches.h5")
    # what TRIDENT's patcher derives from them: src/dst magnification and the level-0 patch side
    patch_size, level0_mag, target_mag = (
        attrs["patch_size"],
        attrs["level0_magnification"],
        attrs["target_magnification"],
    )
    assert level0_mag == 20 and target_mag == pytest.approx(20 * 0.499 / 1.0, rel=1e-3)  # AppMag 20 at 0.499 µm/px
    assert patch_size == 224
    assert round(patch_size * level0_mag / target_mag) == pytest.approx(attrs["patch_size_level0"], abs=1)
    assert attrs["level0_width"] == 2220 and attrs["level0_height"] == 2967 and attrs["overlap"] == 0
    assert attrs["name"] == "CMU-1-Small-Region"
    # the feature file TRIDENT's slide encoders load: features_<encoder>/<slide>.h5
    with h5py.File(ours / "features_fake-vit" / "CMU-1-Small-Region.h5", "r") as f:
        features, feature_coords = f["features"][:], f["coords"][:]
        assert dict(f["coords"].attrs)["patch_size_level0"] == attrs["patch_size_level0"]
    with h5py.File(ours / "features.h5", "r") as f:
        np.testing.assert_array_equal(f["features"][:], features)
        np.testing.assert_array_equal(f["coords"][:], coords)
        # the main file carries the same attributes (on the file and on coords)
        for key in ("level0_magnification", "target_magnification", "patch_level", "patch_size_level0"):
            assert key in f["coords"].attrs and key in f.attrs
    np.testing.assert_array_equal(feature_coords, coords)


def test_clam_reads_our_files(ours: Path, slides_dir: Path) -> None:
    """CLAM's ``Whole_Slide_Bag_FP``: ``read_region(coord, patch_level, (patch_size, patch_size))``."""
    with h5py.File(ours / "h5_files" / "CMU-1-Small-Region.h5", "r") as f:
        patch_level, patch_size = int(f["coords"].attrs["patch_level"]), int(f["coords"].attrs["patch_size"])
        coords, features = f["coords"][:], f["features"][:]
    with h5py.File(ours / "features.h5", "r") as f:
        patch0 = int(f.attrs["patch_size_level0"])
    slide = openslide.OpenSlide(str(slides_dir / CMU))
    try:
        assert patch_size * slide.level_downsamples[patch_level] == pytest.approx(patch0, abs=1)
        region = slide.read_region(tuple(int(v) for v in coords[3]), patch_level, (patch_size, patch_size))
        assert region.size == (patch_size, patch_size)
    finally:
        slide.close()
    tensor = torch.load(ours / "pt_files" / "CMU-1-Small-Region.pt", weights_only=True)
    assert tensor.dtype == torch.float32 and tuple(tensor.shape) == features.shape
    np.testing.assert_array_equal(tensor.numpy(), features)


def _write_trident_patches(
    path: Path, coords: np.ndarray, *, patch_size: int, level0_mag: float, target_mag: float
) -> None:
    """A TRIDENT patching output, as ``WSI.extract_tissue_coords`` writes it."""
    with h5py.File(path, "w") as f:
        dset = f.create_dataset("coords", data=coords)
        dset.attrs["patch_size"] = patch_size
        dset.attrs["patch_size_level0"] = patch_size * level0_mag // target_mag
        dset.attrs["level0_magnification"] = level0_mag
        dset.attrs["target_magnification"] = target_mag
        dset.attrs["overlap"] = 0
        dset.attrs["name"] = "CMU-1-Small-Region"
        dset.attrs["savetodir"] = str(path.parent)
        dset.attrs["level0_width"] = 2220
        dset.attrs["level0_height"] = 2967


def _write_clam_patches(path: Path, coords: np.ndarray, *, patch_level: int, patch_size: int) -> None:
    """CLAM's ``create_patches_fp.py`` output: ``coords`` with ``patch_level`` and ``patch_size``."""
    with h5py.File(path, "w") as f:
        dset = f.create_dataset("coords", data=coords)
        dset.attrs["patch_level"] = patch_level
        dset.attrs["patch_size"] = patch_size
        dset.attrs["downsample"] = np.array([1.0, 1.0])
        dset.attrs["downsampled_level_dim"] = np.array([2220, 2967])
        dset.attrs["level_dim"] = np.array([2220, 2967])
        dset.attrs["name"] = "CMU-1-Small-Region"


def test_a_trident_grid_is_embedded_as_given(ours: Path, slides_dir: Path, tmp_path: Path) -> None:
    with h5py.File(ours / "features.h5", "r") as f:
        our_coords, our_features = f["coords"][:], f["features"][:]
    grid_file = tmp_path / "CMU-1-Small-Region_patches.h5"
    # 20x slide, target 10x, 224 px: 448 level-0 px (ours at 1.0 µm/px: 449)
    subset = our_coords[::3]
    _write_trident_patches(grid_file, subset, patch_size=224, level0_mag=20, target_mag=10)
    report = process_slide(
        slides_dir / CMU, tmp_path / "out", FakeEncoder(), SlideOptions(), settings=FAST, coords_file=grid_file
    )
    assert report["grid"]["source"] == "trident" and report["grid"]["patch_size_level0"] == 448
    with h5py.File(tmp_path / "out" / "features.h5", "r") as f:
        np.testing.assert_array_equal(f["coords"][:], subset)  # every given tile, no tissue filter, in order
        assert f.attrs["grid_source"] == "trident" and f.attrs["patch_size_level0"] == 448
        assert f["features"].shape == (len(subset), our_features.shape[1])
        # a 448 vs 449 px tile at the same corner: nearly the same features
        assert np.abs(f["features"][:] - our_features[::3]).max() < 0.1


def test_a_clam_grid_is_embedded_as_given(slides_dir: Path, tmp_path: Path) -> None:
    coords = np.array([[0, 0], [512, 256], [1024, 2048], [1700, 2700]], dtype=np.int64)
    grid_file = tmp_path / "CMU-1-Small-Region.h5"
    _write_clam_patches(grid_file, coords, patch_level=0, patch_size=256)
    report = process_slide(
        slides_dir / CMU, tmp_path / "out", FakeEncoder(), SlideOptions(), settings=FAST, coords_file=grid_file
    )
    assert report["grid"]["source"] == "clam" and report["tiles"] == 4
    assert report["grid"]["patch_size_level0"] == 256
    assert report["grid"]["target_mpp"] == pytest.approx(256 * 0.499 / 224, rel=1e-3)
    with h5py.File(tmp_path / "out" / "features.h5", "r") as f:
        np.testing.assert_array_equal(f["coords"][:], coords)


def test_bad_grid_files_are_refused(tmp_path: Path) -> None:
    kwargs = {"level0_width": 2220, "level0_height": 2967, "level_downsamples": (1.0,), "max_tiles": 1000}
    outside = tmp_path / "outside.h5"
    _write_clam_patches(outside, np.array([[5000, 0]]), patch_level=0, patch_size=256)
    with pytest.raises(InvalidInput, match="outside the slide"):
        read_grid(outside, **kwargs)
    other = tmp_path / "other.h5"
    _write_trident_patches(other, np.array([[0, 0]]), patch_size=224, level0_mag=20, target_mag=10)
    with pytest.raises(InvalidInput, match="level0_width"):
        read_grid(other, **{**kwargs, "level0_width": 999})
    bare = tmp_path / "bare.h5"
    with h5py.File(bare, "w") as f:
        f.create_dataset("coords", data=np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(InvalidInput, match="neither TRIDENT"):
        read_grid(bare, **kwargs)
    with pytest.raises(InvalidInput, match="not HDF5"):
        (tmp_path / "junk.h5").write_bytes(b"not hdf5")
        read_grid(tmp_path / "junk.h5", **kwargs)
    too_many = tmp_path / "many.h5"
    _write_clam_patches(too_many, np.zeros((5, 2), dtype=np.int64), patch_level=0, patch_size=256)
    with pytest.raises(InvalidInput, match="limit"):
        read_grid(too_many, **{**kwargs, "max_tiles": 4})


def test_magnification_follows_trident() -> None:
    assert magnification(0.25) == 40 and magnification(0.5) == 20
    assert magnification(0.2527, 40) == 40  # the objective power when it agrees
    assert magnification(0.2527, 20) == pytest.approx(39.573, abs=1e-3)


def test_the_client_sends_a_grid_file_and_export_layouts(tmp_path: Path) -> None:
    import httpx

    from service.clients.slides import SlideClient

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        request.read()
        return httpx.Response(202, json={"id": "0" * 32, "state": "queued"})

    slide, grid = tmp_path / "a.svs", tmp_path / "a_patches.h5"
    slide.write_bytes(b"slide")
    grid.write_bytes(b"grid")
    with SlideClient("http://tessera", transport=httpx.MockTransport(handler)) as client:
        client.submit(upload_file=slide, options={"mpp": 0.5, "export": ("trident", "clam")}, coords_file=grid)
        client.submit(path="cases/a.svs", options={"export": ["clam"]}, coords_path="cases/a_patches.h5")
    upload, by_path = seen
    body = upload.content
    assert b'name="coords"; filename="a_patches.h5"' in body and b'name="export"' in body and b"trident,clam" in body
    assert upload.url.params["mpp"] == "0.5"
    assert json.loads(by_path.content) == {
        "path": "cases/a.svs",
        "export": ["clam"],
        "coords_path": "cases/a_patches.h5",
    }
