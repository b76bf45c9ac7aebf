"""Pick the fastest runtime that actually loads on this host, and say which and why.

Candidates, fastest first:

* a GPU host (``gpu_count() > 0``): a native TensorRT plan built for this GPU and TensorRT, ONNX
  Runtime's TensorRT provider, ONNX Runtime's CUDA provider (fp16 artifact), PyTorch on CUDA
  (fp16, SDPA; NATTEN or the tiled NA kernel). Each candidate that cannot run is skipped with its
  reason logged and kept in ``Backend.load_notes``; when none runs, loading fails with every
  reason. A GPU host never falls back to the CPU under ``auto``: ask for ``providers="cpu"``.
* a CPU host: ONNX Runtime on the CPU (fp32, the optimised graph).

``prefer`` narrows the candidates to one runtime (``onnxruntime``, ``tensorrt``, ``torch``) and
``providers`` to one ONNX Runtime provider (``cpu``, ``cuda``, ``tensorrt``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from service.errors import RuntimeUnavailable
from service.models import ModelRepository
from service.runtime.base import Backend

__all__ = ["Candidate", "RuntimePreference", "candidates", "load_backend"]

log = logging.getLogger(__name__)

RuntimePreference = Literal["auto", "onnxruntime", "tensorrt", "torch"]


@dataclass(frozen=True)
class Candidate:
    label: str  # what `tessera doctor` and the logs call it: "onnxruntime[cuda] fp16"
    load: Callable[[], Backend]


def candidates(
    repo: ModelRepository,
    model: str,
    *,
    prefer: RuntimePreference = "auto",
    providers: str = "auto",
    intra_op_threads: int = 0,
    spin: bool = False,
    gpus: int | None = None,
    cache_dir: str | Path = ".tessera/trt-cache",
    lanes: int = 1,
) -> list[Candidate]:
    """The runtimes to try for ``model``, fastest first (nothing is loaded here)."""
    from service.runtime.devices import gpu_count, unusable_gpu_reason

    if gpus is None and providers != "cpu" and (reason := unusable_gpu_reason()):
        return [Candidate("a GPU runtime", lambda: _raise(reason))]
    manifest = repo.require_manifest(model)
    cfg = repo.config(model)
    version_dir = repo.version_dir(model)
    on_gpu = (gpu_count() if gpus is None else gpus) > 0 and providers != "cpu"
    out: list[Candidate] = []

    def ort(label_provider: str, chosen: list[str], fp16: bool) -> Candidate:
        from service.runtime.profiles import optimization_profiles

        record = manifest.artifacts.get("onnx_fp16" if fp16 else "onnx") or manifest.artifacts.get("onnx")

        def load() -> Backend:
            from service.runtime.ort import OrtBackend

            if record is None:
                raise FileNotFoundError(f"model {model!r} has no ONNX artifact: run `tessera build --model {model}`")
            profiles = optimization_profiles(cfg.input.buckets, cfg.artifacts.tensorrt_max_batch, cfg.input.native_size)
            backend = OrtBackend(
                version_dir / record.file,
                providers=chosen,
                precision=record.precision,
                intra_op_threads=intra_op_threads,
                spin=spin,
                cache_dir=cache_dir,
                profiles=[{k: list(v) for k, v in p.items()} for p in profiles],
                lanes=lanes,
            )
            backend.check_placement(cfg.input.native_size)  # CUDA provider: heavy ops left on the CPU, said
            return backend

        precision = record.precision if record is not None else "fp32"
        return Candidate(f"onnxruntime[{label_provider}] {precision}", load)

    if prefer in ("auto", "tensorrt") and on_gpu and providers == "auto":
        out.append(Candidate("tensorrt plan", lambda: _tensorrt(repo, model)))
    if prefer in ("auto", "onnxruntime"):
        if on_gpu:
            gpu_kinds = ["tensorrt", "cuda"] if providers == "auto" else [providers]
            for kind in gpu_kinds:
                chosen = ["TensorrtExecutionProvider", "CUDAExecutionProvider"] if kind == "tensorrt" else []
                chosen = [*chosen, "CUDAExecutionProvider", "CPUExecutionProvider"]
                out.append(ort(kind, list(dict.fromkeys(chosen)), fp16=True))
        else:
            if providers not in ("auto", "cpu"):
                out.append(
                    Candidate(
                        f"onnxruntime[{providers}]",
                        lambda: _raise(f"providers={providers!r} asks for a GPU, and this host has none visible"),
                    )
                )
            else:
                out.append(ort("cpu", ["CPUExecutionProvider"], fp16=False))
    if prefer == "torch" or (prefer == "auto" and on_gpu):
        device = "cuda:0" if on_gpu else "cpu"
        precision = "fp16" if on_gpu else "fp32"

        def load_torch() -> Backend:
            from service.runtime.torch_backend import TorchBackend

            return TorchBackend.from_repository(repo, model, device=device, precision=precision)

        out.append(Candidate(f"torch[{device}] {precision}", load_torch))
    return out


def _raise(message: str) -> Backend:
    raise RuntimeUnavailable(message)


def _tensorrt(repo: ModelRepository, model: str) -> Backend:
    from service.runtime.tensorrt import TensorRTBackend, compute_capability, plan_mismatch, tensorrt_status

    record = repo.require_manifest(model).artifacts.get("tensorrt")
    if record is None:
        raise RuntimeUnavailable(f"no TensorRT plan built for {model!r} (`tessera build --tensorrt`)")
    status = tensorrt_status()
    if not status.ok:
        raise RuntimeUnavailable(status.reason)
    mismatch = plan_mismatch(record.model_dump(), status.version, compute_capability())
    if mismatch:
        raise RuntimeUnavailable(mismatch)
    plan = repo.version_dir(model) / record.file
    if not plan.is_file():
        raise RuntimeUnavailable(f"the manifest names TensorRT plan {plan.name}, which is missing from {plan.parent}")
    return TensorRTBackend(plan)


def load_backend(
    repo: ModelRepository,
    model: str,
    *,
    prefer: RuntimePreference = "auto",
    providers: str = "auto",
    intra_op_threads: int = 0,
    spin: bool = False,
    gpus: int | None = None,
    cache_dir: str | Path = ".tessera/trt-cache",
    lanes: int = 1,
) -> Backend:
    """Load ``model`` on the first candidate runtime that runs here (see the module docstring)."""
    tried: list[tuple[str, str]] = []
    for candidate in candidates(
        repo,
        model,
        prefer=prefer,
        providers=providers,
        intra_op_threads=intra_op_threads,
        spin=spin,
        gpus=gpus,
        cache_dir=cache_dir,
        lanes=lanes,
    ):
        try:
            backend = candidate.load()
        except FileNotFoundError:
            raise
        except Exception as exc:  # each runtime's own failure (missing library, bad plan): try the next
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("%s: %s cannot run here: %s", model, candidate.label, reason)
            tried.append((candidate.label, reason))
            continue
        backend.load_notes = tried
        if tried:
            log.warning("%s: running on %s (faster runtimes skipped: %s)", model, candidate.label, tried)
        else:
            log.info("%s: running on %s", model, candidate.label)
        return backend
    detail = "; ".join(f"{label}: {reason}" for label, reason in tried) or "no runtime matches these settings"
    raise RuntimeUnavailable(f"model {model!r} cannot run on this host ({detail}). Run `tessera doctor`.")
