"""Triton's statistics extension: per model and version, what inference cost, over both transports.

``InferenceStatistics`` is fed by the serving core at the same points, with the same
measurements, as the Prometheus stage histograms (``Telemetry.stage``): ``queue`` is the round
trip to the backbone less its inference time, ``compute_input`` is decode plus preprocess,
``compute_infer`` is the backbone's inference time, ``compute_output`` is building the answer.
REST (``GET /v2/models[/{m}[/versions/{v}]]/stats``) answers ``StatisticsResponse`` as JSON; gRPC
(``ModelStatistics``) the same fields in Triton's ``ModelStatisticsResponse``.

The counts are those of one ingress replica (the process that answers): with several ingress
replicas each reports what it served. ``inference_count`` counts images; ``execution_count``
counts backbone executions, one per ``infer_batch`` chunk and ``1/batch_size`` per image that
shared a ``DynamicBatcher`` batch (rounded), since the ingress sees each image's batch size but
not which other requests shared it. ``batch_stats`` is keyed by the batch size the backbone ran.
``fail`` counts requests that failed once valid (deadline, overload, backbone errors); a malformed
request, or one for an unloaded model, never reaches the model and is not counted.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

__all__ = [
    "BatchStatistics",
    "InferStatistics",
    "InferenceStatistics",
    "Measurement",
    "ModelStatistics",
    "StatisticDuration",
    "StatisticsResponse",
]


class StatisticDuration(BaseModel):
    count: int = Field(default=0, description="How many times it happened.")
    ns: int = Field(default=0, description="Total time it took, in nanoseconds.")


class InferStatistics(BaseModel):
    success: StatisticDuration = Field(default_factory=StatisticDuration, description="Successful requests.")
    fail: StatisticDuration = Field(default_factory=StatisticDuration, description="Failed requests.")
    queue: StatisticDuration = Field(default_factory=StatisticDuration, description="Waiting for the backbone.")
    compute_input: StatisticDuration = Field(default_factory=StatisticDuration, description="Decode + preprocess.")
    compute_infer: StatisticDuration = Field(default_factory=StatisticDuration, description="Backbone inference.")
    compute_output: StatisticDuration = Field(default_factory=StatisticDuration, description="Building the answer.")
    cache_hit: StatisticDuration = Field(default_factory=StatisticDuration, description="Always 0: no cache.")
    cache_miss: StatisticDuration = Field(default_factory=StatisticDuration, description="Always 0: no cache.")


class BatchStatistics(BaseModel):
    batch_size: int
    compute_input: StatisticDuration = Field(default_factory=StatisticDuration)
    compute_infer: StatisticDuration = Field(default_factory=StatisticDuration)
    compute_output: StatisticDuration = Field(default_factory=StatisticDuration)


class ModelStatistics(BaseModel):
    name: str
    version: str
    last_inference: int = Field(default=0, description="Milliseconds since the epoch of the last inference.")
    inference_count: int = Field(default=0, description="Images inferred successfully.")
    execution_count: int = Field(default=0, description="Backbone executions (batches) that served them.")
    inference_stats: InferStatistics = Field(default_factory=InferStatistics)
    batch_stats: list[BatchStatistics] = Field(default_factory=list)


class StatisticsResponse(BaseModel):
    model_stats: list[ModelStatistics]


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += max(0, round(seconds * 1e9))

    def model(self) -> StatisticDuration:
        return StatisticDuration(count=self.count, ns=self.ns)


@dataclass
class _Batch:
    compute_input: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    compute_output: _Duration = field(default_factory=_Duration)


@dataclass
class _Model:
    last_inference_ms: int = 0
    inference_count: int = 0
    executions: float = 0.0
    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    compute_input: _Duration = field(default_factory=_Duration)
    compute_infer: _Duration = field(default_factory=_Duration)
    compute_output: _Duration = field(default_factory=_Duration)
    batches: dict[int, _Batch] = field(default_factory=dict)


@dataclass(frozen=True)
class Measurement:
    """What one successful request cost (seconds), as the stage histograms see it."""

    images: int
    batch_sizes: tuple[int, ...]
    """The batch size the backbone ran, once per backbone call this request made."""
    chunked: bool
    """True when the request's images ran as ready-made batches (``infer_batch``)."""
    compute_input_s: float
    queue_s: float
    compute_infer_s: float
    compute_output_s: float
    total_s: float


class InferenceStatistics:
    """Counts and durations per (model, version), thread-safe; one per serving core."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], _Model] = {}

    def success(self, model: str, version: str, m: Measurement) -> None:
        with self._lock:
            stats = self._models.setdefault((model, version), _Model())
            stats.last_inference_ms = int(time.time() * 1e3)
            stats.inference_count += m.images
            stats.executions += len(m.batch_sizes) if m.chunked else sum(1.0 / max(1, b) for b in m.batch_sizes)
            stats.success.add(m.total_s)
            stats.queue.add(m.queue_s)
            stats.compute_input.add(m.compute_input_s)
            stats.compute_infer.add(m.compute_infer_s)
            stats.compute_output.add(m.compute_output_s)
            for size in sorted(set(m.batch_sizes)):
                batch = stats.batches.setdefault(size, _Batch())
                batch.compute_input.add(m.compute_input_s)
                batch.compute_infer.add(m.compute_infer_s)
                batch.compute_output.add(m.compute_output_s)

    def failure(self, model: str, version: str, seconds: float) -> None:
        with self._lock:
            self._models.setdefault((model, version), _Model()).fail.add(seconds)

    def snapshot(self, models: list[tuple[str, str]]) -> StatisticsResponse:
        """Statistics of each (model, version) in ``models`` (zeros for one that has served nothing)."""
        with self._lock:
            return StatisticsResponse(model_stats=[self._one(name, version) for name, version in models])

    def _one(self, name: str, version: str) -> ModelStatistics:
        stats = self._models.get((name, version)) or _Model()
        return ModelStatistics(
            name=name,
            version=version,
            last_inference=stats.last_inference_ms,
            inference_count=stats.inference_count,
            execution_count=round(stats.executions),
            inference_stats=InferStatistics(
                success=stats.success.model(),
                fail=stats.fail.model(),
                queue=stats.queue.model(),
                compute_input=stats.compute_input.model(),
                compute_infer=stats.compute_infer.model(),
                compute_output=stats.compute_output.model(),
            ),
            batch_stats=[
                BatchStatistics(
                    batch_size=size,
                    compute_input=b.compute_input.model(),
                    compute_infer=b.compute_infer.model(),
                    compute_output=b.compute_output.model(),
                )
                for size, b in sorted(stats.batches.items())
            ],
        )
