"""A client for a Tessera server's slide jobs (``/v1/slides``), over httpx.

Used by ``tessera slide --server URL``: submit a slide (uploaded, or named by a path inside the
server's slide root), poll its status, download the results, cancel. Error answers are raised
as the same typed errors the server mapped them from (``InvalidInput`` for a 400,
``NotFound`` for a 404, ...), carrying the server's own message; a server that cannot be
reached raises :class:`ServerUnavailable`.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from service.errors import (
    DeadlineExceeded,
    Forbidden,
    InvalidInput,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    TesseraError,
    Unauthenticated,
    UnsupportedMediaType,
)
from service.slides.pipeline import SlideOptions
from service.slides.store import (
    FEATURES_FILE,
    HEATMAP_FILE,
    REPORT_FILE,
    SLIDE_EMBEDDING_FILE,
    TILES_GEOJSON_FILE,
    TISSUE_GEOJSON_FILE,
    TISSUE_MASK_FILE,
)

__all__ = ["QUERY_OPTIONS", "RESULT_ROUTES", "TERMINAL_STATES", "ServerUnavailable", "SlideClient"]

#: result file name → the route under ``/v1/slides/{id}/`` that serves it
RESULT_ROUTES: dict[str, str] = {
    FEATURES_FILE: "features",
    HEATMAP_FILE: "heatmap.png",
    TISSUE_MASK_FILE: "tissue_mask.png",
    TISSUE_GEOJSON_FILE: "tissue.geojson",
    TILES_GEOJSON_FILE: "tiles.geojson",
    SLIDE_EMBEDDING_FILE: "slide_embedding.npy",
    REPORT_FILE: "report.json",
}
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
#: options ``POST /v1/slides`` takes as query parameters; others go in the JSON body or as form fields
QUERY_OPTIONS = frozenset({"mpp", "slide_mpp", "tile", "overlap", "model", "tissue_threshold", "tissue_rule"})

_ERRORS: tuple[type[TesseraError], ...] = (
    InvalidInput,
    Unauthenticated,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    Overloaded,
    DeadlineExceeded,
)
_BY_CODE = {cls.code: cls for cls in _ERRORS}
_BY_STATUS = {cls.http_status: cls for cls in _ERRORS}
_CHUNK = 1 << 20


class ServerUnavailable(TesseraError):
    """The server could not be reached (connection refused, DNS, a dropped connection)."""

    code, http_status, grpc_status = "unavailable", 503, "UNAVAILABLE"


class SlideClient:
    """Slide jobs on a Tessera server at ``base_url`` (e.g. ``http://127.0.0.1:8000``).

    ``token`` is sent as ``Authorization: Bearer <token>``. Use as a context manager, or call
    :meth:`close`.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout_s: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=min(10.0, timeout_s)),
            transport=transport,
        )

    # -- jobs --------------------------------------------------------------------------------
    def submit(
        self,
        path: str | None = None,
        upload_file: str | Path | None = None,
        options: SlideOptions | Mapping[str, Any] | None = None,
        *,
        coords_file: str | Path | None = None,
        coords_path: str | None = None,
    ) -> dict[str, Any]:
        """Start a job; returns the server's answer (``id``, ``state``).

        ``path`` names a slide inside the server's slide root (nothing is uploaded);
        ``upload_file`` is a local slide streamed as the multipart field ``slide``. Give one.
        ``coords_file`` (with an upload) or ``coords_path`` (inside the slide root, with a path)
        is a TRIDENT or CLAM coordinates file whose grid the job embeds.
        """
        if (path is None) == (upload_file is None):
            raise InvalidInput("give either a server-side slide path or a file to upload, not both or neither")
        params, fields = _option_params(options)
        if path is not None:
            body = {"path": path, **fields, **({"coords_path": coords_path} if coords_path else {})}
            return self._json("POST", "/v1/slides", params=params, json=body)
        upload = Path(upload_file)  # type: ignore[arg-type]  # not None here: checked above
        if not upload.is_file():
            raise FileNotFoundError(f"slide {upload} does not exist")
        with upload.open("rb") as fh:
            files: dict[str, Any] = {"slide": (upload.name, fh, "application/octet-stream")}
            if coords_file is not None:
                files["coords"] = (Path(coords_file).name, Path(coords_file).read_bytes(), "application/x-hdf5")
            # an upload can take a while: no read timeout while the server receives it
            return self._json(
                "POST",
                "/v1/slides",
                params=params,
                data={k: _param(v) for k, v in fields.items()},
                files=files,
                timeout=httpx.Timeout(None, connect=10.0),
            )

    def status(self, job_id: str) -> dict[str, Any]:
        """The job's status: ``state``, ``tiles_total``, ``tiles_done``, ``tiles_per_s``, ``eta_s``, ``error``."""
        return self._json("GET", f"/v1/slides/{job_id}")

    def wait(
        self,
        job_id: str,
        progress_cb: Callable[[dict[str, Any]], None] | None = None,
        poll_s: float = 1.0,
        *,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Poll until the job is succeeded, failed or cancelled; returns its last status.

        ``progress_cb`` receives every status polled. A server that answers 503 (busy) is polled
        again after its ``Retry-After``. Raises ``DeadlineExceeded`` after ``timeout_s``.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                current = self.status(job_id)
            except Overloaded as exc:
                delay = exc.retry_after_s or poll_s
            else:
                if progress_cb is not None:
                    progress_cb(current)
                if current.get("state") in TERMINAL_STATES:
                    return current
                delay = poll_s
            if deadline is not None and time.monotonic() + delay > deadline:
                raise DeadlineExceeded(f"slide job {job_id} did not finish within {timeout_s:g} s")
            time.sleep(delay)

    def download(self, job_id: str, out_dir: str | Path, files: tuple[str, ...] | None = None) -> list[Path]:
        """Download the job's result files (default: all of them) into ``out_dir``; returns their paths.

        Each file is streamed to ``<name>.part`` and renamed when complete, so an interrupted
        download never leaves a truncated result under the real name.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for name in files or tuple(RESULT_ROUTES):
            if name not in RESULT_ROUTES:
                raise InvalidInput(f"unknown result file {name!r}; known: {', '.join(RESULT_ROUTES)}")
            target = out / name
            partial = target.with_name(target.name + ".part")
            try:
                route = f"/v1/slides/{job_id}/{RESULT_ROUTES[name]}"
                with self._request_stream("GET", route) as response, partial.open("wb") as fh:
                    for chunk in response.iter_bytes(_CHUNK):
                        fh.write(chunk)
                os.replace(partial, target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    partial.unlink()
            written.append(target)
        return written

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel the job (``DELETE``); returns the server's answer."""
        return self._json("DELETE", f"/v1/slides/{job_id}")

    # -- plumbing ----------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SlideClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _json(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            raise _error_from(response)
        if not response.content:
            return {}
        try:
            body = response.json()
        except ValueError as exc:
            raise TesseraError(f"{method} {url} answered {response.status_code} with a body that is not JSON") from exc
        if not isinstance(body, dict):
            raise TesseraError(f"{method} {url} answered {response.status_code} with JSON that is not an object")
        return body

    @contextlib.contextmanager
    def _request_stream(self, method: str, url: str) -> Iterator[httpx.Response]:
        try:
            with self._http.stream(method, url) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from(response)
                yield response
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: httpx.TransportError) -> ServerUnavailable:
        return ServerUnavailable(f"cannot reach the Tessera server at {self.base_url}: {exc or type(exc).__name__}")


def _option_params(options: SlideOptions | Mapping[str, Any] | None) -> tuple[dict[str, str], dict[str, Any]]:
    """The options the caller set (the server applies its defaults to the rest): query parameters,
    and body fields for those the route takes only in the body (``edge``)."""
    if options is None:
        return {}, {}
    values = options.model_dump(exclude_unset=True) if isinstance(options, SlideOptions) else dict(options)
    values = {key: value for key, value in values.items() if value is not None}
    params = {key: _param(value) for key, value in values.items() if key in QUERY_OPTIONS}
    fields = {key: value for key, value in values.items() if key not in QUERY_OPTIONS}
    return params, fields


def _param(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(_param(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _error_from(response: httpx.Response) -> TesseraError:
    """The typed error for an error answer, with the server's message (``/v1`` envelope, OIP or FastAPI's)."""
    message: str | None = None
    code: str | None = None
    param: str | None = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error", body.get("detail"))
        if isinstance(error, dict):
            message = _text(error.get("message"))
            code = _text(error.get("code"))
            param = _text(error.get("param"))
        elif error is not None:
            message = error if isinstance(error, str) else str(error)
    if message is None:
        text = response.text.strip()
        message = text[:500] if text else response.reason_phrase or "no message"
    request = response.request
    message = f"{message} (HTTP {response.status_code} from {request.method} {request.url.path})"
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(response.status_code, TesseraError)
    retry_after = _retry_after(response.headers.get("Retry-After"))
    if cls is Overloaded:
        return Overloaded(message, param=param, retry_after_s=retry_after if retry_after is not None else 1.0)
    return cls(message, param=param, retry_after_s=retry_after)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
