"""Writes the generated Serve config into the KubeRay manifests; ``--check`` fails when they are stale.

The ``serveConfigV2`` text KubeRay submits to Ray is never written by hand: it is
``service.serve.config.serve_config()`` (the same settings and app builder as ``tessera serve``)
for the cluster's settings, with the cluster-only deployment options below added:

- every backbone deployment scales with Ray Serve's autoscaler (``autoscaling_config`` replaces
  ``num_replicas``: Serve refuses both), between ``min_replicas`` and ``max_replicas`` replicas,
  aiming at two batches in flight per replica;
- a backbone replica reserves ``num_cpus`` (and, on the GPU variant, ``num_gpus``) as sized for
  the worker pods of that variant, instead of the laptop-sized values in ``config.yaml``.

Variants and where their text lives:

- ``cpu``: ``deploy/base/rayservice.yaml``, ``spec.serveConfigV2`` (the base every overlay shares);
- ``gpu``: ``deploy/overlays/gpu/rayservice-gpu.yaml``, the JSON 6902 ``replace`` of ``/spec/serveConfigV2``.

Run ``.venv/bin/python deploy/render.py`` after changing models, settings or the generator;
``--check`` (run by the tests) exits 1 with a diff when a committed file differs from what it would
write. ``--model-repo`` renders for another repository (the one you put on the volume).
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DEFAULT_MODEL_REPO",
    "JOB_DIR",
    "MODELS_MOUNT",
    "REPO_ROOT",
    "TOKENS_FILE",
    "VARIANTS",
    "Variant",
    "cluster_settings",
    "embedded_text",
    "render_file",
    "serve_config_for",
    "serve_config_text",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_REPO = REPO_ROOT / "model_repo"

# Where the manifests put things in every Tessera pod (the tests check the manifests agree).
MODELS_MOUNT = "/models"
TOKENS_FILE = "/etc/tessera/tokens"
JOB_DIR = "/var/lib/tessera/jobs"


@dataclass(frozen=True)
class Variant:
    """One generated Serve config and the file and YAML key that hold it."""

    name: str
    path: Path
    key: str
    backbone_num_cpus: float
    backbone_num_gpus: float
    min_replicas: int
    max_replicas: int

    def extract(self, document: Any) -> str:
        """The embedded config text in the parsed file ``path``."""
        if self.key == "serveConfigV2":
            return str(document["spec"]["serveConfigV2"])
        matches = [op["value"] for op in document if op.get("path") == "/spec/serveConfigV2"]
        if len(matches) != 1:
            raise ValueError(f"{self.path}: expected one operation on /spec/serveConfigV2, found {len(matches)}")
        return str(matches[0])


VARIANTS: dict[str, Variant] = {
    # CPU workers have 4 CPUs: two backbone replicas of 2 CPUs (and 2 ONNX Runtime threads) each.
    "cpu": Variant(
        name="cpu",
        path=REPO_ROOT / "deploy/base/rayservice.yaml",
        key="serveConfigV2",
        backbone_num_cpus=2.0,
        backbone_num_gpus=0.0,
        min_replicas=1,
        max_replicas=4,
    ),
    # GPU workers have one GPU: one backbone replica per GPU (the GPU group's maxReplicas is 12: three backbones at 4).
    "gpu": Variant(
        name="gpu",
        path=REPO_ROOT / "deploy/overlays/gpu/rayservice-gpu.yaml",
        key="value",
        backbone_num_cpus=2.0,
        backbone_num_gpus=1.0,
        min_replicas=1,
        max_replicas=4,
    ),
}


def cluster_settings(model_repo: Path = DEFAULT_MODEL_REPO) -> Any:
    """The ``ServerSettings`` the cluster runs with (the same for every variant)."""
    from service.settings import ServerSettings

    return ServerSettings(
        model_repo=str(model_repo),
        auth_tokens_file=TOKENS_FILE,
        job_dir=JOB_DIR,
        intra_op_threads=2,
        ingress_replicas=2,
        # a cluster scales each backbone on its own GPU workers and keeps a crashed model away from the
        # ingress (docs/architecture.md, "Topology"), whatever a single host's default becomes
        topology="split",
    )


def serve_config_for(variant: Variant, model_repo: Path = DEFAULT_MODEL_REPO) -> dict[str, Any]:
    """``serve_config()`` for the cluster, with the variant's autoscaling and resources."""
    from service.models import ModelRepository
    from service.serve.config import backbone_deployment_name, serve_config

    config = serve_config(cluster_settings(model_repo), model_repo_in_cluster=MODELS_MOUNT)
    batch_sizes = {
        backbone_deployment_name(name): cfg.batching.max_batch_size
        for name, cfg in ModelRepository(str(model_repo)).configs().items()
    }
    for app in config["applications"]:
        for deployment in app["deployments"]:
            if deployment["name"] not in batch_sizes:
                continue
            max_ongoing = int(deployment["max_ongoing_requests"])
            deployment.pop("num_replicas", None)
            deployment["autoscaling_config"] = {
                "min_replicas": variant.min_replicas,
                "max_replicas": variant.max_replicas,
                # One batch running and one filling per replica, within what a replica accepts.
                "target_ongoing_requests": float(min(2 * batch_sizes[deployment["name"]], max_ongoing)),
                "upscale_delay_s": 30.0,
                "downscale_delay_s": 600.0,
            }
            deployment["ray_actor_options"] = {
                **deployment.get("ray_actor_options", {}),
                "num_cpus": variant.backbone_num_cpus,
                "num_gpus": variant.backbone_num_gpus,
            }
    return config


def serve_config_text(variant: Variant, model_repo: Path = DEFAULT_MODEL_REPO) -> str:
    """The YAML text embedded in the manifest (what KubeRay hands to Ray Serve)."""
    return yaml.safe_dump(serve_config_for(variant, model_repo), sort_keys=False, default_flow_style=False, width=4096)


def embedded_text(variant: Variant) -> str:
    """The config text currently committed in ``variant.path``."""
    return variant.extract(yaml.safe_load(variant.path.read_text()))


def replace_block(text: str, key: str, content: str, *, where: str = "<text>") -> str:
    """``text`` with the literal block scalar under ``key: |`` replaced by ``content``."""
    lines = text.splitlines(keepends=True)
    pattern = re.compile(rf"^(?P<indent> *){re.escape(key)}: \|\s*$")
    found = [(i, m) for i, m in enumerate(map(pattern.match, lines)) if m]
    if len(found) != 1:
        raise ValueError(f"{where}: expected one `{key}: |` block, found {len(found)}")
    start, match = found[0]
    indent = len(match.group("indent"))
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or _indent(lines[end]) > indent):
        end += 1
    # Blank lines just before the next key belong to the file, not to the block.
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1
    body = [(" " * (indent + 2) + line if line else "") + "\n" for line in content.splitlines()]
    return "".join([*lines[: start + 1], *body, *lines[end:]])


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def render_file(variant: Variant, model_repo: Path = DEFAULT_MODEL_REPO) -> tuple[str, str]:
    """(current text, text with a fresh config) of ``variant.path``."""
    current = variant.path.read_text()
    content = serve_config_text(variant, model_repo)
    updated = replace_block(current, variant.key, content, where=str(variant.path))
    if variant.extract(yaml.safe_load(updated)) != content:
        raise ValueError(f"{variant.path}: the rewritten block does not read back as the generated config")
    return current, updated


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 (with a diff) when a file is out of date")
    parser.add_argument("--model-repo", type=Path, default=DEFAULT_MODEL_REPO, help="model repository to render")
    args = parser.parse_args(argv)
    stale = []
    for variant in VARIANTS.values():
        current, updated = render_file(variant, args.model_repo.resolve())
        relative = variant.path.relative_to(REPO_ROOT) if variant.path.is_relative_to(REPO_ROOT) else variant.path
        if current == updated:
            print(f"up to date: {relative}")
            continue
        if args.check:
            stale.append(relative)
            sys.stdout.writelines(
                difflib.unified_diff(
                    current.splitlines(keepends=True),
                    updated.splitlines(keepends=True),
                    fromfile=f"{relative} (committed)",
                    tofile=f"{relative} (serve_config())",
                )
            )
        else:
            variant.path.write_text(updated)
            print(f"rendered: {relative}")
    if stale:
        print(f"out of date: {', '.join(map(str, stale))}; run .venv/bin/python deploy/render.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
