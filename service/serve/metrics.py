"""Metrics inside Ray replicas, through Ray Serve's metrics API (one scrape sees every replica).

Ray exports these with a ``ray_`` prefix (``ray_tessera_requests_total``); the contract's names
are restored by ``service.api.metrics_text.restore_contract_names`` wherever Tessera serves
``/metrics`` itself, and by a relabel rule in the Kubernetes PodMonitor.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ray.serve import metrics

from service.api.telemetry import BATCH_BUCKETS, LATENCY_BUCKETS_S
from service.runtime.memory import current_rss_bytes

__all__ = ["INFLIGHT_PERIOD_S", "BackboneMetrics", "RayTelemetry"]


def _keys(*names: str) -> Any:
    """Ray's stubs type ``tag_keys`` as a 1-tuple; any tuple of names is what it accepts."""
    return names


#: How often ``tessera_host_memory_bytes`` reads the process's RSS from ``/proc``: Ray hands gauges to
#: its agent once a second by default (``METRICS_REPORT_INTERVAL_MS``), and a read per request was 3% of the
#: colocated ingress's GIL time at 400 no-op requests/s (py-spy, 2026-12-04).
HOST_MEMORY_PERIOD_S = 0.5

#: How long ``tessera_inflight_requests`` may trail the count: Ray hands gauges to its agent once a
#: second by default, so setting the gauge on every request and every answer (two calls into Ray's
#: metric API per request, 3% of the colocated ingress's GIL time at 470 no-op gRPC requests/s,
#: py-spy --gil, 2026-12-05) showed nothing sooner.
INFLIGHT_PERIOD_S = 0.1


class _HostMemory:
    """``tessera_host_memory_bytes{process}``: this process's resident memory, read at most every
    ``HOST_MEMORY_PERIOD_S``."""

    def __init__(self, process: str) -> None:
        self.process = process
        self._gauge = metrics.Gauge("tessera_host_memory_bytes", "Resident memory.", tag_keys=_keys("process"))
        self._next = 0.0

    def update(self) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + HOST_MEMORY_PERIOD_S
            self._gauge.set(current_rss_bytes(), tags={"process": self.process})


class RayTelemetry:
    """The ingress's implementation of ``service.api.telemetry.Telemetry``."""

    def __init__(self) -> None:
        latency = list(LATENCY_BUCKETS_S)
        self._requests = metrics.Counter(
            "tessera_requests",
            "Requests by endpoint, model and status code.",
            tag_keys=_keys("endpoint", "model", "code"),
        )
        self._duration = metrics.Histogram(
            "tessera_request_duration_seconds",
            "Request latency.",
            boundaries=latency,
            tag_keys=_keys("endpoint", "model"),
        )
        self._stage = metrics.Histogram(
            "tessera_stage_duration_seconds",
            "Time per request stage.",
            boundaries=latency,
            tag_keys=_keys("model", "stage"),
        )
        self._route = metrics.Counter("tessera_route", "Routing decisions.", tag_keys=_keys("model", "reason"))
        self._rejected = metrics.Counter("tessera_rejected", "Requests shed or refused.", tag_keys=_keys("reason"))
        self._inflight = metrics.Gauge("tessera_inflight_requests", "Requests in flight.", tag_keys=_keys("model"))
        self._host = _HostMemory("ingress")
        self._inflight_count: dict[str, int] = {}
        self._inflight_due = False

    def request(self, endpoint: str, model: str, code: int, seconds: float) -> None:
        self._requests.inc(1, tags={"endpoint": endpoint, "model": model, "code": str(code)})
        self._duration.observe(seconds, tags={"endpoint": endpoint, "model": model})
        self._host.update()

    def stage(self, model: str, stage: str, seconds: float) -> None:
        self._stage.observe(seconds, tags={"model": model, "stage": stage})

    def route(self, model: str, reason: str) -> None:
        self._route.inc(1, tags={"model": model, "reason": reason})

    def rejected(self, reason: str) -> None:
        self._rejected.inc(1, tags={"reason": reason})

    def inflight(self, model: str, delta: int) -> None:
        """Count now; set the gauge ``INFLIGHT_PERIOD_S`` later, once for every change meanwhile (at
        once when called off an event loop)."""
        self._inflight_count[model] = self._inflight_count.get(model, 0) + delta
        if self._inflight_due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._set_inflight()
            return
        self._inflight_due = True
        loop.call_later(INFLIGHT_PERIOD_S, self._set_inflight)

    def _set_inflight(self) -> None:
        self._inflight_due = False
        for model, count in self._inflight_count.items():
            self._inflight.set(count, tags={"model": model})


class BackboneMetrics:
    """A model's batch sizes and memory; ``host_process`` labels the process's resident memory (None:
    another reporter owns it, as the ingress does for the models it holds)."""

    def __init__(self, model: str, host_process: str | None = None) -> None:
        self.model = model
        self.host_process = host_process
        self._batch = metrics.Histogram(
            "tessera_batch_size",
            "Images per backend call.",
            boundaries=[float(b) for b in BATCH_BUCKETS],
            tag_keys=_keys("model"),
        )
        self._memory = metrics.Gauge(
            "tessera_device_memory_bytes", "Model memory (RSS on CPU).", tag_keys=_keys("model", "device", "kind")
        )
        self._host = _HostMemory(host_process) if host_process is not None else None

    def batch(self, size: int, memory: dict[str, Any] | None) -> None:
        self._batch.observe(size, tags={"model": self.model})
        if memory:
            device = str(memory["device"])
            self._memory.set(memory["peak_bytes"], tags={"model": self.model, "device": device, "kind": "peak"})
            self._memory.set(
                memory["allocated_bytes"], tags={"model": self.model, "device": device, "kind": "allocated"}
            )
        if self._host is not None:
            self._host.update()
