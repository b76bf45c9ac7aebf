"""The ingress deployment: hosts the REST app (and the gRPC servicers) over the serving core."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from service.api.grpc import GrpcIngressMixin
from service.api.rest import create_app
from service.api.serving import ServingCore
from service.imaging import DecodeLimits
from service.models import ModelRepository
from service.routing.factory import make_router
from service.serve.metrics import RayTelemetry
from service.settings import ServerSettings

__all__ = ["HandleClient", "Ingress"]

log = logging.getLogger(__name__)


class HandleClient:
    """``BackboneClient`` over Ray Serve deployment handles (batched in the backbone replicas)."""

    def __init__(self, handles: dict[str, DeploymentHandle]):
        self.handles = handles

    async def infer(self, model: str, pixels: np.ndarray) -> dict[str, Any]:
        from service.errors import NotFound

        handle = self.handles.get(model)
        if handle is None:
            raise NotFound(f"model {model!r} is not deployed", param="model")
        reply: dict[str, Any] = await handle.infer.remote(pixels)
        return reply


@serve.deployment(graceful_shutdown_wait_loop_s=0.5, graceful_shutdown_timeout_s=30)
@serve.ingress()
class Ingress(GrpcIngressMixin):
    def __init__(
        self,
        settings: dict[str, Any],
        backbones: dict[str, DeploymentHandle],
        slide_jobs: DeploymentHandle | None = None,
    ):
        self.settings = ServerSettings.model_validate(settings)
        repo = ModelRepository(self.settings.model_repo)
        limits = DecodeLimits(
            max_bytes=self.settings.max_body_bytes,
            max_pixels=self.settings.max_image_pixels,
            max_side=self.settings.max_image_side,
        )
        from service.serve.slides import HandleSlideService

        self.slides = HandleSlideService(slide_jobs) if slide_jobs is not None else None
        self.core = ServingCore(
            repo,
            make_router(repo, self.settings),
            HandleClient(backbones),
            limits=limits,
            timeout_s=self.settings.request_timeout_s,
            telemetry=RayTelemetry(),
        )

    async def _metrics(self) -> str:
        import asyncio

        from service.serve.metrics_relay import fetch_metrics
        from service.serve.runner import node_metrics_url

        return await asyncio.to_thread(fetch_metrics, node_metrics_url())

    def __serve_build_asgi_app__(self) -> Any:
        """Ray Serve calls this after ``__init__``: the REST app of this replica, over its core."""
        app = create_app()
        app.state.core = self.core
        app.state.settings = self.settings
        app.state.metrics_source = self._metrics
        app.state.max_slide_bytes = self.settings.max_slide_bytes
        if self.slides is not None:
            app.state.slides = self.slides
        return app
