"""Latency calibration: the analytic cost model fitted to measurements on one host (torch-free).

Model, per ``(model, backend, device)``::

    seconds = a * other_GMACs + b * attention_GMACs + c * traffic_GB + d

``other_GMACs`` and ``attention_GMACs`` come from :func:`~service.routing.cost.estimate_cost`;
``traffic_GB`` is the bytes written by the non-matmul work (norms, activations, residuals and, with
unfused attention, the score matrix and its softmax), the term that makes attention's memory
traffic visible; ``d`` is the fixed per-call overhead. Each coefficient is a cost per unit and
must not be negative, so the fit is a non-negative least-squares problem, solved exactly by
trying every subset of free coefficients (there are four). Rows are weighted by ``1 / seconds``
so that the fit minimises *relative* error: a 224-px image and a 2048-px one count alike, which is
what "predicted latency within 25% of measured" asks.

The measurements, the host, the date and the fit's residuals are stored with the coefficients in
``model_repo/calibration.json`` (the path is configurable), so a prediction can always be traced
back to what it was fitted on.

Without a calibration for a model on a device the router falls back to an analytic guess,
``MACs / rate`` with an assumed rate per device type (:data:`FALLBACK_MACS_PER_S`, overridable per
device in ``routes.yaml``), and flags the candidate as uncalibrated.
"""

from __future__ import annotations

import itertools
import json
import math
import socket
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from service.models.meta import ArchFacts
from service.routing.cost import CostEstimate, estimate_cost

__all__ = [
    "DEFAULT_CALIBRATION_PATH",
    "FALLBACK_MACS_PER_S",
    "FEATURES",
    "Calibration",
    "CalibrationEntry",
    "FitResiduals",
    "LatencyPrediction",
    "MeasureFn",
    "Measurement",
    "calibrate",
    "fallback_rate",
    "features",
    "fit_latency",
    "load_calibration",
    "predict_latency",
]

#: Where ``tessera`` keeps the calibration unless told otherwise (relative to the working directory).
DEFAULT_CALIBRATION_PATH = Path("model_repo/calibration.json")

#: Names of the fitted coefficients, in feature order.
FEATURES = ("other_gmacs", "attention_gmacs", "traffic_gb", "constant")

#: Assumed throughput when a model has no calibration on a device (by device type). Deliberately
#: round numbers: about what ONNX Runtime reaches in fp32 on two to four x86 cores, and a
#: conservative share of a data-centre GPU's dense matrix rate. Override per device in routes.yaml.
FALLBACK_MACS_PER_S: dict[str, float] = {"cpu": 5.0e10, "cuda": 2.0e13}

#: ``measure_fn(model, height, width, batch) -> seconds`` for one forward pass.
MeasureFn = Callable[[str, int, int, int], float]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Measurement(_Strict):
    """One measured point and what the fit predicts for it."""

    height: int = Field(ge=1, description="Input height in pixels.")
    width: int = Field(ge=1, description="Input width in pixels.")
    batch: int = Field(ge=1, description="Images per forward.")
    seconds: float = Field(gt=0, description="Measured seconds per forward (median of the repeats).")
    predicted_seconds: float = Field(default=0.0, ge=0, description="What the fitted model predicts.")

    @property
    def relative_error(self) -> float:
        return (self.predicted_seconds - self.seconds) / self.seconds


class FitResiduals(_Strict):
    """How well the fitted model reproduces its own measurements (relative errors)."""

    n: int = Field(ge=0, description="Measurements fitted.")
    rms_relative: float = Field(ge=0, description="Root mean square of (predicted - measured) / measured.")
    max_relative: float = Field(ge=0, description="Largest |predicted - measured| / measured.")


class CalibrationEntry(_Strict):
    """The fitted latency model of one model on one backend and device."""

    model: str = Field(description="Model name (model_repo folder).")
    backend: str = Field(description="Runtime measured: onnxruntime | tensorrt | torch ...")
    device: str = Field(description="Device measured: cpu | cuda:0 ...")
    host: str = Field(description="Host name the measurements were taken on.")
    date: str = Field(description="When the fit was made (ISO 8601, UTC).")
    fused_attention: bool = Field(description="Whether the backend fuses attention (changes traffic_gb).")
    dtype_bytes: int = Field(ge=1, le=8, description="Bytes per activation element on the backend.")
    num_classes: int = Field(default=1000, ge=0, description="Head width the features were computed with.")
    coefficients: dict[str, float] = Field(description="Seconds per unit of each feature in FEATURES.")
    residuals: FitResiduals
    measurements: list[Measurement] = Field(default_factory=list)

    def estimate(self, facts: ArchFacts, height: int, width: int, batch: int = 1) -> CostEstimate:
        return estimate_cost(facts, height, width, batch, dtype_bytes=self.dtype_bytes, num_classes=self.num_classes)

    def predict_seconds(self, facts: ArchFacts, height: int, width: int, batch: int = 1) -> float:
        row = features(self.estimate(facts, height, width, batch), fused=self.fused_attention)
        return float(sum(self.coefficients.get(name, 0.0) * x for name, x in zip(FEATURES, row, strict=True)))


class Calibration(_Strict):
    """Every fitted entry of one calibration file."""

    schema_version: int = Field(default=1, ge=1, le=1, description="File format version.")
    entries: list[CalibrationEntry] = Field(default_factory=list)

    def lookup(self, model: str, device: str, backend: str | None = None) -> CalibrationEntry | None:
        """The entry for ``model`` on ``device`` (and ``backend`` if given); the newest if several."""
        matches = [
            e
            for e in self.entries
            if e.model == model and e.device == device and (backend is None or e.backend == backend)
        ]
        return max(matches, key=lambda e: e.date) if matches else None

    def merged(self, other: Calibration) -> Calibration:
        """This calibration with ``other``'s entries replacing those for the same model/backend/device."""
        keys = {(e.model, e.backend, e.device) for e in other.entries}
        kept = [e for e in self.entries if (e.model, e.backend, e.device) not in keys]
        return Calibration(entries=kept + list(other.entries))

    def save(self, path: str | Path = DEFAULT_CALIBRATION_PATH) -> Path:
        """Write atomically (a temporary file renamed over the old one)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
        return path

    def report(self) -> str:
        """A plain-text table: one row per entry, with its residuals and coefficients."""
        if not self.entries:
            return "no calibration: latencies are analytic estimates (MACs / assumed rate)"
        header = (
            f"{'model':<16} {'backend':<12} {'device':<8} {'host':<16} {'date':<20} {'n':>3} "
            f"{'rms %':>6} {'max %':>6}  ms/GMAC(other)  ms/GMAC(attn)  ms/GB  ms const"
        )
        lines = [header]
        for e in sorted(self.entries, key=lambda e: (e.model, e.backend, e.device)):
            c = e.coefficients
            lines.append(
                f"{e.model:<16} {e.backend:<12} {e.device:<8} {e.host[:16]:<16} {e.date[:19]:<20} "
                f"{e.residuals.n:>3} {100 * e.residuals.rms_relative:>6.1f} {100 * e.residuals.max_relative:>6.1f}"
                f"  {1e3 * c.get('other_gmacs', 0):>14.4f} {1e3 * c.get('attention_gmacs', 0):>14.4f}"
                f" {1e3 * c.get('traffic_gb', 0):>6.2f} {1e3 * c.get('constant', 0):>8.3f}"
            )
        return "\n".join(lines)


class LatencyPrediction(BaseModel):
    """A latency prediction and where it comes from."""

    seconds: float
    calibrated: bool = Field(description="False: the analytic fallback (MACs / assumed rate).")
    source: str = Field(description="'calibration (<backend> on <host>)' or 'analytic fallback (...)'.")


def features(estimate: CostEstimate, *, fused: bool) -> list[float]:
    """The regressors, in :data:`FEATURES` order."""
    return [
        estimate.other_macs / 1e9,
        estimate.attention_macs / 1e9,
        estimate.traffic_bytes(fused) / 1e9,
        1.0,
    ]


def fit_latency(rows: Sequence[Sequence[float]], seconds: Sequence[float], *, relative: bool = True) -> list[float]:
    """Non-negative least squares of ``seconds ~ rows @ coef``, relative-error weighted by default.

    Exact for few regressors: the solution is the best unconstrained fit, over subsets of free
    coefficients, whose coefficients are all non-negative.
    """
    x = np.asarray(rows, dtype=np.float64)
    y = np.asarray(seconds, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"need one row per measurement, got {x.shape} rows and {y.shape} seconds")
    if x.shape[0] < x.shape[1]:
        raise ValueError(f"need at least {x.shape[1]} measurements to fit {x.shape[1]} coefficients, got {x.shape[0]}")
    if not np.all(np.isfinite(x)) or not np.all(np.isfinite(y)) or np.any(y <= 0):
        raise ValueError("measurements must be finite and seconds positive")
    if relative:
        x, y = x / y[:, None], np.ones_like(y)
    n_features = x.shape[1]
    best: tuple[float, np.ndarray] | None = None
    for size in range(n_features, 0, -1):
        for subset in itertools.combinations(range(n_features), size):
            cols = list(subset)
            sol, *_ = np.linalg.lstsq(x[:, cols], y, rcond=None)
            if np.any(sol < -1e-12 * max(1.0, float(np.abs(sol).max()))):
                continue
            coef = np.zeros(n_features)
            coef[cols] = np.clip(sol, 0.0, None)
            err = float(np.sum((x @ coef - y) ** 2))
            if best is None or err < best[0] - 1e-15 * max(1.0, best[0]):
                best = (err, coef)
    if best is None:  # unreachable: a single column always has a non-negative or zero fit
        raise ValueError("no non-negative fit found")
    return [float(c) for c in best[1]]


def _residuals(points: Iterable[Measurement]) -> FitResiduals:
    errors = [abs(p.relative_error) for p in points]
    if not errors:
        return FitResiduals(n=0, rms_relative=0.0, max_relative=0.0)
    return FitResiduals(
        n=len(errors), rms_relative=math.sqrt(sum(e * e for e in errors) / len(errors)), max_relative=max(errors)
    )


def _sizes(sizes: Sequence[int | tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for size in sizes:
        h, w = (size, size) if isinstance(size, int) else size
        if h <= 0 or w <= 0:
            raise ValueError(f"sizes must be positive, got {size!r}")
        out.append((int(h), int(w)))
    return out


def calibrate(
    measure_fn: MeasureFn,
    models: Mapping[str, ArchFacts],
    sizes: Sequence[int | tuple[int, int]],
    *,
    backend: str,
    device: str,
    batches: Sequence[int] = (1,),
    repeats: int = 3,
    warmup: int = 1,
    fused_attention: bool = False,
    dtype_bytes: int = 4,
    num_classes: Mapping[str, int] | None = None,
    host: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> Calibration:
    """Measure every model at every size and batch, and fit one latency model per model.

    ``measure_fn(model, height, width, batch)`` returns the seconds of one forward pass; it is
    injected (the serving layer passes one that runs a real backend). Each point is called
    ``warmup`` times unrecorded, then ``repeats`` times; the median is kept. Sizes are square
    sides or ``(height, width)`` pairs. Needs at least four distinct points per model.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    if not models:
        raise ValueError("no models to calibrate")
    if not batches or any(b < 1 for b in batches):
        raise ValueError(f"batches must be >= 1, got {list(batches)}")
    points = [(h, w, b) for (h, w) in _sizes(sizes) for b in batches]
    host = host or socket.gethostname()
    entries = []
    for name, facts in models.items():
        classes = (num_classes or {}).get(name, int(facts.extra.get("num_classes", 1000)))
        measured: list[Measurement] = []
        for h, w, b in points:
            for _ in range(warmup):
                measure_fn(name, h, w, b)
            times = [float(measure_fn(name, h, w, b)) for _ in range(repeats)]
            seconds = statistics.median(times)
            if not math.isfinite(seconds) or seconds <= 0:
                raise ValueError(f"measure_fn returned {seconds!r} s for {name} at {h}x{w} batch {b}")
            measured.append(Measurement(height=h, width=w, batch=b, seconds=seconds))
            if progress is not None:
                progress(f"{name} {h}x{w} batch {b}: {1e3 * seconds:.2f} ms")
        rows = [
            features(
                estimate_cost(facts, m.height, m.width, m.batch, dtype_bytes=dtype_bytes, num_classes=classes),
                fused=fused_attention,
            )
            for m in measured
        ]
        coef = fit_latency(rows, [m.seconds for m in measured])
        fitted = [
            m.model_copy(update={"predicted_seconds": float(np.dot(coef, row))})
            for m, row in zip(measured, rows, strict=True)
        ]
        entries.append(
            CalibrationEntry(
                model=name,
                backend=backend,
                device=device,
                host=host,
                date=datetime.now(UTC).isoformat(timespec="seconds"),
                fused_attention=fused_attention,
                dtype_bytes=dtype_bytes,
                num_classes=classes,
                coefficients=dict(zip(FEATURES, coef, strict=True)),
                residuals=_residuals(fitted),
                measurements=fitted,
            )
        )
    return Calibration(entries=entries)


def load_calibration(path: str | Path = DEFAULT_CALIBRATION_PATH, *, missing_ok: bool = True) -> Calibration:
    """Read a calibration file; an absent file is an empty calibration unless ``missing_ok=False``."""
    path = Path(path)
    if not path.exists():
        if missing_ok:
            return Calibration()
        raise FileNotFoundError(f"calibration file {path} does not exist: run the calibration first")
    try:
        return Calibration.model_validate_json(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not a valid calibration file: {exc}") from exc


def fallback_rate(device: str, override: float | None = None) -> float:
    """The assumed MACs per second for an uncalibrated ``device`` (``cuda:1`` -> ``cuda``)."""
    if override is not None:
        return override
    kind = device.split(":", 1)[0]
    return FALLBACK_MACS_PER_S.get(kind, FALLBACK_MACS_PER_S["cpu"])


def predict_latency(
    calibration: Calibration | None,
    model: str,
    facts: ArchFacts,
    height: int,
    width: int,
    batch: int = 1,
    *,
    device: str,
    backend: str | None = None,
    estimate: CostEstimate | None = None,
    fallback_macs_per_s: float | None = None,
) -> LatencyPrediction:
    """Calibrated seconds when ``calibration`` has the model on this device, else MACs / rate.

    ``estimate`` (the analytic cost at this size) saves recomputing it for the fallback.
    """
    entry = calibration.lookup(model, device, backend) if calibration is not None else None
    if entry is not None:
        seconds = max(entry.predict_seconds(facts, height, width, batch), 0.0)
        return LatencyPrediction(
            seconds=seconds, calibrated=True, source=f"calibration ({entry.backend} on {entry.host}, {entry.date[:10]})"
        )
    if estimate is None:
        estimate = estimate_cost(facts, height, width, batch)
    rate = fallback_rate(device, fallback_macs_per_s)
    return LatencyPrediction(
        seconds=estimate.macs / rate, calibrated=False, source=f"analytic fallback ({rate / 1e9:g} GMAC/s assumed)"
    )
