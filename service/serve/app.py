"""The app builder: one function builds the Ray Serve application for ``tessera serve`` and for
KubeRay's ``serveConfigV2`` (``import_path: service.serve.app:app_builder``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.serve import Application

from service.models import ModelRepository
from service.serve.backbone import Backbone
from service.serve.config import (
    APP_NAME,
    INGRESS,
    backbone_deployment_name,
    deployment_options,
    resolve_layout,
    states_in_ingress,
)
from service.serve.ingress import Ingress
from service.serve.models import ModelStates
from service.serve.slides import SlideJobs
from service.settings import ServerSettings

__all__ = ["APP_NAME", "app_builder", "backbone_deployment_name", "build_app"]


def build_app(settings: ServerSettings) -> Application:
    # Replicas do not share the driver's working directory: every path travels absolute.
    settings = settings.model_copy(
        update={
            "model_repo": str(settings.resolved_repo()),
            "job_dir": str(Path(settings.job_dir).resolve()),
            "slide_root": str(Path(settings.slide_root).resolve()) if settings.slide_root else None,
        }
    )
    repo = ModelRepository(settings.model_repo)
    if not settings.build_missing and all(repo.manifest(name) is None for name in repo.names()):
        raise FileNotFoundError(
            f"no model in {repo.root} is built: run `tessera build`, or `tessera serve --build` to build "
            "them while serving (make serve does)"
        )
    # Every configured model gets its backbone deployment; one not built yet holds nothing until
    # it is (its state says "building", or "unavailable: not built" without --build).
    options = deployment_options(settings, repo)
    as_dict = settings.model_dump(mode="json")  # what every replica rebuilds its ServerSettings from
    # the models' states: a deployment every replica asks, or (one colocated ingress) the ingress's own
    states = (
        None
        if states_in_ingress(settings)
        else ModelStates.options(name="ModelStates", **options["ModelStates"]).bind(as_dict)  # type: ignore[attr-defined]
    )
    # topology split: a deployment per backbone, which the ingress and the slide jobs call; colocated:
    # none, the ingress replicas hold the backbones (and run the slide jobs' batches).
    handles: dict[str, Any] | None = None
    if settings.topology == "split":
        handles = {
            name: Backbone.options(  # type: ignore[attr-defined]
                name=backbone_deployment_name(name), **options[backbone_deployment_name(name)]
            ).bind(as_dict, name, states)
            for name in repo.configs()
        }
    slide_jobs = SlideJobs.options(name="SlideJobs", **options["SlideJobs"]).bind(  # type: ignore[attr-defined]
        as_dict, handles
    )
    return Ingress.options(name=INGRESS, **options[INGRESS]).bind(  # type: ignore[attr-defined]
        as_dict, handles, slide_jobs, states
    )


def app_builder(args: dict[str, Any]) -> Application:
    """Entry point for ``serve run``/``serveConfigV2``: ``args`` are ServerSettings fields.

    What listens on the ports there is the cluster's (its proxies, or ``RAY_SERVE_*`` on its nodes),
    and ``auto`` resolves to a deployment per model (``resolve_layout``).
    ``front_end: replica`` is refused: its replicas would bind the ports beside the cluster's
    proxies, which listen with ``SO_REUSEPORT`` too, and the kernel would split the connections
    between them without a word."""
    settings = resolve_layout(ServerSettings.from_env(**args), embedded=False)
    if settings.front_end == "replica":
        raise ValueError(
            "front_end replica runs on the Ray that `tessera serve` starts itself; deployed with serve run or "
            "KubeRay the cluster's proxies serve the ports: unset TESSERA_FRONT_END"
        )
    return build_app(settings)
