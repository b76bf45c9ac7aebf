"""deploy/render.py: the committed Serve configs are current, and the block rewriting is exact."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from deploy import render


def test_check_mode_passes_on_the_committed_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert render.main(["--check"]) == 0, capsys.readouterr().out


@pytest.mark.parametrize("variant", sorted(render.VARIANTS))
def test_check_mode_fails_on_a_stale_file(tmp_path: Path, variant: str, capsys: pytest.CaptureFixture[str]) -> None:
    original = render.VARIANTS[variant]
    stale = tmp_path / original.path.name
    stale.write_text(original.path.read_text().replace("max_replicas: 4", "max_replicas: 3"))
    copy = dataclasses.replace(original, path=stale)
    current, updated = render.render_file(copy)
    assert current != updated and "max_replicas: 3" in current and "max_replicas: 3" not in updated
    assert copy.extract(yaml.safe_load(updated)) == render.serve_config_text(original)
    # The same through the command line, with the variant pointed at the stale copy.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(render, "VARIANTS", {variant: copy})
        assert render.main(["--check"]) == 1
        assert "max_replicas: 3" in capsys.readouterr().out
        assert render.main([]) == 0
        assert render.main(["--check"]) == 0
    assert stale.read_text() == updated


def test_replace_block_touches_only_the_block() -> None:
    text = "a: 1\nspec:\n  # comment\n  key: |\n    old: 1\n\n    more: 2\n\n  after: 3\nend: 4\n"
    out = render.replace_block(text, "key", "new: 1\nnested:\n  x: 2\n")
    assert out == "a: 1\nspec:\n  # comment\n  key: |\n    new: 1\n    nested:\n      x: 2\n\n  after: 3\nend: 4\n"
    assert yaml.safe_load(out)["spec"]["key"] == "new: 1\nnested:\n  x: 2\n"
    assert render.replace_block(out, "key", "new: 1\nnested:\n  x: 2\n") == out  # idempotent
    with pytest.raises(ValueError, match="expected one"):
        render.replace_block("a: 1\n", "key", "x: 1\n")
    with pytest.raises(ValueError, match="expected one"):
        render.replace_block("key: |\n  a\nb:\n  key: |\n    c\n", "key", "x: 1\n")


def test_serve_config_follows_the_model_repository(tmp_path: Path) -> None:
    """Rendering for another repository (the one on the volume) names its models' deployments."""
    repo = tmp_path / "repo"
    source = render.DEFAULT_MODEL_REPO / "vit_small" / "config.yaml"
    (repo / "uni").mkdir(parents=True)
    config = yaml.safe_load(source.read_text())
    config["name"] = "uni"
    (repo / "uni" / "config.yaml").write_text(yaml.safe_dump(config))
    rendered = render.serve_config_for(render.VARIANTS["gpu"], repo)
    deployments = {d["name"]: d for d in rendered["applications"][0]["deployments"]}
    assert "Ingress" in deployments
    assert [name for name in deployments if name.startswith("backbone_")] == ["backbone_uni"]
    assert rendered["applications"][0]["args"]["model_repo"] == render.MODELS_MOUNT
    backbone = deployments["backbone_uni"]
    assert backbone["ray_actor_options"]["num_gpus"] == 1.0
    assert backbone["autoscaling_config"]["target_ongoing_requests"] == 2 * config["batching"]["max_batch_size"]
