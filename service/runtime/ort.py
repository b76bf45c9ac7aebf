"""ONNX Runtime backend: CPU here; CUDA and TensorRT execution providers where they load.

``onnxruntime.get_available_providers()`` lists the providers compiled into the installed wheel,
not those whose libraries load: a CUDA provider that cannot find ``libcudart.so.13`` is dropped
from the session with a warning and the model runs on two CPU threads. Here a session that did
not get every GPU provider it was asked for is an error (:class:`ProviderUnavailable`) naming the
library that did not load (:func:`provider_load_error`), never a silent CPU fallback.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import RuntimeUnavailable
from service.runtime.base import Backend
from service.runtime.memory import MemoryReport, host_memory

__all__ = [
    "GPU_PROVIDERS",
    "OrtBackend",
    "ProviderUnavailable",
    "available_providers",
    "choose_providers",
    "import_onnxruntime",
    "provider_load_error",
    "provider_options",
]

log = logging.getLogger(__name__)

# Fastest first. TensorRT's EP builds its own engine from the ONNX graph on first run.
_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = frozenset({"TensorrtExecutionProvider", "CUDAExecutionProvider"})
_PROVIDER_LIBRARY = {
    "CUDAExecutionProvider": "libonnxruntime_providers_cuda.so",
    "TensorrtExecutionProvider": "libonnxruntime_providers_tensorrt.so",
}


class ProviderUnavailable(RuntimeUnavailable):
    """A GPU execution provider was asked for and did not load; the message says why."""


def cpu_cores() -> int:
    """The cores this process may run on (its affinity mask, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.cache
def import_onnxruntime() -> Any:
    """``onnxruntime``, with the CUDA/cuDNN libraries pip installed preloaded (GPU builds only).

    onnxruntime-gpu finds ``libcudart.so.13`` & co. through the loader's search path, which does
    not include the ``nvidia-*`` wheels' folders; ``preload_dlls`` loads them from there, so a
    pip-installed stack works without ``LD_LIBRARY_PATH``. TensorRT's libraries are loaded by
    importing ``tensorrt`` (its ``tensorrt_libs`` package), when it is installed.
    """
    import onnxruntime as ort

    compiled = set(ort.get_available_providers())
    if compiled & GPU_PROVIDERS and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as exc:  # a missing library is reported when a session asks for the provider
            log.warning("onnxruntime.preload_dlls() failed: %s", exc)
    if "TensorrtExecutionProvider" in compiled:
        try:
            import tensorrt  # noqa: F401  (loads libnvinfer / libnvonnxparser)
        except (ImportError, OSError) as exc:
            log.info("tensorrt does not import (%s); ONNX Runtime's TensorRT provider will not load", exc)
    return ort


def available_providers() -> list[str]:
    """Providers compiled into the installed onnxruntime (not necessarily loadable: see module doc)."""
    return list(import_onnxruntime().get_available_providers())


def onnxruntime_flavour() -> str:
    """The installed distribution: ``onnxruntime`` (CPU) or ``onnxruntime-gpu``."""
    from importlib import metadata

    for name in ("onnxruntime-gpu", "onnxruntime"):
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            continue
    return "onnxruntime (unknown distribution)"


def provider_load_error(provider: str) -> str | None:
    """Why ``provider``'s shared library does not load here (the missing library, by name), or None."""
    if provider == "CPUExecutionProvider":
        return None
    ort = import_onnxruntime()
    if provider not in ort.get_available_providers():
        return f"{provider} is not compiled into {onnxruntime_flavour()} (install onnxruntime-gpu: the gpu extra)"
    capi = Path(ort.__file__).parent / "capi"
    library = capi / _PROVIDER_LIBRARY.get(provider, "")
    if not library.is_file():
        return f"{library.name} is missing from {capi}"
    try:
        ctypes.CDLL(str(capi / "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(library))
    except OSError as exc:
        return f"{library.name} does not load: {exc}"
    return None


def choose_providers(prefer: str = "auto", available: Sequence[str] | None = None) -> list[str]:
    """Providers in the order ORT should try them.

    ``prefer``: ``auto`` (fastest compiled in), ``cpu``, ``cuda`` or ``tensorrt``. Asking for a
    provider that is not compiled in raises, so a misconfigured GPU host fails loudly instead of
    silently running on the CPU; whether the chosen ones *load* is checked by :class:`OrtBackend`.
    """
    available = list(available if available is not None else available_providers())
    if prefer == "auto":
        chosen = [p for p in _PREFERENCE if p in available]
    else:
        wanted = {
            "cpu": "CPUExecutionProvider",
            "cuda": "CUDAExecutionProvider",
            "tensorrt": "TensorrtExecutionProvider",
        }.get(prefer)
        if wanted is None:
            raise ValueError(f"unknown provider preference {prefer!r}")
        if wanted not in available:
            raise ProviderUnavailable(f"{wanted} requested but onnxruntime offers only {available}")
        chosen = [p for p in _PREFERENCE[_PREFERENCE.index(wanted) :] if p in available]
    return chosen or ["CPUExecutionProvider"]


def _shapes(profiles: Sequence[dict[str, Sequence[int]]], key: str) -> str:
    return ",".join("pixels:" + "x".join(str(d) for d in p[key]) for p in profiles)


def provider_options(
    provider: str,
    *,
    device_id: int = 0,
    cache_dir: str | Path = ".tessera/trt-cache",
    profiles: Sequence[dict[str, Sequence[int]]] = (),
) -> dict[str, str]:
    """Options for one provider: the device, and for TensorRT fp16, caches and explicit profiles.

    TensorRT's engine and timing caches go to ``cache_dir`` (engines are per GPU and TensorRT
    version; a warm cache turns minutes of engine building at start-up into seconds). One
    explicit profile per size bucket, so no shape seen in serving triggers a rebuild.
    """
    if provider == "TensorrtExecutionProvider":
        options = {
            "device_id": str(device_id),
            "trt_fp16_enable": "True",
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(cache_dir),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(cache_dir),
        }
        if profiles:
            options["trt_profile_min_shapes"] = _shapes(profiles, "min")
            options["trt_profile_opt_shapes"] = _shapes(profiles, "opt")
            options["trt_profile_max_shapes"] = _shapes(profiles, "max")
        return options
    if provider == "CUDAExecutionProvider":
        return {
            "device_id": str(device_id),
            # grow the arena by what is asked, not by doubling: a 2048² batch must not reserve 2x
            "arena_extend_strategy": "kSameAsRequested",
            "cudnn_conv_algo_search": "HEURISTIC",
        }
    return {}


#: A batch on a CPU lane (the single-threaded session) runs in parts of at most this many pixels
#: each, one part after the other: four 224² images, one image from 317² up. Two lanes at once each
#: keep a part's activations closer to their core's cache than a whole batch of 8: measured on the
#: 2-core host (ViT-S, both lanes busy, 3 interleaved rounds, process CPU per image), a batch of 8
#: as two parts of 4 took 115.1 ms of CPU per image against 120.4 ms whole (17.3 against 16.5
#: img/s; 4 parts of 2 115.8, single images 118.7); at 384², batches of 4 as single images 410.5
#: against 441.1 ms. ``tessera bench lanes`` measures parts against whole batches; docs/architecture.md, "CPU lanes".
LANE_PART_PIXELS = 4 * 224 * 224

#: Operators whose placement on the CPU in a GPU session means real work left the GPU.
_HEAVY_OPS = frozenset(
    {"Attention", "MultiHeadAttention", "MatMul", "Gemm", "Conv", "LayerNormalization", "Softmax", "Gelu"}
)


def heavy_cpu_nodes(profile_events: list[dict[str, Any]]) -> list[str]:
    """``op (node)`` of every heavy operator an ORT profile shows on the CPU provider."""
    found = []
    for event in profile_events:
        args = event.get("args") or {}
        if event.get("cat") != "Node" or args.get("provider") != "CPUExecutionProvider":
            continue
        if args.get("op_name") in _HEAVY_OPS:
            found.append(f"{args['op_name']} ({str(event.get('name', '')).removesuffix('_kernel_time')})")
    return sorted(set(found))


def cpu_placed_ops(model_path: str | Path, pixels: np.ndarray, input_name: str, providers: list[str]) -> list[str]:
    """Run ``pixels`` once in a profiling session on ``providers``; the heavy ops placed on the CPU."""
    import json
    import tempfile

    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "placement")
        session = ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)
        session.run(None, {input_name: pixels})
        events = json.loads(Path(session.end_profiling()).read_text())
    return heavy_cpu_nodes(events)


def _in_parts(run: Callable[[np.ndarray], Sequence[np.ndarray]], pixels: np.ndarray, step: int) -> list[np.ndarray]:
    """``run``'s outputs for ``pixels``, run in parts of at most ``step`` images one after the other
    and joined along the batch (one call when they fit)."""
    if step >= len(pixels):
        return list(run(pixels))
    parts = [run(pixels[i : i + step]) for i in range(0, len(pixels), step)]
    return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]


class OrtBackend(Backend):
    name = "onnxruntime"

    def __init__(
        self,
        model_path: str | Path,
        *,
        providers: Sequence[str] | None = None,
        precision: str = "fp32",
        intra_op_threads: int = 0,
        spin: bool = False,
        device_id: int = 0,
        cache_dir: str | Path = ".tessera/trt-cache",
        profiles: Sequence[dict[str, Sequence[int]]] = (),
        lanes: int = 1,
    ):
        """``lanes`` on the CPU: up to that many batches at once under load (0: one per core, the
        threads ``intra_op_threads`` gives or this process's cores; never more). A batch that starts
        while another runs runs single-threaded on a second session (see ``_session_for``); a batch
        alone keeps every thread. 1, or a GPU: one session."""
        ort = import_onnxruntime()

        def options(threads: int) -> Any:
            opts = ort.SessionOptions()
            # The artifact was optimised at build time; ENABLE_ALL adds the provider-specific fusions.
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.intra_op_num_threads = threads
            # A spinning pool keeps its cores busy between ops: fastest alone, but on a host whose cores
            # several replicas share it slows every neighbour (measured: docs/performance.md).
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
            opts.log_severity_level = 3
            return opts

        opts = options(intra_op_threads)
        requested = list(providers or choose_providers())
        if "TensorrtExecutionProvider" in requested:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
        with_options = [
            (p, provider_options(p, device_id=device_id, cache_dir=cache_dir, profiles=profiles)) for p in requested
        ]
        self._profile_path = Path(model_path)
        #: heavy operators a GPU session was found to run on the CPU (see ``check_placement``)
        self.cpu_ops: list[str] = []
        self.session = ort.InferenceSession(str(model_path), sess_options=opts, providers=with_options)
        self.providers = list(self.session.get_providers())
        missing = [p for p in requested if p in GPU_PROVIDERS and p not in self.providers]
        if missing:
            reasons = "; ".join(
                f"{p}: {provider_load_error(p) or 'dropped by onnxruntime at session creation'}" for p in missing
            )
            raise ProviderUnavailable(
                f"{Path(model_path).name}: asked for {requested}, onnxruntime loaded {self.providers}. {reasons}. "
                "Run `tessera doctor` for the whole picture."
            )
        on_gpu = self.providers[0] in GPU_PROVIDERS
        self.device = f"cuda:{device_id}" if on_gpu else "cpu"
        self.precision = precision
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        # TensorRT's engines hold one explicit profile per bucket: a batch above a profile's largest
        # would rebuild the engine mid-request, so such batches run in profile-sized parts.
        self._max_batch: dict[int, int] = {}
        if "TensorrtExecutionProvider" in self.providers:
            self._max_batch = {int(p["max"][2]): int(p["max"][0]) for p in profiles}
        # CPU lanes: one single-threaded session that every concurrent run shares, each Run on its
        # caller's thread (a one-thread session has no pool to share); it holds its own copy of the weights.
        threads = intra_op_threads or cpu_cores()
        lanes = min(lanes or threads, threads) if self.device == "cpu" else 1
        self._narrow: Any = None
        if lanes > 1:
            self._narrow = ort.InferenceSession(
                str(model_path), sess_options=options(1), providers=["CPUExecutionProvider"]
            )
        self.lanes = lanes
        #: a lane's batch runs in parts of at most this many pixels (0: whole; ``tessera bench lanes`` compares)
        self.lane_part_pixels = LANE_PART_PIXELS
        self._lane_lock = threading.Lock()
        self._running = 0
        #: batches run by the session with every thread and by the narrow one
        self.lane_runs = {"wide": 0, "narrow": 0}
        log.info("onnxruntime session for %s on %s (%d lane(s))", model_path, self.providers, lanes)

    def _session_for(self) -> Any:
        """The session for a batch about to start: every thread when none other runs, else the
        single-threaded one.

        On a CPU, N single-threaded runs at once get through more images than one N-thread run
        (`tessera bench lanes`; docs/architecture.md, "CPU lanes"), but one image alone on one thread
        takes about twice as long. So a lone batch (one client, light load) keeps every core; under
        load, batches run side by side on one thread each, as many as the host lets the batcher
        start (``BackboneHost``: ``lanes`` slots or ``max_concurrent_batches``, whichever is more).
        """
        with self._lane_lock:
            wide = self._narrow is None or self._running == 0
            self._running += 1
            self.lane_runs["wide" if wide else "narrow"] += 1
        return self.session if wide else self._narrow

    def warm_up(self, pixels: np.ndarray) -> None:
        self.infer(pixels)
        if self._narrow is not None:
            self._narrow.run(list(self.output_names), {self.input_name: pixels})

    def _run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        # TensorRT: parts no larger than the bucket's profile; each part takes a session of its own
        values = _in_parts(self._run_one, pixels, self._max_batch.get(int(pixels.shape[2]), len(pixels)))
        return {name: np.asarray(v, dtype=np.float32) for name, v in zip(self.output_names, values, strict=True)}

    def _run_one(self, pixels: np.ndarray) -> list[np.ndarray]:
        session = self._session_for()
        names = list(self.output_names)
        step = len(pixels)
        if session is self._narrow and self.lane_part_pixels:  # a lane: cache-sized parts, one after another
            step = max(1, self.lane_part_pixels // max(1, int(pixels.shape[2]) * int(pixels.shape[3])))
        try:
            return _in_parts(lambda part: session.run(names, {self.input_name: part}), pixels, step)
        finally:
            with self._lane_lock:
                self._running -= 1

    def check_placement(self, side: int) -> list[str]:
        """On the CUDA provider, find heavy ops ONNX Runtime left on the CPU; warn and remember them.

        Not for the TensorRT provider (a second session would build its engines again).
        """
        if self.device == "cpu" or "TensorrtExecutionProvider" in self.providers:
            return []
        self.cpu_ops = self.cpu_placed_ops(np.zeros((1, 3, side, side), dtype=np.float32))
        if self.cpu_ops:
            log.warning(
                "%s: onnxruntime runs %d heavy operators on the CPU beside %s: %s",
                self._profile_path.name,
                len(self.cpu_ops),
                self.providers[0],
                ", ".join(self.cpu_ops[:8]),
            )
        return self.cpu_ops

    def cpu_placed_ops(self, pixels: np.ndarray) -> list[str]:
        """Compute-heavy operators this session runs on the CPU provider, read from one profiled run.

        A GPU session keeps ``CPUExecutionProvider`` for what the GPU providers decline (shape
        arithmetic, by design); a MatMul or Attention there means the model is partly on the CPU.
        """
        return cpu_placed_ops(self._profile_path, pixels, self.input_name, self.session.get_providers())

    def memory(self) -> MemoryReport:
        if self.device.startswith("cuda"):
            from service.runtime.memory_gpu import gpu_memory

            return gpu_memory(self.device)
        return host_memory()

    def describe(self) -> dict[str, object]:
        facts: dict[str, object] = {**super().describe(), "providers": self.providers}
        if self.cpu_ops:
            facts["cpu_ops"] = self.cpu_ops
        return facts
