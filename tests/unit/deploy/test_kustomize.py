"""deploy/kustomize.py on small kustomizations: the subset it implements, and what it refuses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.kustomize import KustomizeError, build, split_image

DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "labels": {"app": "web"}},
    "spec": {
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "web:1"}, {"name": "side", "image": "other:2"}]},
        },
    },
}
CUSTOM = {
    "apiVersion": "example.com/v1",
    "kind": "Thing",
    "metadata": {"name": "thing"},
    "spec": {"deep": {"template": {"spec": {"initContainers": [{"name": "init", "image": "web"}]}}}},
}


def write(folder: Path, kustomization: dict[str, Any], files: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    for name, content in files.items():
        text = content if isinstance(content, str) else yaml.safe_dump_all(content)
        (folder / name).write_text(text)
    return folder


def test_resources_namespace_labels_images_and_order(tmp_path: Path) -> None:
    base = write(
        tmp_path / "base",
        {"resources": ["app.yaml"], "namespace": "ns", "labels": [{"pairs": {"team": "a"}}]},
        {"app.yaml": [DEPLOYMENT, CUSTOM, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}}]},
    )
    overlay = write(
        tmp_path / "overlay",
        {"resources": ["../base"], "images": [{"name": "web", "newName": "reg:5000/web", "newTag": "2.0"}]},
        {},
    )
    objects = build(overlay)
    assert [o["kind"] for o in objects] == ["Namespace", "Deployment", "Thing"]  # kustomize's legacy order
    namespace, deployment, thing = objects
    assert "namespace" not in namespace["metadata"]
    assert deployment["metadata"]["namespace"] == thing["metadata"]["namespace"] == "ns"
    assert deployment["metadata"]["labels"] == {"app": "web", "team": "a"}
    assert deployment["spec"]["selector"] == {"matchLabels": {"app": "web"}}  # selectors untouched
    images = [c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]]
    assert images == ["reg:5000/web:2.0", "other:2"]
    assert thing["spec"]["deep"]["template"]["spec"]["initContainers"][0]["image"] == "reg:5000/web:2.0"
    assert build(base)[1]["spec"]["template"]["spec"]["containers"][0]["image"] == "web:1"  # base unchanged


def test_json6902_and_strategic_merge_patches(tmp_path: Path) -> None:
    ops = [
        {"op": "test", "path": "/spec/template/spec/containers/0/name", "value": "web"},
        {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "web:3"},
        {"op": "add", "path": "/spec/template/spec/containers/-", "value": {"name": "new", "image": "n:1"}},
        {"op": "remove", "path": "/spec/template/spec/containers/1"},
        {"op": "add", "path": "/metadata/annotations", "value": {"a/b": "c"}},
        {"op": "remove", "path": "/metadata/annotations/a~1b"},
    ]
    merge = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": None}}}
    folder = write(
        tmp_path,
        {
            "resources": ["app.yaml"],
            "patches": [
                {"path": "ops.yaml", "target": {"kind": "Deploy.*", "name": "web"}},
                {"patch": yaml.safe_dump(merge)},
                {"patch": "$patch: delete\napiVersion: example.com/v1\nkind: Thing\nmetadata:\n  name: thing\n"},
            ],
        },
        {"app.yaml": [DEPLOYMENT, CUSTOM], "ops.yaml": yaml.safe_dump(ops)},
    )
    (deployment,) = build(folder)
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"]) for c in containers] == [("web", "web:3"), ("new", "n:1")]
    # As kustomize prints it: an emptied labels map stays, an emptied annotations map goes.
    assert deployment["metadata"]["labels"] == {} and "annotations" not in deployment["metadata"]


@pytest.mark.parametrize(
    ("kustomization", "files", "message"),
    [
        ({"resources": ["app.yaml"], "commonLabels": {"a": "b"}}, {}, "unsupported kustomization fields"),
        ({"resources": ["missing.yaml"]}, {}, "not found"),
        ({"resources": ["../outside.yaml"]}, {}, "outside the kustomization root"),
        ({"resources": ["app.yaml", "app.yaml"]}, {}, "listed twice"),
        (
            {"resources": ["app.yaml"], "patches": [{"path": "p.yaml", "target": {"kind": "Deployment"}}]},
            {"p.yaml": '[{"op": "test", "path": "/spec/selector/matchLabels/app", "value": "db"}]'},
            "test failed",
        ),
        (
            {"resources": ["app.yaml"], "patches": [{"path": "p.yaml", "target": {"kind": "Service"}}]},
            {"p.yaml": '[{"op": "remove", "path": "/spec"}]'},
            "matches no resource",
        ),
        (
            {"resources": ["app.yaml"], "patches": [{"path": "p.yaml", "target": {"kind": "Deployment"}}]},
            {"p.yaml": '[{"op": "replace", "path": "/spec/nothing", "value": 1}]'},
            "does not exist",
        ),
        (
            {"resources": ["app.yaml"], "patches": [{"path": "p.yaml"}]},
            {"p.yaml": yaml.safe_dump({**DEPLOYMENT, "spec": {"template": {"spec": {"containers": []}}}})},
            "use a JSON 6902 patch",
        ),
        ({"resources": ["app.yaml"], "labels": [{"pairs": {"a": "b"}, "includeSelectors": True}]}, {}, "labels"),
    ],
)
def test_refuses_what_it_does_not_implement(
    tmp_path: Path, kustomization: dict[str, Any], files: dict[str, str], message: str
) -> None:
    (tmp_path / "outside.yaml").write_text(yaml.safe_dump(CUSTOM))
    folder = write(tmp_path / "k", kustomization, {"app.yaml": [DEPLOYMENT], **files})
    with pytest.raises(KustomizeError, match=message):
        build(folder)


def test_split_image() -> None:
    assert split_image("web") == ("web", None, None)
    assert split_image("reg:5000/team/web:1.2") == ("reg:5000/team/web", "1.2", None)
    assert split_image("reg:5000/web@sha256:ab") == ("reg:5000/web", None, "sha256:ab")
    assert split_image("web:1@sha256:ab") == ("web", "1", "sha256:ab")
