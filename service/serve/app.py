"""The app builder: one function builds the Ray Serve application for ``tessera serve`` and for
KubeRay's ``serveConfigV2`` (``import_path: service.serve.app:app_builder``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray.serve import Application

from service.models import ModelRepository
from service.serve.backbone import Backbone
from service.serve.ingress import Ingress
from service.serve.models import ModelStates
from service.serve.slides import SlideJobs
from service.settings import ServerSettings

__all__ = ["APP_NAME", "app_builder", "backbone_deployment_name", "build_app"]

APP_NAME = "tessera"


def backbone_deployment_name(model: str) -> str:
    return f"backbone_{model}"


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
    states = ModelStates.options(  # type: ignore[attr-defined]
        name="ModelStates",
        logging_config={"enable_access_log": False},  # polled by every replica
    ).bind(settings.model_dump(mode="json"))
    handles: dict[str, Any] = {}
    for name, cfg in repo.configs().items():
        batching = cfg.batching
        handles[name] = Backbone.options(  # type: ignore[attr-defined]
            name=backbone_deployment_name(name),
            num_replicas=batching.num_replicas,
            max_ongoing_requests=batching.max_ongoing_requests,
            max_queued_requests=batching.max_queued_requests,
            ray_actor_options={"num_cpus": batching.num_cpus, "num_gpus": batching.num_gpus},
        ).bind(
            settings.model_repo,
            name,
            settings.runtime,
            settings.providers,
            settings.intra_op_threads,
            settings.ort_spin,
            settings.trt_cache_dir,
            states,
        )
    slide_jobs = SlideJobs.options(  # type: ignore[attr-defined]
        name="SlideJobs", ray_actor_options={"num_cpus": 0.1}
    ).bind(settings.model_dump(mode="json"), handles)
    return Ingress.options(  # type: ignore[attr-defined]
        num_replicas=settings.ingress_replicas,
        max_ongoing_requests=settings.ingress_max_ongoing_requests,
        max_queued_requests=settings.ingress_max_queued_requests,
        ray_actor_options={"num_cpus": 0.1},
    ).bind(settings.model_dump(mode="json"), handles, slide_jobs, states)


def app_builder(args: dict[str, Any]) -> Application:
    """Entry point for ``serve run``/``serveConfigV2``: ``args`` are ServerSettings fields."""
    return build_app(ServerSettings.from_env(**args))
