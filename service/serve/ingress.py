"""The ingress deployment: hosts the REST app (and the gRPC servicers) over the serving core."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from service.api.grpc_servicer import GrpcIngressMixin, message_limit
from service.api.logs import configure_access_log
from service.api.rest import create_app
from service.api.serving import ServingCore, split_batch_reply
from service.api.telemetry import Telemetry
from service.errors import NotFound, Overloaded
from service.imaging import DecodeLimits
from service.models import ModelRepository
from service.routing.factory import make_router
from service.serve.backbone import BackboneHost
from service.serve.front_end import ReplicaFrontEnd
from service.serve.metrics import RayTelemetry
from service.serve.models import HandleModelStates, ModelStateBook, StateSource
from service.settings import ServerSettings

__all__ = ["HandleClient", "HostClient", "Ingress"]

log = logging.getLogger(__name__)


class HandleClient:
    """``BackboneClient`` over Ray Serve deployment handles (batched in the backbone replicas)."""

    def __init__(self, handles: dict[str, DeploymentHandle], telemetry: Telemetry):
        self.handles = handles
        self.telemetry = telemetry

    async def infer(self, model: str, pixels: np.ndarray) -> dict[str, Any]:
        reply: dict[str, Any] = await self._call(model, "infer", pixels)
        return reply

    async def infer_batch(self, model: str, pixels: np.ndarray) -> list[dict[str, Any]]:
        return split_batch_reply(await self._call(model, "infer_batch", pixels))

    async def _call(self, model: str, method: str, pixels: np.ndarray) -> Any:
        handle = self.handles.get(model)
        if handle is None:
            raise NotFound(f"model {model!r} is not deployed", param="model")
        try:
            return await getattr(handle, method).remote(pixels)
        except BackPressureError as exc:
            # Ray would answer this itself with a plain-text 503; the contract's envelope and
            # Retry-After come from our error mapping instead, on REST and gRPC alike.
            self.telemetry.rejected("backpressure")
            raise Overloaded(
                f"model {model!r} is at capacity: {exc.message} Retry shortly.",
                retry_after_s=exc.retry_after_s or 1.0,
            ) from None


class HostClient:
    """``BackboneClient`` over the backbones this ingress replica holds itself (``topology: colocated``)."""

    def __init__(self, hosts: dict[str, BackboneHost]):
        self.hosts = hosts

    def host(self, model: str) -> BackboneHost:
        host = self.hosts.get(model)
        if host is None:
            raise NotFound(f"model {model!r} is not deployed", param="model")
        return host

    async def infer(self, model: str, pixels: np.ndarray) -> dict[str, Any]:
        return await self.host(model).infer(pixels)

    async def infer_batch(self, model: str, pixels: np.ndarray) -> list[dict[str, Any]]:
        return split_batch_reply(await self.host(model).infer_batch(pixels))


#: How long Ray gives a stopping ingress replica before it kills it ...
GRACE_S = 30.0
#: ... and the part of it the requests in flight on the replica's own ports get (``front_end: replica``):
#: Ray's own drain loop and the ASGI shutdown run first.
FRONT_END_GRACE_S = 25.0


@serve.deployment(graceful_shutdown_wait_loop_s=0.5, graceful_shutdown_timeout_s=GRACE_S)
@serve.ingress()
class Ingress(GrpcIngressMixin):
    def __init__(
        self,
        settings: dict[str, Any],
        backbones: dict[str, DeploymentHandle] | None,
        slide_jobs: DeploymentHandle | None = None,
        states: DeploymentHandle | None = None,
    ):
        self.settings = ServerSettings.model_validate(settings)
        configure_access_log(self.settings.log_level)
        self.front_end: ReplicaFrontEnd | None = None
        if self.settings.front_end == "replica":  # bound now, before any model loads; serving at the end
            self.front_end = ReplicaFrontEnd(
                self,
                host=self.settings.host,
                http_port=self.settings.http_port,
                grpc_port=self.settings.grpc_port,
                max_message_bytes=message_limit(self.settings.max_body_bytes),
            )
        repo = ModelRepository(self.settings.model_repo)
        limits = DecodeLimits(
            max_bytes=self.settings.max_body_bytes,
            max_pixels=self.settings.max_image_pixels,
            max_side=self.settings.max_image_side,
        )
        from service.serve.slides import HandleSlideService

        self.slides = HandleSlideService(slide_jobs) if slide_jobs is not None else None
        telemetry = RayTelemetry()
        # The models' states: the ModelStates deployment's, or this replica's own book when it is the
        # only one and holds every model (config.states_in_ingress: the app then deploys no ModelStates).
        self.states: StateSource | None = HandleModelStates(states) if states is not None else None
        if states is None and backbones is None:
            self.states = ModelStateBook(settings)
        self.hosts: HostClient | None = None
        if backbones is None:  # topology colocated: every model runs here, where its requests are decoded
            self.hosts = HostClient(
                {
                    name: BackboneHost.from_settings(self.settings, name, self.states, in_ingress=True)
                    for name in repo.names()
                }
            )
        self.core = ServingCore(
            repo,
            make_router(repo, self.settings),
            self.hosts if self.hosts is not None else HandleClient(backbones or {}, telemetry),
            limits=limits,
            max_pending=self.settings.max_pending_predictions,
            timeout_s=self.settings.request_timeout_s,
            telemetry=telemetry,
            model_control_mode=self.settings.model_control_mode,
            states=self.states,
            router_factory=lambda: make_router(ModelRepository(self.settings.model_repo), self.settings),
        )
        # The models' states now and then twice a second, in the background (Ray Serve runs this
        # constructor on the replica's event loop).
        self.core.control.start()
        self.rest_app = self._build_app()
        if self.front_end is not None:
            self.front_end.start(self.rest_app)

    def check_health(self) -> None:
        """Ray Serve's health check: a replica whose own server stopped is restarted."""
        reason = self.front_end.failure() if self.front_end is not None else None
        if reason is not None:
            raise RuntimeError(reason)

    async def __del__(self) -> None:
        """Ray Serve's graceful shutdown (its ASGI wrapper's ``__del__`` runs first, then this one):
        the requests on this replica's own ports get ``FRONT_END_GRACE_S`` to finish (Ray counts only
        the requests it routed itself, and kills the replica ``GRACE_S`` after the stop began)."""
        front_end: ReplicaFrontEnd | None = getattr(self, "front_end", None)  # None: the constructor failed
        if front_end is not None:
            self.core.draining = True
            await front_end.stop(FRONT_END_GRACE_S)

    async def _metrics(self) -> str:
        from service.serve.metrics_relay import fetch_metrics, node_metrics_url

        return await asyncio.to_thread(fetch_metrics, node_metrics_url())

    async def model_states(self) -> dict[str, Any]:
        """Each model's ``ModelStatus`` as this replica reads them (the driver's progress and ready
        checks; with the states in this replica there is no ModelStates deployment to ask)."""
        return await self.states.states() if self.states is not None else {}

    async def begin_drain(self) -> int:
        """Stop taking new requests; return how many are still in progress."""
        self.core.draining = True
        return self.core.inflight

    async def inflight(self) -> int:
        return self.core.inflight

    async def infer_batch(self, model: str, pixels: np.ndarray) -> dict[str, Any]:
        """A slide job's batch on a backbone this replica holds (``topology: colocated``)."""
        if self.hosts is None:
            raise NotFound("this ingress holds no backbone (topology split): call the backbone deployment")
        return await self.hosts.host(model).infer_batch(pixels)

    def __serve_build_asgi_app__(self) -> Any:
        """Ray Serve calls this after ``__init__``: the REST app of this replica, over its core (the
        one its own HTTP server serves with ``front_end: replica``)."""
        return self.rest_app

    def _build_app(self) -> Any:
        app = create_app()
        app.state.core = self.core
        app.state.settings = self.settings
        app.state.metrics_source = self._metrics
        app.state.max_slide_bytes = self.settings.max_slide_bytes
        if self.slides is not None:
            app.state.slides = self.slides
        return app
