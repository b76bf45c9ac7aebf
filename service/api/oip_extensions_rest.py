"""REST routes of Triton's statistics, model configuration and model repository extensions.

Thin adapters over ``service.api.oip.OpenInference`` (the gRPC servicers in ``service.api.grpc_servicer``
call the same methods). Mounted by ``create_app()`` before the OIP router, so that
``/v2/models/stats`` is not taken for a model named ``stats``.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.api.model_repository import RepositoryModel, TritonModelConfig
from service.api.oip import OpenInference
from service.api.rest_common import parse_json_body, read_body_limited
from service.api.serving import ServingCore
from service.api.statistics import StatisticsResponse
from service.errors import InvalidInput

__all__ = ["router"]

router = APIRouter(tags=["oip"])

ModelName = Annotated[str, Path(description="Model name, e.g. vit_small.")]
ModelVersion = Annotated[str, Path(description="Model version, e.g. 1.")]

_Body = TypeVar("_Body", bound=BaseModel)

#: Repository requests are small JSON documents.
_MAX_CONTROL_BODY = 1 << 20


class RepositoryIndexBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ready: bool = Field(default=False, description="Only the models that are ready.")


class RepositoryControlBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    parameters: dict[str, Any] = Field(
        default_factory=dict, description="unload: unload_dependents (accepted; Tessera has no dependents)."
    )


def _oip(request: Request) -> OpenInference:
    core: ServingCore = request.app.state.core
    return OpenInference(core)


async def _body(request: Request, model: type[_Body]) -> _Body:
    """An optional JSON body (Triton's clients send ``{}`` or nothing)."""
    raw = await read_body_limited(request, _MAX_CONTROL_BODY)
    if not raw.strip():
        return model()
    payload = parse_json_body(raw)
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise InvalidInput.from_validation(exc.errors(), "request") from None


# -- statistics ----------------------------------------------------------------------------------------
@router.get("/v2/models/stats", response_model=StatisticsResponse, summary="Statistics of every model")
async def all_statistics(request: Request) -> StatisticsResponse:
    """Inference statistics of every model in the repository (Triton's statistics extension)."""
    return _oip(request).statistics()


@router.get("/v2/models/{model}/stats", response_model=StatisticsResponse, summary="Model statistics")
async def model_statistics(request: Request, model: ModelName) -> StatisticsResponse:
    """Counts and durations (success, fail, queue, compute input/infer/output, per batch size)."""
    return _oip(request).statistics(model)


@router.get(
    "/v2/models/{model}/versions/{version}/stats",
    response_model=StatisticsResponse,
    summary="Model statistics (version)",
)
async def model_version_statistics(request: Request, model: ModelName, version: ModelVersion) -> StatisticsResponse:
    """Statistics of one version of the model; 404 when it does not have it."""
    return _oip(request).statistics(model, version)


# -- model configuration -----------------------------------------------------------------------------
@router.get("/v2/models/{model}/config", response_model=TritonModelConfig, summary="Model configuration")
async def model_config(request: Request, model: ModelName) -> TritonModelConfig:
    """The model's configuration in Triton's shape, Tessera's own facts in ``parameters``."""
    return _oip(request).model_config(model)


@router.get(
    "/v2/models/{model}/versions/{version}/config",
    response_model=TritonModelConfig,
    summary="Model configuration (version)",
)
async def model_version_config(request: Request, model: ModelName, version: ModelVersion) -> TritonModelConfig:
    """The configuration of one version of the model."""
    return _oip(request).model_config(model, version)


# -- model repository --------------------------------------------------------------------------------
@router.post("/v2/repository/index", response_model=list[RepositoryModel], summary="Repository index")
async def repository_index(request: Request) -> list[RepositoryModel]:
    """Every model with its version, state (READY or UNAVAILABLE) and the reason when not ready."""
    body = await _body(request, RepositoryIndexBody)
    return _oip(request).repository_index(ready_only=body.ready)


@router.post("/v2/repository/models/{model}/load", summary="Load a model")
async def load_model(request: Request, model: ModelName) -> Response:
    """Load a model (building it first when it is not built); answers once it is ready (explicit model control only)."""
    body = await _body(request, RepositoryControlBody)
    await _oip(request).load(model, body.parameters)
    return Response(status_code=200)


@router.post("/v2/repository/models/{model}/unload", summary="Unload a model")
async def unload_model(request: Request, model: ModelName) -> Response:
    """Take a model out of service and wait for its requests in flight (explicit model control only)."""
    body = await _body(request, RepositoryControlBody)
    await _oip(request).unload(model, body.parameters)
    return Response(status_code=200)
