"""Calibration: the fit recovers known coefficients, files round-trip, the fallback is flagged."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from service.models.meta import ArchFacts
from service.routing.calibration import (
    FEATURES,
    Calibration,
    calibrate,
    features,
    fit_latency,
    load_calibration,
    predict_latency,
)
from service.routing.cost import estimate_cost

VIT_S16 = ArchFacts("vit", 16, (12,), (384,), (6,), num_prefix_tokens=1)
SWIN_T = ArchFacts("swin", 4, (2, 2, 6, 2), (96, 192, 384, 768), (3, 6, 12, 24), window_size=7)
MODELS = {"vit_small": VIT_S16, "swin_tiny": SWIN_T}
SIZES: list[int | tuple[int, int]] = [224, 320, 448, (384, 640), 768]
TRUE = {
    "vit_small": [2.0e-3, 6.0e-3, 4.0e-3, 1.5e-3],  # s/GMAC other, s/GMAC attention, s/GB traffic, s
    "swin_tiny": [2.5e-3, 3.0e-3, 8.0e-3, 3.0e-3],
}


def synthetic(noise: float = 0.0, seed: int = 0, fused: bool = False):
    """A measure_fn whose seconds follow TRUE exactly (times a noise factor), counting its calls."""
    rng = random.Random(seed)
    calls: list[tuple[str, int, int, int]] = []

    def measure(model: str, height: int, width: int, batch: int) -> float:
        calls.append((model, height, width, batch))
        row = features(estimate_cost(MODELS[model], height, width, batch), fused=fused)
        return float(np.dot(TRUE[model], row)) * (1.0 + rng.uniform(-noise, noise))

    return measure, calls


def test_fit_recovers_known_coefficients() -> None:
    measure, _ = synthetic()
    cal = calibrate(measure, MODELS, SIZES, backend="fake", device="cpu", batches=(1, 4), host="testhost")
    for name, coef in TRUE.items():
        entry = cal.lookup(name, "cpu")
        assert entry is not None
        fitted = [entry.coefficients[f] for f in FEATURES]
        assert fitted == pytest.approx(coef, rel=1e-6)
        assert entry.residuals.n == len(SIZES) * 2
        assert entry.residuals.max_relative < 1e-9


def test_fit_with_noise_predicts_within_a_few_percent() -> None:
    measure, _ = synthetic(noise=0.03, seed=1)
    cal = calibrate(measure, MODELS, SIZES, backend="fake", device="cpu", batches=(1, 2, 4), repeats=1, warmup=0)
    for name, facts in MODELS.items():
        entry = cal.lookup(name, "cpu")
        assert entry is not None
        assert entry.residuals.rms_relative < 0.05
        # extrapolation to a size not measured stays close to the truth
        truth = float(np.dot(TRUE[name], features(estimate_cost(facts, 1024, 1024), fused=False)))
        assert entry.predict_seconds(facts, 1024, 1024) == pytest.approx(truth, rel=0.1)


def test_fit_never_returns_negative_coefficients() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.uniform(1, 10, 20), rng.uniform(1, 10, 20), np.ones(20)])
    y = x @ np.array([0.5, 0.0, 2.0]) - 0.3 * x[:, 1] * rng.uniform(0, 1, 20)  # pushes b below zero
    y = np.clip(y, 0.1, None)
    coef = fit_latency(x.tolist(), y.tolist())
    assert min(coef) >= 0.0
    assert coef[1] == 0.0
    unconstrained = np.linalg.lstsq(x / y[:, None], np.ones(20), rcond=None)[0]
    assert unconstrained[1] < 0  # the constraint mattered


def test_fit_rejects_too_few_or_bad_measurements() -> None:
    with pytest.raises(ValueError, match="at least 4"):
        fit_latency([[1, 1, 1, 1]] * 3, [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="positive"):
        fit_latency([[1, 2, 3, 1]] * 4, [1.0, 0.0, 1.0, 1.0])


def test_calibrate_calls_measure_fn_with_warmup_and_repeats() -> None:
    measure, calls = synthetic()
    calibrate(
        measure,
        {"vit_small": VIT_S16},
        [224, 256, 320, 384],
        backend="fake",
        device="cpu",
        batches=(1, 2),
        repeats=3,
        warmup=1,
    )
    assert len(calls) == 4 * 2 * (1 + 3)
    assert set(calls) == {("vit_small", s, s, b) for s in (224, 256, 320, 384) for b in (1, 2)}


def test_calibrate_rejects_a_bad_measurement() -> None:
    with pytest.raises(ValueError, match="returned"):
        calibrate(lambda *_: float("nan"), {"vit_small": VIT_S16}, [224, 256, 320, 384], backend="fake", device="cpu")


def test_json_round_trip(tmp_path: Path) -> None:
    measure, _ = synthetic(noise=0.02)
    cal = calibrate(measure, MODELS, SIZES, backend="onnxruntime", device="cpu", host="box-1")
    path = cal.save(tmp_path / "repo" / "calibration.json")
    raw = json.loads(path.read_text())
    assert raw["entries"][0]["host"] == "box-1"
    assert {"date", "residuals", "measurements", "coefficients"} <= set(raw["entries"][0])
    loaded = load_calibration(path)
    assert loaded == cal
    entry, original = loaded.lookup("swin_tiny", "cpu", "onnxruntime"), cal.lookup("swin_tiny", "cpu")
    assert entry is not None and original is not None
    assert entry.predict_seconds(SWIN_T, 512, 512) == original.predict_seconds(SWIN_T, 512, 512)


def test_merge_replaces_same_key_and_lookup_picks_newest() -> None:
    measure, _ = synthetic()
    first = calibrate(measure, MODELS, SIZES, backend="onnxruntime", device="cpu")
    torch_run = calibrate(measure, {"vit_small": VIT_S16}, SIZES, backend="torch", device="cpu")
    again = calibrate(measure, {"vit_small": VIT_S16}, SIZES, backend="onnxruntime", device="cpu")
    again.entries[0] = again.entries[0].model_copy(update={"date": "2999-01-01T00:00:00+00:00"})
    merged = first.merged(torch_run).merged(again)
    keys = sorted((e.model, e.backend) for e in merged.entries)
    assert keys == [("swin_tiny", "onnxruntime"), ("vit_small", "onnxruntime"), ("vit_small", "torch")]
    exact, newest = merged.lookup("vit_small", "cpu", "onnxruntime"), merged.lookup("vit_small", "cpu")
    assert exact is not None and exact.date.startswith("2999")
    assert newest is not None and newest.date.startswith("2999")
    assert merged.lookup("vit_small", "cuda:0") is None


def test_load_missing_and_invalid_files(tmp_path: Path) -> None:
    assert load_calibration(tmp_path / "absent.json") == Calibration()
    with pytest.raises(FileNotFoundError):
        load_calibration(tmp_path / "absent.json", missing_ok=False)
    bad = tmp_path / "bad.json"
    bad.write_text('{"entries": [{"model": "x"}]}')
    with pytest.raises(ValueError, match="not a valid calibration"):
        load_calibration(bad)


def test_report_lists_entries_and_residuals() -> None:
    measure, _ = synthetic(noise=0.02)
    report = calibrate(measure, MODELS, SIZES, backend="onnxruntime", device="cpu", host="box-1").report()
    lines = report.splitlines()
    assert len(lines) == 3
    assert lines[1].startswith("swin_tiny") and "box-1" in lines[1]
    assert "no calibration" in Calibration().report()


def test_prediction_uses_calibration_else_flagged_fallback() -> None:
    measure, _ = synthetic()
    cal = calibrate(measure, MODELS, SIZES, backend="onnxruntime", device="cpu")
    hit = predict_latency(cal, "vit_small", VIT_S16, 512, 512, device="cpu")
    truth = float(np.dot(TRUE["vit_small"], features(estimate_cost(VIT_S16, 512, 512), fused=False)))
    assert hit.calibrated and hit.seconds == pytest.approx(truth, rel=1e-6)
    assert "onnxruntime" in hit.source

    miss = predict_latency(cal, "vit_small", VIT_S16, 512, 512, device="cuda:0")
    assert not miss.calibrated
    assert miss.seconds == pytest.approx(estimate_cost(VIT_S16, 512, 512).macs / 2.0e13)
    assert "fallback" in miss.source
    override = predict_latency(None, "vit_small", VIT_S16, 512, 512, device="cpu", fallback_macs_per_s=1e9)
    assert override.seconds == pytest.approx(estimate_cost(VIT_S16, 512, 512).macs / 1e9)
