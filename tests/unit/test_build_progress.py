"""A build says where it is and how long it has left; a model built without fp16 gets it added alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service.export import build
from service.export.build import BuildEstimate, build_model
from service.models import ArchFacts, ModelRepository


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_estimate_prices_the_checks_ahead_from_those_done(
    small_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = ModelRepository(small_repo).require_manifest("swin_tiny")
    facts = ArchFacts.from_dict(manifest.arch)
    clock = Clock()
    monkeypatch.setattr(build.time, "perf_counter", clock)
    seen: list[tuple[str, float | None]] = []
    estimate = BuildEstimate("swin_tiny", facts, [224, 448], 2, lambda _m, phase, eta=None: seen.append((phase, eta)))
    cost = {size: build._gmacs(facts, size) for size in (224, 448)}

    estimate("export")
    clock.now = 5.0
    estimate("parity at 224²")
    assert seen[-1] == ("parity at 224²", None)  # nothing timed yet: no estimate rather than a guess
    clock.now = 7.0  # 2 s for 224²
    estimate("parity at 448²")
    rate = 2.0 / cost[224]
    expected = rate * (2 * (cost[224] + cost[448]) - cost[224])
    assert seen[-1][1] == pytest.approx(expected)
    clock.now = 7.0 + rate * cost[448]
    estimate("fp16: convert")
    assert seen[-1][1] == pytest.approx(rate * (cost[224] + cost[448]))  # the fp16 checks still ahead
    assert [phase for phase, _ in seen] == ["export", "parity at 224²", "parity at 448²", "fp16: convert"]


@pytest.mark.slow
def test_fp16_is_added_to_an_fp32_build_without_rebuilding_it(small_repo: Path, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    shutil.copytree(small_repo / "vit_small", root / "vit_small", ignore=shutil.ignore_patterns("1"))
    repo = ModelRepository(root)
    phases: list[str] = []
    rows = build_model(repo, "vit_small", fp16=False)
    assert [r.artifact for r in rows] == ["onnx"]
    fp32 = repo.require_manifest("vit_small").artifacts["onnx"]

    rows = build_model(repo, "vit_small", fp16=True, progress=lambda _m, phase, eta=None: phases.append(phase))
    assert [(r.artifact, r.status) for r in rows] == [("onnx_fp16", "built")]
    manifest = repo.require_manifest("vit_small")
    assert manifest.artifacts["onnx"].sha256 == fp32.sha256  # the fp32 graph was not rebuilt
    assert "onnx_fp16" in manifest.artifacts
    assert not any(p.startswith("parity at") for p in phases), phases  # only the fp16 checks ran
    assert any(p.startswith("fp16: parity at") for p in phases)
    assert build_model(repo, "vit_small", fp16=True)[0].status == "up-to-date"
