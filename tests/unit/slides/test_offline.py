"""``run_slide``, the function behind ``tessera slide``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.slides import run_slide
from service.testing import SyntheticMirax, SyntheticSlide

from ._fakes import FakeEncoder
from .conftest import FAST


def test_run_slide_draws_a_progress_bar_and_returns_the_report(
    tmp_path: Path, synthetic_40x: SyntheticSlide, capsys: pytest.CaptureFixture[str]
) -> None:
    report = run_slide(synthetic_40x.path, tmp_path / "out", FakeEncoder(), {"mpp": 0.5, "tile": 224}, settings=FAST)
    err = capsys.readouterr().err
    assert "synthetic_40x.tiff" in err and f"{report['tiles']}/{report['tiles']}" in err and "tile" in err
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == json.loads(json.dumps(report))
    for name in ("features.h5", "heatmap.png", "tissue_mask.png", "slide_embedding.npy", "report.json"):
        assert (tmp_path / "out" / name).is_file()


def test_run_slide_on_a_mirax_slide(tmp_path: Path, synthetic_mirax: SyntheticMirax) -> None:
    """A multi-file slide: the ``.mrxs`` beside its data folder, at its metadata's 0.5 µm/px."""
    report = run_slide(
        synthetic_mirax.path, tmp_path / "out", FakeEncoder(), {"mpp": 1.0}, progress=False, settings=FAST
    )
    assert report["slide"]["vendor"] == "mirax" and report["slide"]["mpp_source"] == "metadata"
    assert report["grid"]["read_level"] == 1  # 1.0 µm/px is level 1 of a 0.5 µm/px slide
    assert 0 < report["tiles"] < report["tiles_grid"]  # the blobs' tiles, not the background's
    assert (tmp_path / "out" / "features.h5").is_file()


def test_run_slide_with_a_callback_or_silent(
    tmp_path: Path, synthetic_40x: SyntheticSlide, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[tuple[int, int]] = []
    report = run_slide(
        synthetic_40x.path,
        tmp_path / "a",
        FakeEncoder(),
        None,
        progress=lambda d, t: seen.append((d, t)),
        settings=FAST,
    )
    assert seen[-1] == (report["tiles"], report["tiles"])
    run_slide(synthetic_40x.path, tmp_path / "b", FakeEncoder(), None, progress=False, settings=FAST)
    assert capsys.readouterr().err == ""


def test_run_slide_validates_options(tmp_path: Path, synthetic_40x: SyntheticSlide) -> None:
    with pytest.raises(ValidationError):
        run_slide(synthetic_40x.path, tmp_path, FakeEncoder(), {"mpp": 0.5, "tiles": 3}, progress=False)
    with pytest.raises(ValidationError):
        run_slide(synthetic_40x.path, tmp_path, FakeEncoder(), {"overlap": 300, "tile": 256}, progress=False)
