"""Service settings: one pydantic model, bounded and described, read from flags and TESSERA_* env."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ServerSettings"]


class ServerSettings(BaseModel):
    """Everything ``tessera serve`` and the Ray Serve app builder need. Immutable once built."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_repo: str = Field(default="model_repo", description="Model repository folder (configs + artifacts).")
    host: str = Field(default="127.0.0.1", description="Address the HTTP and gRPC proxies bind.")
    http_port: int = Field(default=8000, ge=1, le=65535, description="REST port.")
    grpc_port: int = Field(default=9000, ge=0, le=65535, description="gRPC port; 0 disables gRPC.")
    metrics_port: int = Field(default=8080, ge=1, le=65535, description="Prometheus exposition port.")
    runtime: Literal["auto", "onnxruntime", "tensorrt", "torch"] = Field(
        default="auto", description="Runtime preference for backbones."
    )
    providers: Literal["auto", "cpu", "cuda", "tensorrt"] = Field(
        default="auto", description="ONNX Runtime execution provider preference."
    )
    intra_op_threads: int = Field(default=0, ge=0, le=256, description="ORT threads per replica; 0 = all cores.")
    trt_cache_dir: str = Field(
        default=".tessera/trt-cache",
        description="Writable folder for TensorRT's timing cache and ONNX Runtime's TensorRT engine cache "
        "(engines are per GPU and TensorRT version; a warm cache turns minutes of start-up into seconds).",
    )
    ort_spin: bool = Field(
        default=False,
        description="Let ONNX Runtime's idle threads spin. Off: replicas share the host's cores, and a "
        "spinning pool steals them from its neighbours (docs/performance.md, CPU sharing).",
    )
    max_body_bytes: int = Field(default=64 << 20, ge=1024, le=8 << 30, description="Largest request body.")
    max_image_pixels: int = Field(
        default=8192 * 8192, ge=1024, le=1 << 32, description="Largest decoded image (pixels) for /v1/predict."
    )
    max_image_side: int = Field(default=16384, ge=32, le=1 << 17, description="Largest image side in pixels.")
    request_timeout_s: float = Field(default=30.0, gt=0, le=3600, description="Server default deadline.")
    ingress_replicas: int = Field(default=1, ge=1, le=1024, description="Ingress (HTTP/gRPC) replicas.")
    ingress_max_ongoing_requests: int = Field(
        default=64, ge=1, le=100000, description="In-flight requests per ingress replica."
    )
    max_pending_predictions: int = Field(
        default=48,
        ge=0,
        le=100000,
        description="Predictions in progress per ingress replica before new ones get 503 at once; 0 = no limit.",
    )
    ingress_max_queued_requests: int = Field(
        default=128, ge=-1, le=100000, description="Queued requests at the ingress before 503; -1 unbounded."
    )
    small_model: str = Field(default="vit_small", description="Fallback router: model for small images.")
    large_model: str = Field(default="swin_tiny", description="Fallback router: model for large images.")
    threshold: int = Field(default=512, ge=16, le=65536, description="Fallback router: longer-side threshold.")
    slide_root: str | None = Field(default=None, description="Folder inside which /v1/slides may read paths.")
    slide_model: str = Field(default="vit_small", description="Default tile encoder for slide jobs.")
    max_slide_bytes: int = Field(
        default=2 << 30, ge=1024, le=1 << 40, description="Largest slide upload; larger slides go by path."
    )
    job_dir: str = Field(default=".tessera/jobs", description="Where slide jobs keep their state and results.")
    build_missing: bool = Field(
        default=False,
        description="Build models that are not built while the service runs: it answers as soon as the first "
        "is built and calibrated, and the others join when they are ready (tessera serve --build).",
    )
    model_control_mode: Literal["none", "explicit"] = Field(
        default="none",
        description="Triton's model control: 'explicit' lets clients unload and load models (the repository "
        "extension); 'none' refuses those requests with 403.",
    )
    slide_max_concurrent_jobs: int = Field(
        default=2, ge=1, le=64, description="Slide jobs running at once; more wait queued."
    )
    slide_max_queued_jobs: int = Field(
        default=1000, ge=1, le=1_000_000, description="Slide jobs waiting before submissions get 503."
    )
    slide_inflight_batches: int = Field(
        default=4,
        ge=1,
        le=64,
        description="Tile batches one slide job keeps in flight to its backbone (spread over its replicas).",
    )
    auth_tokens_file: str | None = Field(default=None, description="File of accepted bearer tokens, one a line.")
    log_level: str = Field(default="INFO", description="Python log level for the service's loggers.")

    @classmethod
    def from_env(cls, **overrides: Any) -> ServerSettings:
        """Defaults, then ``TESSERA_<FIELD>`` environment variables, then explicit overrides."""
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            env = os.environ.get(f"TESSERA_{name.upper()}")
            if env is not None:
                values[name] = env
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)

    def resolved_repo(self) -> Path:
        return Path(self.model_repo).resolve()
