"""Results on disk: the CLAM/TRIDENT HDF5 layout, the files beside it, and the store's commit rule."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from service.slides import FeatureStore, SlideOptions, process_slide
from service.slides.store import REQUIRED_ATTRS, first_principal_component, render_heatmap, slide_embedding
from service.testing import SyntheticSlide

from ._fakes import FakeEncoder
from .conftest import CMU, FAST, TCGA

ATTRS = {
    "patch_size": 224,
    "patch_size_level0": 448,
    "target_mpp": 0.5,
    "level0_mpp": 0.25,
    "level0_width": 1000,
    "level0_height": 800,
    "model": "fake",
    "model_version": "1",
    "weights": "untrained",
}


def test_hdf5_layout_and_attributes(tmp_path: Path, synthetic_40x: SyntheticSlide) -> None:
    encoder = FakeEncoder(dim=24)
    report = process_slide(synthetic_40x.path, tmp_path, encoder, SlideOptions(), settings=FAST)
    with h5py.File(tmp_path / "features.h5") as f:
        coords, features = f["coords"], f["features"]
        n = report["tiles"]
        assert coords.shape == (n, 2) and coords.dtype == np.int64
        assert features.shape == (n, 24) and features.dtype == np.float32
        expected = {
            "patch_size": 224,
            "patch_size_level0": 448,
            "target_mpp": 0.5,
            "level0_mpp": 0.25,
            "level0_width": 6001,
            "level0_height": 4003,
            "model": "fake-vit",
            "model_version": "1",
            "weights": "untrained",
        }
        for holder in (f.attrs, coords.attrs):  # on the file, and on coords where TRIDENT reads them
            assert {k: holder[k] for k in expected} == pytest.approx(expected)
        assert f.attrs["complete"] and f.attrs["tiles_written"] == n
        c = coords[:]
        assert (c % 448 == 0).all()  # on the level-0 grid
        assert np.array_equal(np.lexsort((c[:, 0], c[:, 1])), np.arange(n))  # row-major
        feats = features[:]
    # features are the encoder's output for exactly those tiles
    assert np.isfinite(feats).all() and feats.std() > 0
    embedding = np.load(tmp_path / "slide_embedding.npy")
    assert embedding.shape == (24,) and embedding.dtype == np.float32
    np.testing.assert_allclose(embedding, feats.mean(axis=0), rtol=1e-5, atol=1e-6)

    heatmap = Image.open(tmp_path / "heatmap.png")
    assert heatmap.mode == "RGB" and max(heatmap.size) == FAST.heatmap_size
    assert Image.open(tmp_path / "tissue_mask.png").mode == "L"

    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["tiles"] == n and saved["tiles_per_s"] > 0
    for stage in ("read", "preprocess", "inference", "write", "thumbnail", "tissue", "total"):
        assert stage in saved["timing_s"]
    assert saved["memory"]["peak_rss_bytes"] > 0
    assert saved["slide"]["mpp"] == 0.25 and saved["slide"]["level_count"] == 5
    assert saved["model"]["model"] == "fake-vit" and saved["embedding_dim"] == 24


def test_real_slides_end_to_end(tmp_path: Path, slides_dir: Path) -> None:
    cmu = process_slide(slides_dir / CMU, tmp_path / "cmu", FakeEncoder(), SlideOptions(), settings=FAST)
    assert cmu["slide"]["mpp_source"] == "metadata" and cmu["grid"]["read_level"] == 0
    assert cmu["grid"]["patch_size_level0"] == 224  # 0.499 µm/px ≈ the 0.5 target
    assert 20 < cmu["tiles"] < cmu["tiles_grid"]
    tcga = process_slide(
        slides_dir / TCGA, tmp_path / "tcga", FakeEncoder(), SlideOptions(slide_mpp=0.25), settings=FAST
    )
    assert tcga["slide"]["mpp_source"] == "caller" and tcga["grid"]["read_level"] == 1
    with h5py.File(tmp_path / "tcga" / "features.h5") as f:
        assert f.attrs["level0_mpp"] == 0.25 and f.attrs["patch_size_level0"] == 448
        assert f["features"].shape[0] == tcga["tiles"] > 10


def test_store_commits_batches_and_resumes_only_a_matching_fingerprint(tmp_path: Path) -> None:
    path = tmp_path / "features.h5"
    planned = np.array([[i * 448, 0] for i in range(10)], dtype=np.int64)
    feats = np.arange(40, dtype=np.float32).reshape(10, 4)
    with FeatureStore.open(path, attrs=ATTRS, fingerprint="a", planned_coords=planned) as store:
        assert store.resumed == 0 and store.embedding_dim is None
        store.append(planned[:3], feats[:3])
        store.append(planned[3:6], feats[3:6])
        assert store.count == 6
    with FeatureStore.open(path, attrs=ATTRS, fingerprint="a", planned_coords=planned) as store:
        assert store.resumed == 6 and store.embedding_dim == 4
        store.append(planned[6:], feats[6:])
        np.testing.assert_array_equal(store.coords(), planned)
        np.testing.assert_array_equal(np.concatenate(list(store.iter_features(chunk=4))), feats)
        with pytest.raises(ValueError, match="width changed"):
            store.append(planned[:1], np.zeros((1, 5), dtype=np.float32))
    with FeatureStore.open(path, attrs=ATTRS, fingerprint="b", planned_coords=planned) as store:
        assert store.resumed == 0 and store.count == 0  # other options: started afresh
    # planned tiles that disagree with what is stored: afresh
    with FeatureStore.open(path, attrs=ATTRS, fingerprint="b", planned_coords=planned) as store:
        store.append(planned[:2], feats[:2])
    with FeatureStore.open(path, attrs=ATTRS, fingerprint="b", planned_coords=planned[::-1].copy()) as store:
        assert store.resumed == 0


def test_rows_past_the_commit_mark_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "features.h5"
    coords = np.array([[0, 0], [448, 0], [896, 0]], dtype=np.int64)
    with FeatureStore.open(path, attrs=ATTRS, fingerprint="x", embedding_dim=2) as store:
        store.append(coords[:2], np.ones((2, 2), dtype=np.float32))
    with h5py.File(path, "a") as f:  # a crash between writing rows and moving the mark
        f["features"].resize((3, 2))
        f["coords"].resize((3, 2))
        f["coords"][2] = coords[2]
    with FeatureStore.open(path, attrs=ATTRS, fingerprint="x", planned_coords=coords) as store:
        assert store.resumed == 2
    with h5py.File(path) as f:
        assert f["coords"].shape == (2, 2) and f["features"].shape == (2, 2)


def test_unreadable_store_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "features.h5"
    path.write_bytes(b"garbage, not HDF5")
    with FeatureStore.open(path, attrs=ATTRS, fingerprint="x") as store:
        assert store.resumed == 0
    with h5py.File(path) as f:
        assert f.attrs["fingerprint"] == "x"


def test_missing_attributes_are_refused(tmp_path: Path) -> None:
    attrs = {k: v for k, v in ATTRS.items() if k != "level0_mpp"}
    with pytest.raises(ValueError, match="level0_mpp"):
        FeatureStore.open(tmp_path / "f.h5", attrs=attrs, fingerprint="x")
    assert set(REQUIRED_ATTRS) == set(ATTRS)


def test_empty_slide_still_writes_every_file(tmp_path: Path) -> None:
    from service.testing import make_synthetic_slide

    blank = make_synthetic_slide(tmp_path / "blank.tiff", 2000, 1500, n_blobs=0, compression="deflate")
    report = process_slide(blank.path, tmp_path / "out", FakeEncoder(dim=8), SlideOptions(), settings=FAST)
    assert report["tiles"] == 0 and report["warnings"]
    with h5py.File(tmp_path / "out" / "features.h5") as f:
        assert f["coords"].shape == (0, 2) and f["features"].shape == (0, 8)
    assert np.load(tmp_path / "out" / "slide_embedding.npy").shape == (8,)
    assert (tmp_path / "out" / "heatmap.png").is_file()


def test_principal_component_and_heatmap() -> None:
    rng = np.random.default_rng(0)
    direction = rng.standard_normal(16)
    t = np.linspace(-1, 1, 50)
    feats = (t[:, None] * direction[None, :] + 0.01 * rng.standard_normal((50, 16))).astype(np.float32)
    pc = first_principal_component(lambda: iter([feats[:20], feats[20:]]))
    assert pc is not None and pc.shape == (50,)
    assert abs(np.corrcoef(pc, t)[0, 1]) > 0.99
    assert first_principal_component(lambda: iter([feats[:1]])) is None
    np.testing.assert_allclose(slide_embedding(iter([feats[:20], feats[20:]]), 16), feats.mean(axis=0), atol=1e-6)

    thumb = np.full((100, 200, 3), 240, dtype=np.uint8)
    coords = np.array([[0, 0], [1000, 0]], dtype=np.int64)
    image = render_heatmap(
        thumb, coords, np.array([0.0, 1.0]), patch_size_level0=1000, level0_width=2000, level0_height=1000
    )
    assert image.shape == thumb.shape
    left, right = image[50, 50].astype(int), image[50, 150].astype(int)
    assert not np.array_equal(left, right)  # low and high values get different colours
    assert (image[:, :, :] != 240).any()
    untouched = render_heatmap(
        thumb, coords[:0], np.zeros(0), patch_size_level0=1000, level0_width=2000, level0_height=1000
    )
    np.testing.assert_array_equal(untouched, thumb)
