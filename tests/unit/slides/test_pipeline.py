"""The streaming pipeline: order, batching, normalisation, overlap of reading and inference,
errors, cancellation, and resuming an interrupted run to the identical result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from service.slides import PipelineSettings, SlideCancelled, SlideOptions, TileStream, process_slide
from service.testing import SyntheticSlide

from ._fakes import FakeEncoder, FakeReader
from .conftest import FAST, HERE

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def _coords(n: int) -> np.ndarray:
    return np.array([[(i % 13) * 100, (i // 13) * 100] for i in range(n)], dtype=np.int64)


def _stream(reader: FakeReader, coords: np.ndarray, **kwargs) -> TileStream:
    args = {"level": 0, "region_size": 32, "out_size": 32, "mean": MEAN, "std": STD, "batch_size": 8}
    args.update(kwargs)
    return TileStream(reader, coords, **args)  # type: ignore[arg-type]


def test_batches_come_in_grid_order_whatever_the_thread_timing() -> None:
    coords = _coords(61)
    reader = FakeReader(delay_s=0.002, jitter_seed=7)  # random per-tile delays reorder completion
    with _stream(reader, coords, workers=4, prefetch_batches=6) as stream:
        batches = list(stream)
    assert [b.index for b in batches] == list(range(8))
    assert [len(b.coords) for b in batches] == [8] * 7 + [5]
    np.testing.assert_array_equal(np.concatenate([b.coords for b in batches]), coords)
    for batch in batches:
        for (x, y), pixels in zip(batch.coords, batch.pixels, strict=True):
            raw = FakeReader.pixels(int(x), int(y), 32, 32).astype(np.float32) / 255.0
            expected = ((raw - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1)
            np.testing.assert_allclose(pixels, expected, rtol=1e-5, atol=1e-5)
    assert reader.reads == 61 and len(reader.threads) == 4


def test_tiles_are_resized_to_the_encoder_size() -> None:
    with _stream(FakeReader(), _coords(3), region_size=64, out_size=16) as stream:
        (batch,) = list(stream)
    assert batch.pixels.shape == (3, 3, 16, 16) and batch.pixels.dtype == np.float32


def test_reading_overlaps_inference() -> None:
    coords = _coords(40)
    reader = FakeReader(delay_s=0.001)
    seen_during_first_encode: list[int] = []
    with _stream(reader, coords, workers=2, prefetch_batches=3) as stream:
        for batch in stream:
            if batch.index == 0:
                # the "encoder" is busy with batch 0: readers must be filling batches 1 and 2
                deadline = time.monotonic() + 10
                while reader.reads < 24 and time.monotonic() < deadline:
                    time.sleep(0.005)
                seen_during_first_encode.append(reader.reads)
    assert seen_during_first_encode[0] >= 24


def test_read_ahead_is_bounded() -> None:
    reader = FakeReader()
    with _stream(reader, _coords(200), workers=2, prefetch_batches=2) as stream:
        iterator = iter(stream)
        next(iterator)
        time.sleep(0.3)  # a stalled encoder: readers must stop after the prefetch window
        assert reader.reads <= 3 * 8  # the batch in hand plus two read ahead


def test_reader_errors_surface_and_stop_the_threads() -> None:
    coords = _coords(50)
    reader = FakeReader(fail_at=(int(coords[20, 0]), int(coords[20, 1])))
    stream = _stream(reader, coords, workers=2)
    with pytest.raises(RuntimeError, match=r"reading the tile at level-0 \(700, 100\) failed"), stream:
        list(stream)
    assert all(not t.is_alive() for t in threading.enumerate() if t.name.startswith("tessera-slide-read"))


def test_cancel_event_stops_the_stream() -> None:
    cancel = threading.Event()
    with _stream(FakeReader(delay_s=0.001), _coords(100), cancel=cancel) as stream, pytest.raises(SlideCancelled):
        for batch in stream:
            if batch.index == 1:
                cancel.set()


def _read_store(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    with h5py.File(path) as f:
        return f["coords"][:], f["features"][:], dict(f.attrs)


def test_runs_are_deterministic_across_worker_counts(tmp_path: Path, synthetic_40x: SyntheticSlide) -> None:
    one = process_slide(
        synthetic_40x.path,
        tmp_path / "one",
        FakeEncoder(),
        SlideOptions(),
        settings=PipelineSettings(workers=1, thumbnail_size=768, heatmap_size=256),
    )
    four = process_slide(
        synthetic_40x.path,
        tmp_path / "four",
        FakeEncoder(),
        SlideOptions(),
        settings=PipelineSettings(workers=4, prefetch_batches=2, thumbnail_size=768, heatmap_size=256),
    )
    c1, f1, _ = _read_store(tmp_path / "one" / "features.h5")
    c4, f4, _ = _read_store(tmp_path / "four" / "features.h5")
    np.testing.assert_array_equal(c1, c4)
    np.testing.assert_array_equal(f1, f4)
    assert one["tiles"] == four["tiles"] == len(c1) > 16


def test_level_selection_in_the_pipeline(tmp_path: Path, synthetic_40x: SyntheticSlide) -> None:
    """A 40x slide tiled at 0.5 µm/px is read from level 1 at the tile size, not from level 0."""
    captured: list[tuple[np.ndarray, np.ndarray]] = []

    class Recording(FakeEncoder):
        def encode(self, pixels: np.ndarray) -> np.ndarray:
            captured.append(pixels.copy())
            return super().encode(pixels)

    encoder = Recording(max_batch_size=8)
    report = process_slide(
        synthetic_40x.path, tmp_path / "out", encoder, SlideOptions(mpp=0.5, tile=224), settings=FAST
    )
    grid = report["grid"]
    assert grid["read_level"] == 1 and grid["read_size"] == 224 and grid["patch_size_level0"] == 448
    assert grid["read_level_mpp"] == pytest.approx(0.5, rel=0.01)
    assert max(encoder.batch_sizes) <= 8
    coords, _, attrs = _read_store(tmp_path / "out" / "features.h5")
    assert attrs["patch_size"] == 224 and attrs["patch_size_level0"] == 448
    # the first tile's pixels, un-normalised, are the slide's level-1 pixels (up to OpenSlide's
    # sub-pixel interpolation on this odd-sized pyramid)
    first = captured[0][0].transpose(1, 2, 0) * np.array(encoder.std) + np.array(encoder.mean)
    x, y = coords[0]
    ds = synthetic_40x.level_downsample(1)
    truth = synthetic_40x.render(round(x / ds), round(y / ds), 224, 224, ds).astype(np.float32) / 255.0
    assert np.abs(first - truth).mean() < 0.03
    # at 1.0 µm/px the same slide is read from level 2
    coarse = process_slide(synthetic_40x.path, tmp_path / "coarse", FakeEncoder(), SlideOptions(mpp=1.0), settings=FAST)
    assert coarse["grid"]["read_level"] == 2 and coarse["grid"]["patch_size_level0"] == 896
    # 0.7 µm/px: read level 1 (0.5) and shrink 314 → 224, never upsample from level 2
    between = process_slide(
        synthetic_40x.path, tmp_path / "between", FakeEncoder(), SlideOptions(mpp=0.7), settings=FAST
    )
    assert between["grid"]["read_level"] == 1 and between["grid"]["read_size"] == 314


def test_progress_reports_every_batch(tmp_path: Path, synthetic_40x: SyntheticSlide) -> None:
    calls: list[tuple[int, int]] = []
    report = process_slide(
        synthetic_40x.path,
        tmp_path / "out",
        FakeEncoder(max_batch_size=5),
        SlideOptions(),
        settings=FAST,
        progress=lambda done, total: calls.append((done, total)),
    )
    total = report["tiles"]
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    dones = [d for d, _ in calls]
    assert dones == sorted(dones) and len(calls) == 1 + -(-total // 5)


def _crash_after(batches: int):
    def hook(count: int) -> None:
        if count == batches:
            raise RuntimeError("simulated crash")

    return hook


def test_resume_after_a_crash_gives_the_identical_result(tmp_path: Path, synthetic_40x: SyntheticSlide) -> None:
    options = SlideOptions(tissue_threshold=0.1)
    process_slide(synthetic_40x.path, tmp_path / "full", FakeEncoder(max_batch_size=4), options, settings=FAST)
    full_coords, full_features, _ = _read_store(tmp_path / "full" / "features.h5")

    out = tmp_path / "crashed"
    with pytest.raises(RuntimeError, match="simulated crash"):
        process_slide(
            synthetic_40x.path, out, FakeEncoder(max_batch_size=4, after_batch=_crash_after(3)), options, settings=FAST
        )
    partial, _, attrs = _read_store(out / "features.h5")
    assert 0 < len(partial) < len(full_coords) and not attrs["complete"]
    assert not (out / "report.json").exists()

    encoder = FakeEncoder(max_batch_size=4)
    report = process_slide(synthetic_40x.path, out, encoder, options, settings=FAST)
    coords, features, attrs = _read_store(out / "features.h5")
    assert report["tiles_resumed"] == len(partial) and report["tiles_resumed"] % 4 == 0
    assert encoder.tiles == len(full_coords) - len(partial)  # only the rest was read and encoded
    assert attrs["complete"]
    np.testing.assert_array_equal(coords, full_coords)
    np.testing.assert_array_equal(features, full_features)
    embedding = np.load(out / "slide_embedding.npy")
    np.testing.assert_array_equal(embedding, np.load(tmp_path / "full" / "slide_embedding.npy"))


def test_resume_after_cancel_and_restart_with_other_options(tmp_path: Path, synthetic_40x: SyntheticSlide) -> None:
    cancel = threading.Event()

    def stop(count: int) -> None:
        if count == 2:
            cancel.set()

    out = tmp_path / "out"
    with pytest.raises(SlideCancelled):
        process_slide(
            synthetic_40x.path,
            out,
            FakeEncoder(max_batch_size=4, after_batch=stop),
            SlideOptions(),
            settings=FAST,
            cancel=cancel,
        )
    partial, _, _ = _read_store(out / "features.h5")
    assert len(partial) == 8  # both encoded batches were committed before stopping
    # other options → a different fingerprint → a fresh store, not a mix
    report = process_slide(synthetic_40x.path, out, FakeEncoder(max_batch_size=4), SlideOptions(mpp=1.0), settings=FAST)
    assert report["tiles_resumed"] == 0
    # other batch size → fresh too (batches must align for an identical result)
    report = process_slide(synthetic_40x.path, out, FakeEncoder(max_batch_size=6), SlideOptions(mpp=1.0), settings=FAST)
    assert report["tiles_resumed"] == 0
    # a finished store rerun with the same options: everything is resumed, nothing re-encoded
    encoder = FakeEncoder(max_batch_size=6)
    report = process_slide(synthetic_40x.path, out, encoder, SlideOptions(mpp=1.0), settings=FAST)
    assert report["tiles_resumed"] == report["tiles"] and encoder.tiles == 0


_KILL_SCRIPT = """
import os, sys
sys.path.insert(0, {here!r})
from _fakes import FakeEncoder
from service.slides import PipelineSettings, SlideOptions, process_slide

def die(count):
    if count == 3:
        os._exit(17)  # no cleanup, no close: like a killed process

process_slide({slide!r}, {out!r}, FakeEncoder(max_batch_size=4, after_batch=die), SlideOptions(tissue_threshold=0.1),
              settings=PipelineSettings(workers=2, thumbnail_size=768, heatmap_size=256))
"""


def test_resume_after_the_process_is_killed(tmp_path: Path, synthetic_40x: SyntheticSlide) -> None:
    out = tmp_path / "killed"
    script = _KILL_SCRIPT.format(here=str(HERE), slide=str(synthetic_40x.path), out=str(out))
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[2])}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 17, proc.stderr
    with h5py.File(out / "features.h5") as f:
        written = int(f.attrs["tiles_written"])
    # the writer thread commits behind the encoder: some of the encoded batches are on disk
    assert 4 <= written <= 8 and written % 4 == 0

    options = SlideOptions(tissue_threshold=0.1)
    report = process_slide(synthetic_40x.path, out, FakeEncoder(max_batch_size=4), options, settings=FAST)
    assert report["tiles_resumed"] == written
    process_slide(synthetic_40x.path, tmp_path / "full", FakeEncoder(max_batch_size=4), options, settings=FAST)
    a_coords, a_features, _ = _read_store(out / "features.h5")
    b_coords, b_features, _ = _read_store(tmp_path / "full" / "features.h5")
    np.testing.assert_array_equal(a_coords, b_coords)
    np.testing.assert_array_equal(a_features, b_features)
    assert json.loads((out / "report.json").read_text())["tiles"] == len(b_coords)


def test_encoder_returning_the_wrong_shape_fails_clearly(tmp_path: Path, synthetic_40x: SyntheticSlide) -> None:
    class Broken(FakeEncoder):
        def encode(self, pixels: np.ndarray) -> np.ndarray:
            return super().encode(pixels)[:-1]

    with pytest.raises(RuntimeError, match="expected \\(N, D\\)"):
        process_slide(synthetic_40x.path, tmp_path / "out", Broken(), SlideOptions(), settings=FAST)


def test_overlap_and_tile_options(tmp_path: Path, synthetic_40x: SyntheticSlide) -> None:
    report = process_slide(
        synthetic_40x.path,
        tmp_path / "out",
        FakeEncoder(tile_size=224),
        SlideOptions(tile=256, overlap=64, tissue_threshold=0.0),
        settings=FAST,
    )
    grid = report["grid"]
    assert grid["patch_size_level0"] == 512 and grid["stride_level0"] == 384
    assert grid["read_size"] == 256 and grid["encoder_size"] == 224  # read 256 at 0.5 µm/px, fed at 224
    coords, _, attrs = _read_store(tmp_path / "out" / "features.h5")
    assert attrs["patch_size"] == 256 and attrs["overlap"] == 64
    assert np.unique(coords[:, 0]).tolist()[:3] == [0, 384, 768]
    from service.errors import InvalidInput

    with pytest.raises(InvalidInput) as err:  # the default tile (the encoder's 224) is below the overlap
        process_slide(synthetic_40x.path, tmp_path / "bad", FakeEncoder(), SlideOptions(overlap=300), settings=FAST)
    assert err.value.param == "overlap"
