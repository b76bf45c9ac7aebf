"""``/v1/slides``: slide jobs over REST (thin: every decision is in the slide layer)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from service.api.rest_common import read_body_limited, replay_form
from service.api.slides_service import SlideService
from service.errors import InvalidInput, NotFound
from service.slides.jobs import JobStatus

__all__ = ["RESULT_MEDIA", "router"]

router = APIRouter(tags=["slides"])

#: Result files served under /v1/slides/{id}/..., with their media types.
RESULT_MEDIA = {
    "features": ("features.h5", "application/x-hdf5"),
    "heatmap.png": ("heatmap.png", "image/png"),
    "tissue_mask.png": ("tissue_mask.png", "image/png"),
    "tissue.geojson": ("tissue.geojson", "application/geo+json"),
    "tiles.geojson": ("tiles.geojson", "application/geo+json"),
    "slide_embedding.npy": ("slide_embedding.npy", "application/octet-stream"),
    "report.json": ("report.json", "application/json"),
}
_OPTION_NAMES = ("mpp", "slide_mpp", "tile", "overlap", "model", "tissue_threshold", "tissue_rule", "edge")


def _slides(request: Request) -> SlideService:
    service: SlideService | None = getattr(request.app.state, "slides", None)
    if service is None:
        raise NotFound("slide jobs are not enabled on this server", param="path")
    return service


@router.post(
    "/v1/slides",
    status_code=202,
    response_model=JobStatus,
    summary="Start a slide job",
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {
                    "schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
                    "example": {"path": "cases/CMU-1-Small-Region.svs"},
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"slide": {"type": "string", "format": "binary"}},
                        "required": ["slide"],
                    }
                },
            }
        }
    },
)
async def submit(
    request: Request,
    mpp: Annotated[float | None, Query(gt=0, le=100, description="Target µm/px (default 0.5).")] = None,
    slide_mpp: Annotated[
        float | None, Query(gt=0, le=100, description="The slide's level-0 µm/px; overrides its metadata.")
    ] = None,
    tile: Annotated[int | None, Query(ge=16, le=4096, description="Tile side in target pixels.")] = None,
    overlap: Annotated[int | None, Query(ge=0, le=4095, description="Overlap in target pixels.")] = None,
    model: Annotated[str | None, Query(description="Tile encoder.")] = None,
    tissue_threshold: Annotated[float | None, Query(ge=0, le=1, description="Min tissue fraction per tile.")] = None,
    tissue_rule: Annotated[str | None, Query(description="fraction (default) or trident.")] = None,
) -> JSONResponse:
    """A slide job from an upload (multipart field ``slide``) or a path inside the slide root (JSON)."""
    limit = int(getattr(request.app.state, "max_slide_bytes", 2 << 30))
    body = await read_body_limited(request, limit)
    ctype = (request.headers.get("content-type") or "").lower()
    options: dict[str, Any] = {
        k: v
        for k, v in {
            "mpp": mpp,
            "slide_mpp": slide_mpp,
            "tile": tile,
            "overlap": overlap,
            "model": model,
            "tissue_threshold": tissue_threshold,
            "tissue_rule": tissue_rule,
        }.items()
        if v is not None
    }
    path: str | None = None
    upload: bytes | None = None
    filename: str | None = None
    if ctype.startswith("multipart/form-data"):
        form = await replay_form(request, body)
        slide = form.get("slide")
        if slide is None or isinstance(slide, str):
            raise InvalidInput("multipart body has no file field named 'slide'", param="slide")
        upload, filename = await slide.read(), slide.filename
        options.update({k: v for k, v in form.items() if k in _OPTION_NAMES and isinstance(v, str)})
    elif ctype.startswith("application/json"):
        try:
            payload = json.loads(body or b"null")
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"body is not valid JSON: {exc.msg}", param="body") from None
        except RecursionError:
            raise InvalidInput("the body's JSON is nested too deeply", param="body") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("path"), str):
            raise InvalidInput(
                'send JSON {"path": "<slide inside the slide root>"} or a multipart upload', param="path"
            )
        path = payload["path"]
        options.update({k: v for k, v in payload.items() if k in _OPTION_NAMES})
        unknown = set(payload) - {"path", *_OPTION_NAMES}
        if unknown:
            raise InvalidInput(f"unknown fields: {', '.join(sorted(unknown))}", param=sorted(unknown)[0])
    else:
        raise InvalidInput(
            "send multipart/form-data with a 'slide' file, or application/json with a 'path'", param="content-type"
        )
    status = await _slides(request).submit(path, upload, filename, options)
    return JSONResponse(status, status_code=202, headers={"Location": f"/v1/slides/{status['id']}"})


@router.get("/v1/slides/{job_id}", response_model=JobStatus, summary="Job state and progress")
async def status(request: Request, job_id: str) -> dict[str, Any]:
    return await _slides(request).status(job_id)


@router.delete("/v1/slides/{job_id}", response_model=JobStatus, summary="Cancel a job")
async def cancel(request: Request, job_id: str) -> dict[str, Any]:
    return await _slides(request).cancel(job_id)


@router.get("/v1/slides/{job_id}/{name}", summary="A result file: features (HDF5), heatmap.png, ...")
async def result(request: Request, job_id: str, name: str) -> Response:
    if name not in RESULT_MEDIA:
        raise NotFound(f"no result {name!r}; results are {', '.join(RESULT_MEDIA)}", param="name")
    filename, media = RESULT_MEDIA[name]
    data = await _slides(request).result(job_id, filename)
    return Response(data, media_type=media, headers={"Content-Disposition": f'attachment; filename="{filename}"'})
