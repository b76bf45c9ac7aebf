"""REST routes: thin adapters from HTTP to the serving core.

``create_app()`` builds the FastAPI app; whoever hosts it (the Ray Serve ingress, or a test
with an in-process core) puts a ``ServingCore`` at ``app.state.core``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import __version__
from service.api.auth import AUTHORIZATION, PUBLIC_HTTP_PATHS, app_auth, challenge_headers
from service.api.deadlines import TIMEOUT_HEADER, parse_timeout
from service.api.errors import as_tessera_error, http_body, http_headers
from service.api.metrics_text import CONTENT_TYPE
from service.api.oip import OpenInference
from service.api.oip_rest import INFER_PATH, answer_infer
from service.api.protocol import ModelInfo, PredictOptions, PredictResponse
from service.api.rest_common import read_body_limited, replay_form
from service.api.serving import ServingCore
from service.errors import InvalidInput, NotFound, Overloaded, TesseraError
from service.routing.decision import RouteDecision

__all__ = ["create_app", "read_body_limited"]

log = logging.getLogger("tessera.access")


def _core(request: Request) -> ServingCore:
    core: ServingCore = request.app.state.core
    return core


def _timeout(request: Request) -> float | None:
    return parse_timeout(request.headers.get(TIMEOUT_HEADER))


async def _image_from_request(request: Request, body: bytes) -> tuple[bytes, str | None, dict[str, str]]:
    """The image bytes and their content type, from a raw body or a multipart field ``image``."""
    content_type = request.headers.get("content-type")
    if not (content_type or "").lower().startswith("multipart/form-data"):
        return body, content_type, {}

    form = await replay_form(request, body)
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    upload = form.get("image")
    if upload is None:
        raise InvalidInput("multipart body has no field named 'image'", param="image")
    if isinstance(upload, UploadFile):
        return await upload.read(), upload.content_type, fields
    return upload.encode(), None, fields


def create_app() -> FastAPI:
    app = FastAPI(
        title="Tessera",
        version=__version__,
        description="Vision-transformer backbones on images of any size: routing by resolution, "
        "Open Inference Protocol, slide jobs.",
    )

    _add_middlewares(app)
    _add_exception_handlers(app)
    _register_endpoints(app)
    return app


def _add_middlewares(app: FastAPI) -> None:
    """The bearer-token check, inside the access log (which also refuses new work while draining).

    Both are plain ASGI middleware rather than ``@app.middleware("http")``: Starlette's
    ``BaseHTTPMiddleware`` runs each request in a task group, re-streams the response and wraps
    the body's receive, which a profile of the ingress under a no-op OIP REST load put at about a
    tenth of the replica's CPU per request (docs/architecture.md, "Front end")."""
    app.add_middleware(InferFastPath)  # innermost: inside the token check and the access log
    app.add_middleware(_TokenMiddleware)  # added before the log, so it runs inside it (refusals are logged)
    app.add_middleware(_AccessLogMiddleware)


class InferFastPath:
    """``POST /v2/models/{model}[/versions/{version}]/infer`` answered here, the rest passed on.

    The inference route is the one a client calls at thousands per second, and FastAPI's routing,
    dependency solving and exception middleware around it held the GIL about a fifth of the
    replica's time under a no-op OIP REST load (py-spy, docs/architecture.md, "Front end"). The
    request meets the same function the FastAPI route calls (``answer_infer``) and its errors the
    same envelope the app's exception handlers write; the route stays in the app for the OpenAPI
    schema."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            match = INFER_PATH.fullmatch(path[len(root) :] if root and path.startswith(root) else path)
            if match is not None:
                request = Request(scope, receive)
                try:
                    response = await answer_infer(request, match["model"], match["version"])
                except Exception as exc:
                    response = _error_response(request, as_tessera_error(exc))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _TokenMiddleware:
    """Bearer tokens, when configured (``service.api.auth``): checked before any body is read."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            request = Request(scope)
            auth = app_auth(request.app.state)
            if auth.enabled and request.url.path not in PUBLIC_HTTP_PATHS:
                try:
                    auth.check(request.headers.get(AUTHORIZATION))
                except TesseraError as err:
                    response = _error_response(request, err)
                    response.headers.update(challenge_headers(err))
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


class _AccessLogMiddleware:
    """Request ids (``x-request-id``, taken or made), the access log line, the request metrics, the
    in-flight count the drain waits on, and 503 for new work while draining."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = request_id
        start = time.perf_counter()
        path = request.url.path
        core = getattr(request.app.state, "core", None)
        status = 500  # what the log says when the app raises before it answers
        id_header = (b"x-request-id", request_id.encode("latin-1"))

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, id_header]}
            await send(message)

        if core is not None and core.draining and path not in ("/v2/health/live", "/metrics"):
            # Shutting down: finish what is in flight, refuse what is new (readiness says so too).
            response = _error_response(request, Overloaded("server is shutting down", retry_after_s=5.0))
            await response(scope, receive, send_with_id)
            return
        if core is not None:
            core.inflight += 1
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if core is not None:
                core.inflight -= 1
        elapsed = time.perf_counter() - start
        state = request.state
        log.info(
            "request",
            extra={
                "request_id": request_id,
                "method": request.method,
                "path": path,
                "status": status,
                "duration_ms": round(elapsed * 1e3, 3),
                "model": getattr(state, "model", None),
                "route_reason": getattr(state, "route_reason", None),
            },
        )
        core = getattr(request.app.state, "core", None)
        if core is not None and path.startswith(("/v1/predict", "/v2/models")):
            core.telemetry.request(path, getattr(state, "model", "") or "", status, elapsed)


def _add_exception_handlers(app: FastAPI) -> None:
    """Every error in the contract's envelope: typed errors, unknown routes, validation, the unexpected."""

    @app.exception_handler(TesseraError)
    async def tessera_error(request: Request, exc: TesseraError) -> JSONResponse:
        return _error_response(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Unknown routes and wrong methods in the contract's envelope, not FastAPI's ``detail``."""
        err: TesseraError
        if exc.status_code == 404:
            err = NotFound(f"not found: no route {request.method} {request.url.path}", param="path")
        elif exc.status_code == 405:
            err = InvalidInput(f"method {request.method} is not allowed on {request.url.path}", param="method")
            err.http_status = 405
        else:
            err = InvalidInput(str(exc.detail))
            err.http_status = exc.status_code
        response = _error_response(request, err)
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error_response(request, InvalidInput.from_validation(exc.errors(), "request", skip=1))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
        return _error_response(request, as_tessera_error(exc))


def _register_endpoints(app: FastAPI) -> None:
    """OIP health and metadata, ``/v1`` and ``/metrics``, then the OIP, Triton-extension and slide routers."""
    _register_health(app)
    _register_v1(app)
    _include_routers(app)


def _register_health(app: FastAPI) -> None:
    # -- Open Inference Protocol: health and metadata --------------------------------------------
    @app.get("/v2/health/live", tags=["oip"])
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready", tags=["oip"])
    async def ready(request: Request) -> JSONResponse:
        core = _core(request)
        is_ready = core.server_ready()
        return JSONResponse({"ready": is_ready}, status_code=200 if is_ready else 503)

    @app.get("/v2", tags=["oip"])
    async def server_metadata(request: Request) -> dict[str, Any]:
        """Name, version and the protocol extensions that work on this server (REST and gRPC)."""
        return OpenInference(_core(request)).server_metadata().model_dump()


def _register_v1(app: FastAPI) -> None:
    # -- /v1 -----------------------------------------------------------------------------------
    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        tags=["v1"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                    "image/png": {"schema": {"type": "string", "format": "binary"}},
                    "image/tiff": {"schema": {"type": "string", "format": "binary"}},
                    "image/webp": {"schema": {"type": "string", "format": "binary"}},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"image": {"type": "string", "format": "binary"}},
                            "required": ["image"],
                        }
                    },
                },
            }
        },
    )
    async def predict(
        request: Request,
        model: Annotated[str | None, Query(description="Backbone; the router picks when omitted.")] = None,
        output: Annotated[str, Query(pattern="^(embedding|logits|both)$")] = "embedding",
        top_k: Annotated[int, Query(ge=0, le=100)] = 5,
    ) -> PredictResponse:
        """Embed (or classify) one encoded image: JPEG, PNG, TIFF or WebP, raw or as multipart field ``image``."""
        core = _core(request)
        timeout = _timeout(request)
        body = await read_body_limited(request, core.limits.max_bytes)
        data, content_type, fields = await _image_from_request(request, body)
        try:
            options = PredictOptions(
                model=fields.get("model", model),
                output=fields.get("output", output),  # type: ignore[arg-type]
                top_k=int(fields.get("top_k", top_k)),
            )
        except (ValueError, TypeError) as exc:
            raise InvalidInput(f"invalid option: {exc}", param="options") from exc
        answer = await core.predict(data, content_type, options, request_id=request.state.request_id, timeout_s=timeout)
        request.state.model = answer.model
        request.state.route_reason = answer.route.reason
        return answer

    @app.get("/metrics", tags=["metrics"], response_class=PlainTextResponse)
    async def metrics(request: Request) -> PlainTextResponse:
        """Prometheus text exposition (the same as the metrics port)."""
        source = getattr(request.app.state, "metrics_source", None)
        if source is None:
            raise NotFound("metrics are not exported by this process", param="path")
        return PlainTextResponse(await source(), media_type=CONTENT_TYPE)

    @app.get("/v1/route", response_model=RouteDecision, tags=["v1"])
    async def route(
        request: Request,
        width: Annotated[int, Query(ge=1, le=1 << 20)],
        height: Annotated[int, Query(ge=1, le=1 << 20)],
        model: str | None = None,
    ) -> RouteDecision:
        """The routing decision for an image of this size, without running anything."""
        return _core(request).route(width, height, model)

    @app.get("/v1/models", response_model=list[ModelInfo], tags=["v1"])
    async def models(request: Request) -> list[ModelInfo]:
        """Every model with its architecture facts and the artifacts built for it."""
        return _core(request).models()


def _include_routers(app: FastAPI) -> None:
    from service.api.oip_extensions_rest import router as extensions_router
    from service.api.oip_rest import router as oip_router
    from service.api.slides_rest import router as slides_router

    app.include_router(extensions_router)  # first: /v2/models/stats is not a model named "stats"
    app.include_router(oip_router)
    app.include_router(slides_router)


class _AsciiJSONResponse(JSONResponse):
    """Errors may echo what the client sent (a path, a name): escape it so any input encodes."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _error_response(request: Request, err: TesseraError) -> JSONResponse:
    oip = request.url.path.startswith("/v2")
    return _AsciiJSONResponse(http_body(err, oip=oip), status_code=err.http_status, headers=http_headers(err))
