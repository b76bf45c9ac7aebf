"""``/v1/slides``: slide jobs over REST (thin: every decision is in the slide layer)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from service.api.rest_common import parse_json_body, read_body_limited, spooled_form
from service.api.slides_service import PARTIAL_FEATURES, SlideService
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
    "features.partial": (PARTIAL_FEATURES, "application/x-hdf5"),
}
#: a coordinates file (TRIDENT/CLAM) is small: 2M tiles x 2 x 8 bytes is 32 MB
_MAX_COORDS_BYTES = 64 << 20
_MAX_JSON_BYTES = 1 << 20
_OPTION_NAMES = ("mpp", "slide_mpp", "tile", "overlap", "model", "tissue_threshold", "tissue_rule", "edge", "export")


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
    """A slide job from an upload (multipart field ``slide``) or a path inside the slide root (JSON).

    An upload is spooled to disk as it arrives (never held whole in memory) and refused with
    413 as soon as it passes the limit. A TRIDENT or CLAM coordinates file can come as the
    multipart field ``coords`` (or ``coords_path`` in the JSON body, inside the slide root): its
    grid is embedded instead of the job's own.
    """
    limit = int(getattr(request.app.state, "max_slide_bytes", 2 << 30))
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
    service = _slides(request)
    if ctype.startswith("multipart/form-data"):
        async with spooled_form(request, limit, max_files=2) as form:
            slide = form.get("slide")
            if slide is None or isinstance(slide, str):
                raise InvalidInput("multipart body has no file field named 'slide'", param="slide")
            coords_field = form.get("coords")
            coords: bytes | None = None
            if coords_field is not None and not isinstance(coords_field, str):
                coords = await coords_field.read(_MAX_COORDS_BYTES + 1)
                if len(coords) > _MAX_COORDS_BYTES:
                    raise InvalidInput(f"the coordinates file is over {_MAX_COORDS_BYTES} bytes", param="coords")
            options.update({k: v for k, v in form.items() if k in _OPTION_NAMES and isinstance(v, str)})
            if "export" in options:
                options["export"] = [part for part in str(options["export"]).split(",") if part]
            status = await service.submit(None, slide.file, slide.filename, options, coords=coords)
    elif ctype.startswith("application/json"):
        body = await read_body_limited(request, _MAX_JSON_BYTES)
        payload = parse_json_body(body or b"null")
        if not isinstance(payload, dict) or not isinstance(payload.get("path"), str):
            raise InvalidInput(
                'send JSON {"path": "<slide inside the slide root>"} or a multipart upload', param="path"
            )
        options.update({k: v for k, v in payload.items() if k in _OPTION_NAMES})
        unknown = set(payload) - {"path", "coords_path", *_OPTION_NAMES}
        if unknown:
            raise InvalidInput(f"unknown fields: {', '.join(sorted(unknown))}", param=sorted(unknown)[0])
        coords_path = payload.get("coords_path")
        if coords_path is not None and not isinstance(coords_path, str):
            raise InvalidInput("coords_path must be a path inside the slide root", param="coords_path")
        status = await service.submit(payload["path"], None, None, options, coords_path=coords_path)
    else:
        raise InvalidInput(
            "send multipart/form-data with a 'slide' file, or application/json with a 'path'", param="content-type"
        )
    return JSONResponse(status, status_code=202, headers={"Location": f"/v1/slides/{status['id']}"})


@router.get("/v1/slides/{job_id}", response_model=JobStatus, summary="Job state and progress")
async def status(request: Request, job_id: str) -> dict[str, Any]:
    return await _slides(request).status(job_id)


@router.delete("/v1/slides/{job_id}", response_model=JobStatus, summary="Cancel a job")
async def cancel(request: Request, job_id: str) -> dict[str, Any]:
    return await _slides(request).cancel(job_id)


@router.get("/v1/slides/{job_id}/{name}", summary="A result file: features (HDF5), heatmap.png, ...")
async def result(request: Request, job_id: str, name: str) -> Response:
    """A result file, streamed in chunks. ``features.partial`` is a snapshot of the features
    committed so far (attribute ``partial`` true while the job runs)."""
    if name not in RESULT_MEDIA:
        raise NotFound(f"no result {name!r}; results are {', '.join(RESULT_MEDIA)}", param="name")
    filename, media = RESULT_MEDIA[name]
    chunks = _slides(request).result_stream(job_id, filename).__aiter__()
    first = await anext(chunks, b"")  # NotFound and friends are raised here, before the answer starts
    return StreamingResponse(
        _prepend(first, chunks),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        yield chunk
