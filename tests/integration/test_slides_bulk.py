"""``tessera slide --batch``: several slides through Ray Data, each equal to an offline run.

Works whether or not Ray is already running in this session (the shared Serve instance may have
started it): ``run_bulk`` then uses it and leaves it running; otherwise it starts Ray embedded
and shuts it down again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from service.cli.slide import add_slide_parser
from service.models import ModelRepository
from service.runtime import load_backend
from service.serve.slides_bulk import BULK_REPORT_FILE, collect_slides, run_bulk
from service.slides import BackendEncoder, run_slide
from service.testing import make_synthetic_slide

pytestmark = pytest.mark.integration

# Level 0 in 224-px tiles: a few dozen tissue tiles per slide. 1 µm/px makes the slides 2 x 1.5 mm,
# so their tissue pieces pass the detector's area filter (0.05 mm², measured at physical scale).
OPTIONS = {"mpp": 1.0}


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bulk_slides")
    make_synthetic_slide(folder / "generic.tiff", 2000, 1500, mpp=1.0, blob_scale=0.3, seed=11)
    make_synthetic_slide(folder / "scanner.svs", 2000, 1500, mpp=1.0, flavour="aperio", blob_scale=0.3, seed=12)
    (folder / "broken.svs").write_bytes(b"II*\x00" + b"\x17" * 4096)  # a TIFF header, then garbage
    return folder


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path) as h5:
        return h5["coords"][:], h5["features"][:]


def test_bulk_matches_offline_and_isolates_a_broken_slide(small_repo: Path, slide_dir: Path, tmp_path: Path) -> None:
    import ray

    ray_was_running = ray.is_initialized()
    slides = collect_slides(slide_dir)
    assert [p.name for p in slides] == ["broken.svs", "generic.tiff", "scanner.svs"]
    seen: list[str] = []
    rows = run_bulk(
        slides,
        tmp_path / "bulk",
        small_repo,
        "vit_small",
        OPTIONS,
        concurrency=2,
        on_result=lambda row: seen.append(Path(row["path"]).name),
    )
    assert ray.is_initialized() == ray_was_running  # started and stopped here, or left as found
    assert sorted(seen) == ["broken.svs", "generic.tiff", "scanner.svs"]
    assert [Path(r["path"]).name for r in rows] == ["broken.svs", "generic.tiff", "scanner.svs"]

    broken, *good = rows
    assert not broken["ok"] and broken["tiles"] == 0 and broken["error_code"] == "invalid_argument"
    assert "broken.svs" in broken["error"]

    repo = ModelRepository(small_repo)
    encoder = BackendEncoder(load_backend(repo, "vit_small"), repo.config("vit_small"))
    for row in good:
        assert row["ok"] and row["error"] is None and row["tiles"] >= 10 and row["seconds"] > 0
        out = Path(row["out_dir"])
        assert out == tmp_path / "bulk" / Path(row["path"]).stem
        for name in ("features.h5", "heatmap.png", "tissue_mask.png", "slide_embedding.npy", "report.json"):
            assert (out / name).is_file(), name
        offline = run_slide(row["path"], tmp_path / "offline" / out.name, encoder, OPTIONS, progress=False)
        assert offline["tiles"] == row["tiles"]
        coords, features = _read(out / "features.h5")
        ref_coords, ref_features = _read(tmp_path / "offline" / out.name / "features.h5")
        np.testing.assert_array_equal(coords, ref_coords)
        np.testing.assert_allclose(features, ref_features, rtol=1e-5, atol=1e-5)

    summary = json.loads((tmp_path / "bulk" / BULK_REPORT_FILE).read_text())
    assert summary["slides"] == 3 and summary["succeeded"] == 2 and summary["failed"] == 1
    assert summary["concurrency"] == 2 and summary["model"] == "vit_small"
    assert summary["tiles"] == sum(r["tiles"] for r in rows) and summary["results"] == rows


def test_cli_batch_over_a_manifest(
    small_repo: Path, slide_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "slides.txt"
    manifest.write_text(f"# one good slide, one broken\n{slide_dir / 'scanner.svs'}\n{slide_dir / 'broken.svs'}\n")
    parser = argparse.ArgumentParser(prog="tessera")
    parser.add_argument("--model-repo")
    add_slide_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        [
            *("--model-repo", str(small_repo), "slide", str(manifest), "-o", str(tmp_path / "out")),
            *("--batch", "--workers", "2", "--mpp", "0.5"),
        ]
    )
    assert args.func(args) == 1  # one slide failed
    out = capsys.readouterr().out
    assert "1 of 2 slide(s) embedded" in out and "1 failed" in out and BULK_REPORT_FILE in out
    summary = json.loads((tmp_path / "out" / BULK_REPORT_FILE).read_text())
    assert summary["options"]["mpp"] == 0.5 and summary["succeeded"] == 1
    assert (tmp_path / "out" / "scanner" / "features.h5").is_file()
