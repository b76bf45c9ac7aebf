"""Benchmark results as typed models, shared by the benchmarks that write ``bench/results/*.json``
(``service.bench._common.write_result`` validates every payload against its model before writing)
and by the report that reads them (``service.bench.report``). Unknown keys are errors and every
value is typed, so a producer and the report cannot drift apart silently (a renamed key fails
where it is written). Fields are optional beyond what identifies a row: the report renders a
partial result with ``-`` where a value is missing. ``tests/unit/bench/test_report.py`` parses
every committed result.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

__all__ = [
    "AttentionScalingResult",
    "BenchResult",
    "FirstRunResult",
    "FusionResult",
    "GpuResult",
    "HostFacts",
    "LatencyResult",
    "LoadtestResult",
    "OrtVsTorchResult",
    "PeerResult",
    "RouterResult",
    "ServiceVsRawResult",
    "SlideReplicasResult",
    "SlideVsRawResult",
    "model_for",
    "parse_result",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HostFacts(_Model):
    """Where and when a benchmark ran (``_common.host_facts``)."""

    host: str
    cpu: str = ""
    cores: int | None = None
    gpu: str | None = None
    python: str = ""
    versions: dict[str, str] = Field(default_factory=dict)
    date: str
    note: str | None = Field(default=None, description="What the host was doing besides, when it matters.")


class BenchResult(_Model):
    """What every result has. ``source_file`` is the file it was read from (set by :func:`parse_result`)."""

    _file: str = PrivateAttr(default="")

    benchmark: str
    host: HostFacts
    goal: str = ""
    notes: list[str] = Field(default_factory=list)

    @property
    def source_file(self) -> str:
        return self._file


# -- ort_vs_torch -------------------------------------------------------------------------------------
class OrtVsTorchRow(_Model):
    model: str
    batch: int | None = None
    size: int | None = None
    torch_eager_ms: float | None = None
    onnxruntime_ms: float | None = None
    speedup: float | None = None
    torch_img_per_s: float | None = None
    onnxruntime_img_per_s: float | None = None
    torch_threads: int | None = None
    fused: dict[str, Any] = Field(default_factory=dict)


class OrtVsTorchResult(BenchResult):
    rounds: int | None = None
    rows: list[OrtVsTorchRow] = Field(default_factory=list)


# -- service_vs_raw, slide_vs_raw ---------------------------------------------------------------------
class RawRun(_Model):
    """The raw backend timed alone on ready-made batches."""

    batch_size: int | None = None
    batches: int | None = None
    callers: int | None = Field(default=None, description="Batches run at once (the backend's CPU lanes).")
    img_per_s: float | None = None
    cpu_ms_per_img: float | None = Field(default=None, description="This process's CPU time per image.")
    median_batch_ms: float | None = None
    seconds: float | None = None


class RawBeforeAfter(_Model):
    before: RawRun = Field(default_factory=RawRun)
    after: RawRun = Field(default_factory=RawRun)
    img_per_s: float | None = None
    tiles_per_s: float | None = None


class TransportRun(_Model):
    """One closed-loop round on one transport (``LoadStats.to_dict``)."""

    img_per_s: float | None = None
    requests_ok: int | None = None
    shed: int | None = None
    errors: int | None = None
    first_error: str | None = None
    window_s: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    mean_batch_size: float | None = None


class ServiceRow(_Model):
    path: str
    transport: str = ""
    img_per_s: float | None = None
    ratio: float | None = None
    compared: bool | None = None
    runs: list[TransportRun] = Field(default_factory=list)


class ServiceSummary(_Model):
    raw_img_per_s: float | None = None
    rest_oip_fp32_ratio: float | None = None
    grpc_oip_fp32_ratio: float | None = None
    rest_predict_jpeg_ratio: float | None = None
    goal_met: bool | None = None
    compared: str = ""
    notes: list[str] = Field(default_factory=list)


class ServiceVsRawResult(BenchResult):
    model: str = ""
    size: int | None = None
    max_batch_size: int | None = None
    concurrency: int | None = None
    duration_s: float | None = None
    warmup_s: float | None = None
    raw_duration_s: float | None = None
    rounds: int | None = None
    oip_batch: int = 1
    front_end: str | None = Field(
        default=None, description="What served the ports (``tessera serve``'s resolved front end)."
    )
    topology: str | None = Field(default=None, description="Where the backbones ran (the resolved topology).")
    service_ready_s: float | None = None
    idle_busy_share: float | None = None
    backend: dict[str, Any] = Field(default_factory=dict)
    intra_op_threads: int | None = None
    ort_spin: bool | None = None
    raw: RawBeforeAfter = Field(default_factory=RawBeforeAfter)
    rows: list[ServiceRow] = Field(default_factory=list)
    summary: ServiceSummary = Field(default_factory=ServiceSummary)


# -- first_run (bench/first_run.py): make serve from a clean clone, timed -----------------------------
class TranscriptLine(_Model):
    t_s: float
    line: str


class FirstRunResult(BenchResult):
    commit: str = ""
    command: str = ""
    install_s: float | None = Field(default=None, description="The install's stamp appeared.")
    ready_s: float | None = Field(default=None, description="The ready line was printed.")
    all_settled_s: float | None = Field(default=None, description="Every model was ready or failed.")
    exit_before_settled: int | None = Field(default=None, description="make serve's exit status if it ended early.")
    transcript: list[TranscriptLine] = Field(default_factory=list)


# -- peer (service/bench/peer.py): Tessera against Triton, or against variants of itself --------------
class PeerRow(_Model):
    """One measured point: a server, a model (``role`` model or noop), a protocol, a client count."""

    server: str
    role: str
    model: str
    protocol: str
    clients: int
    img_per_s: float | None = None
    requests_ok: int | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    shed: int | None = None
    errors: int | None = None
    first_error: str | None = None
    skipped: str | None = Field(default=None, description="Why the point was not measured.")
    round: int | None = Field(default=None, description="Which round measured it (``round_rows``).")
    img_per_s_rounds: list[float | None] | None = Field(
        default=None, description="Each round's img/s, when the point is the median of several rounds."
    )
    p50_ms_rounds: list[float | None] | None = Field(default=None, description="Each round's p50, likewise.")
    cpu_ms_per_img: float | None = Field(
        default=None,
        description="CPU the server's processes (its whole tree: Ray's daemons and workers, Triton's stubs) "
        "spent per image in the window, in ms (per request on the no-op model); runs before 2026-12-05 lack it.",
    )
    server_cpu_cores: float | None = Field(default=None, description="The server's processes' CPU, in cores.")
    client_cpu_cores: float | None = Field(default=None, description="The load generator's CPU, in cores.")
    host_busy: float | None = Field(default=None, description="Share of all the host's cores busy in the window.")


class PeerProtocolSummary(_Model):
    tessera_img_per_s: float | None = None
    triton_img_per_s: float | None = None
    throughput_ratio: float | None = None
    tessera_p50_1_client_ms: float | None = None
    triton_p50_1_client_ms: float | None = None
    p50_delta_ms: float | None = None
    tessera_noop_req_per_s: float | None = None
    triton_noop_req_per_s: float | None = None
    noop_ratio: float | None = None
    tessera_cpu_ms_per_img: float | None = None
    triton_cpu_ms_per_img: float | None = None
    cpu_ratio: float | None = Field(default=None, description="Tessera's CPU per image over Triton's: < 1 is cheaper.")


class PeerSummary(_Model):
    grpc: PeerProtocolSummary | None = None
    rest: PeerProtocolSummary | None = None
    goal_met: bool = False
    #: what the run itself saw that makes it suspect (drift, a busy host)
    notes: list[str] = Field(default_factory=list)
    #: what the person who ran it said (``--note``): shown, never a reason to doubt the run
    remarks: list[str] = Field(default_factory=list)

    def protocols(self) -> list[tuple[str, PeerProtocolSummary]]:
        return [(name, s) for name, s in (("grpc", self.grpc), ("rest", self.rest)) if s is not None]


class PeerResult(BenchResult):
    model: str = ""
    noop_model: str | None = None
    size: int | None = None
    max_batch_size: int | None = None
    batch_wait_timeout_s: float | None = None
    clients: int | None = None
    duration_s: float | None = None
    warmup_s: float | None = None
    rounds: int = Field(default=1, description="Times every server was measured in turn; rows are medians.")
    round_order: Literal["same", "alternating"] = Field(
        default="same",
        description="``alternating``: even rounds ran the servers in reverse order (a drifting host favours "
        "none); ``same``: every round in one order (runs before 2026-12-05).",
    )
    servers: list[str] = Field(default_factory=list)
    variants: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="Tessera variants (``tessera:NAME``) and their environment."
    )
    triton_instances: dict[str, int] = Field(
        default_factory=dict, description="Triton runs (``triton:xN``) with N model instances sharing the backend."
    )
    server_ready_s: dict[str, float] = Field(default_factory=dict)
    backend: dict[str, Any] = Field(default_factory=dict)
    intra_op_threads: int | None = None
    cpu_lanes: int | None = None
    ort_spin: bool | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    raw: RawBeforeAfter = Field(default_factory=RawBeforeAfter)
    rows: list[PeerRow] = Field(default_factory=list)
    round_rows: list[PeerRow] = Field(default_factory=list, description="Every round's points, unmerged.")
    summary: PeerSummary = Field(default_factory=PeerSummary)


class SlideRow(_Model):
    path: str
    tiles_per_s: float | None = None
    ratio: float | None = None
    compared: bool | None = None


class SlideFacts(_Model):
    side: int | None = None
    mpp: float | None = None
    file_bytes: int | None = None
    tissue: str = ""


class PipelineFacts(_Model):
    tiles_per_s: float | None = None
    end_to_end_tiles_per_s: float | None = None
    timing_s: dict[str, float] = Field(default_factory=dict)
    peak_rss_bytes: int | None = None


class SlideSummary(_Model):
    ratio: float | None = None
    goal_met: bool | None = None
    notes: list[str] = Field(default_factory=list)


class SlideVsRawResult(BenchResult):
    model: str = ""
    slide: SlideFacts = Field(default_factory=SlideFacts)
    batch_size: int | None = None
    workers: int | None = None
    ort_spin: bool | None = None
    tiles: int | None = None
    backend: dict[str, Any] = Field(default_factory=dict)
    raw: RawBeforeAfter = Field(default_factory=RawBeforeAfter)
    pipeline: PipelineFacts = Field(default_factory=PipelineFacts)
    rows: list[SlideRow] = Field(default_factory=list)
    summary: SlideSummary = Field(default_factory=SlideSummary)


# -- attention_scaling, fusion ------------------------------------------------------------------------
class ScalingRow(_Model):
    model: str
    backend: str
    size: int
    family: str | None = None
    latency_ms: float | None = None
    peak_delta_bytes: int | None = None
    rss_before_bytes: int | None = None
    repeats: int | None = None
    ms_per_mpixel: float | None = None
    bytes_per_pixel: float | None = None
    note: str | None = None
    skipped: str | None = None


class ScalingSummary(_Model):
    model: str
    backend: str
    time_per_pixel_ratio_2048_vs_512: float
    memory_per_pixel_ratio_2048_vs_512: float


class AttentionScalingResult(BenchResult):
    rows: list[ScalingRow] = Field(default_factory=list)
    summary: list[ScalingSummary] = Field(default_factory=list)


class FusionRow(_Model):
    model: str
    opset: int
    size: int
    batch: int | None = None
    latency_ms: float | None = None
    peak_delta_bytes: int | None = None
    attention_ops: int | None = None
    softmax_unfused: int | None = None
    skipped: str | None = None


class FusionResult(BenchResult):
    rows: list[FusionRow] = Field(default_factory=list)
    summary: dict[str, float] = Field(description="speedup_<size> and memory_ratio_<size>, opset 23 against 18.")


# -- router ---------------------------------------------------------------------------------------------
class RouterCandidate(_Model):
    model: str
    fits: bool | None = None
    input_size: list[int] = Field(default_factory=list)
    predicted_ms: float | None = None
    measured_ms: float | None = None
    predicted_peak_bytes: int | None = None
    measured_peak_delta_bytes: int | None = None
    error_pct: float | None = None
    calibrated: bool | None = None


class RouterRow(_Model):
    width: int
    height: int
    chosen: str
    reason: str = ""
    fit: str = ""
    input_size: list[int] = Field(default_factory=list)
    predicted_ms: float | None = None
    measured_ms: float | None = None
    error_pct: float | None = None
    measured_cheapest_fitting: str | None = None
    chose_cheapest: bool | None = None
    alternatives: list[RouterCandidate] = Field(default_factory=list)


class RouterSummary(_Model):
    sizes: int | None = None
    chose_cheapest: int | None = None
    max_abs_error_pct_chosen: float | None = None
    median_abs_error_pct_chosen: float | None = None
    max_abs_error_pct_all_candidates: float | None = None
    within_25pct_chosen: int | None = None
    calibrated: bool | None = None


class RouterResult(BenchResult):
    rows: list[RouterRow] = Field(default_factory=list)
    summary: RouterSummary = Field(default_factory=RouterSummary)


# -- latency ------------------------------------------------------------------------------------------
class LatencyPath(_Model):
    n: int | None = None
    median_ms: float
    p90_ms: float | None = None


class LatencyResult(BenchResult):
    model: str = ""
    front_end: str | None = Field(default=None, description="What served the ports (the resolved front end).")
    topology: str | None = Field(default=None, description="Where the backbones ran (the resolved topology).")
    rest_v1_predict_224_jpeg: LatencyPath | None = None
    rest_v1_predict_224_jpeg_20: LatencyPath | None = None
    rest_oip_infer_224_fp32: LatencyPath | None = None
    grpc_oip_infer_224_fp32: LatencyPath | None = None
    grpc_images_predict_224_jpeg: LatencyPath | None = None
    server_timing_ms: dict[str, float] = Field(default_factory=dict)

    def paths(self) -> dict[str, LatencyPath]:
        """Every measured path by its name."""
        return {name: value for name, value in self if isinstance(value, LatencyPath)}


# -- loadtest -------------------------------------------------------------------------------------------
class LoadFacts(_Model):
    users: int | None = None
    spawn_rate: float | None = None
    duration_s: float | None = None
    pace_s: float | None = None
    offered_rps: float | None = None
    mix: dict[str, int] = Field(default_factory=dict)
    sizes: dict[str, int] = Field(default_factory=dict)
    model: str | None = None
    oip_batch: int | None = None


class EndpointRow(_Model):
    endpoint: str
    requests: int | None = None
    failures: int | None = None
    shed: int = 0
    error_rate: float | None = None
    rps: float | None = None
    average_ms: float | None = None
    max_ms: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None


class SloCheck(_Model):
    endpoint: str
    check: str
    value: float | None = None
    target: float | None = None
    ok: bool | None = None


class LoadtestTotals(_Model):
    requests: int | None = None
    answered: int | None = None
    errors: int | None = None
    shed: int | None = None
    rps: float | None = None
    error_rate: float | None = None
    shed_share: float | None = None
    shed_counted_as_errors: bool | None = None


class LoadtestSummary(_Model):
    passed: bool | None = None
    checks: int | None = None
    failed: int | None = None
    requests: int | None = None
    error_rate: float | None = None
    shed_share: float | None = None
    report_dir: str | None = None


class LoadtestResult(BenchResult):
    load: LoadFacts = Field(default_factory=LoadFacts)
    started: bool | None = None
    endpoints: list[EndpointRow] = Field(default_factory=list)
    totals: LoadtestTotals = Field(default_factory=LoadtestTotals)
    checks: list[SloCheck] = Field(default_factory=list)
    summary: LoadtestSummary = Field(default_factory=LoadtestSummary)


# -- slide_replicas (bench/slide_replicas.py) ---------------------------------------------------------
class ReplicasRow(_Model):
    replicas: int
    tiles: int | None = None
    tiles_per_s: float | None = None


class SlideReplicasResult(BenchResult):
    slide: str = ""
    batch_ms: float | None = None
    inflight: int | None = None
    rows: list[ReplicasRow] = Field(default_factory=list)
    summary: dict[str, float] = Field(default_factory=dict)


# -- the GPU benchmark (service/bench/gpu.py): four parts, rows shaped per part -------------------------
class GpuResult(BenchResult):
    device: str = ""
    elapsed_s: float | None = None
    rows: list[dict[str, Any]] = Field(default_factory=list)
    summary: dict[str, Any] | list[dict[str, Any]] = Field(default_factory=dict)
    #: gpu_scaling: the kernels it set out to time (``model:kernel``), and whether all of them ran
    planned: list[str] = Field(default_factory=list)
    complete: bool | None = None


# -- cpu_lanes (service/bench/lanes.py): one session against side-by-side batches ----------------------
class LanesRow(_Model):
    round: int
    one_lane_img_per_s: float | None = None
    lanes_img_per_s: float | None = None
    whole_batches_img_per_s: float | None = Field(
        default=None, description="The lanes each running its batch whole, not in parts (runs from 2026-12-05)."
    )
    one_lane_cpu_ms_per_img: float | None = None
    lanes_cpu_ms_per_img: float | None = None
    whole_batches_cpu_ms_per_img: float | None = None


class LanesResult(BenchResult):
    model: str = ""
    size: int | None = None
    batch: int | None = None
    lanes: int | None = None
    intra_op_threads: int | None = None
    ort_spin: bool | None = None
    duration_s: float | None = None
    rows: list[LanesRow] = Field(default_factory=list)
    one_lane_img_per_s: float | None = None
    lanes_img_per_s: float | None = None
    ratio: float | None = None
    whole_batches_img_per_s: float | None = None
    lane_part_pixels: int | None = Field(default=None, description="A lane's batch runs in parts of this many pixels.")
    lone_image: dict[str, float] = Field(default_factory=dict, description="one image alone: ms on each")


_MODELS: dict[str, type[BenchResult]] = {
    "cpu_lanes": LanesResult,
    "ort_vs_torch": OrtVsTorchResult,
    "service_vs_raw": ServiceVsRawResult,
    "slide_vs_raw": SlideVsRawResult,
    "attention_scaling": AttentionScalingResult,
    "fusion": FusionResult,
    "router": RouterResult,
    "latency": LatencyResult,
    "loadtest": LoadtestResult,
    "slide_replicas": SlideReplicasResult,
    "first_run": FirstRunResult,
}


def model_for(benchmark: str) -> type[BenchResult]:
    """The model of a benchmark's result (``service_vs_raw_oip8`` is a ``service_vs_raw``)."""
    if benchmark.startswith("service_vs_raw"):
        return ServiceVsRawResult
    if benchmark == "peer" or benchmark.startswith("peer_"):
        return PeerResult
    if benchmark.startswith("gpu_"):
        return GpuResult
    try:
        return _MODELS[benchmark]
    except KeyError:
        raise ValueError(f"no result model for benchmark {benchmark!r}") from None


def parse_result(payload: dict[str, Any], file: str = "") -> BenchResult:
    """A result read from JSON (``file``: its name), as its benchmark's model; pydantic's
    ValidationError when it is not one."""
    result = model_for(str(payload.get("benchmark", ""))).model_validate(payload)
    result._file = file
    return result
