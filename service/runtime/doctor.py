"""``tessera doctor``: what this host can run, and why not, before anyone files a bug.

Every check actually loads what it reports on: ONNX Runtime providers are tried on a one-node
session (``get_available_providers`` only lists what is compiled in), TensorRT is imported, NVML
is initialised, and each built model is loaded the way ``tessera serve`` loads it.
"""

from __future__ import annotations

import platform
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

from service.models import ModelRepository

__all__ = ["DoctorReport", "diagnose", "probe_provider"]

_PACKAGES = (
    "torch",
    "torchvision",
    "timm",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "tensorrt",
    "tensorrt-cu13",
    "nvidia-ml-py",
    "natten",
    "ray",
)


@dataclass
class DoctorReport:
    python: str
    packages: dict[str, str]
    torch: dict[str, Any]
    onnxruntime: dict[str, Any]
    tensorrt: dict[str, Any]
    nvml: dict[str, Any]
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}

    def render(self) -> str:
        lines = [f"python      {self.python}"]
        lines.append("packages    " + ", ".join(f"{k} {v}" for k, v in self.packages.items()))
        t = self.torch
        devices = ", ".join(t["devices"]) or "none visible"
        lines.append(f"torch       {t['version']} (CUDA build {t['cuda_build'] or 'none'}); devices: {devices}")
        if t.get("error"):
            lines.append(f"            {t['error']}")
        o = self.onnxruntime
        lines.append(f"onnxruntime {o['flavour']}; compiled in: {', '.join(o['compiled'])}")
        for provider, state in o["providers"].items():
            lines.append(
                f"            {provider:<28} {'loads' if state['loads'] else 'does NOT load'}  {state['detail']}"
            )
        lines.append(f"tensorrt    {self.tensorrt['version'] or '-'}  {self.tensorrt['detail']}")
        lines.append(f"nvml        {self.nvml['detail']}")
        for name, model in self.models.items():
            lines.append(f"model {name:<15} artifacts: {', '.join(model['artifacts']) or 'none (run tessera build)'}")
            lines.append(f"      {'':<15} serve would run: {model['runtime']}")
            for note in model.get("skipped", []):
                lines.append(f"      {'':<15} skipped {note}")
        lines.append("")
        if self.problems:
            lines.append("PROBLEMS")
            lines.extend(f"  - {p}" for p in self.problems)
        else:
            lines.append("ok: every configured runtime can run here")
        return "\n".join(lines)


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _torch_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {"version": None, "cuda_build": None, "devices": [], "error": None}
    try:
        import torch
    except Exception as exc:
        facts["error"] = f"torch does not import: {exc}"
        return facts
    facts["version"] = torch.__version__
    facts["cuda_build"] = torch.version.cuda
    try:
        for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
            major, minor = torch.cuda.get_device_capability(index)
            facts["devices"].append(f"cuda:{index} {torch.cuda.get_device_name(index)} (sm{major}{minor})")
    except Exception as exc:
        facts["error"] = f"CUDA is present but unusable: {exc}"
    return facts


def _tiny_model() -> bytes:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "doctor",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def probe_provider(provider: str) -> tuple[bool, str]:
    """Create a one-node session on ``provider`` and read back whether the provider is in it."""
    from service.runtime.ort import import_onnxruntime, provider_load_error

    ort = import_onnxruntime()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        chain = list(dict.fromkeys([provider, "CPUExecutionProvider"]))
        session = ort.InferenceSession(_tiny_model(), sess_options=opts, providers=chain)
    except Exception as exc:
        return False, f"session creation failed: {exc}"[:300]
    if provider in session.get_providers():
        return True, ""
    return False, provider_load_error(provider) or "dropped by onnxruntime at session creation"


def _ort_facts() -> dict[str, Any]:
    from service.runtime.ort import GPU_PROVIDERS, import_onnxruntime, onnxruntime_flavour

    ort = import_onnxruntime()
    compiled = list(ort.get_available_providers())
    providers: dict[str, dict[str, Any]] = {}
    for provider in compiled:
        if provider in GPU_PROVIDERS or provider == "CPUExecutionProvider":
            loads, detail = probe_provider(provider)
            providers[provider] = {"loads": loads, "detail": detail}
    return {"flavour": onnxruntime_flavour(), "compiled": compiled, "providers": providers}


def _tensorrt_facts() -> dict[str, Any]:
    from service.runtime.tensorrt import tensorrt_status

    status = tensorrt_status()
    detail = f"runs on {status.device_name}" if status.ok else status.reason
    return {"ok": status.ok, "version": status.version, "detail": detail}


def _nvml_facts() -> dict[str, Any]:
    from service.runtime.memory_gpu import _nvml

    nvml = _nvml()
    if nvml is None:
        return {"ok": False, "detail": "NVML not available (nvidia-ml-py missing or no NVIDIA driver)"}
    try:
        driver = nvml.nvmlSystemGetDriverVersion()
        count = nvml.nvmlDeviceGetCount()
    except Exception as exc:
        return {"ok": False, "detail": f"NVML initialised but failed: {exc}"}
    return {"ok": True, "detail": f"driver {driver}, {count} device(s)"}


def _model_facts(repo: ModelRepository, name: str, runtime: str, providers: str) -> tuple[dict[str, Any], str | None]:
    from service.runtime.loader import load_backend

    manifest = repo.manifest(name)
    facts: dict[str, Any] = {"artifacts": sorted(manifest.artifacts) if manifest else [], "runtime": "-"}
    if manifest is None:
        return facts, None  # not built: `tessera build` says so; not a runtime problem
    try:
        backend = load_backend(repo, name, prefer=runtime, providers=providers)  # type: ignore[arg-type]
    except Exception as exc:
        facts["runtime"] = "NONE"
        return facts, f"model {name}: {exc}"
    described = backend.describe()
    facts["runtime"] = f"{backend.name} on {backend.device}, {backend.precision}" + (
        f", providers {described['providers']}" if "providers" in described else ""
    )
    facts["skipped"] = [f"{label}: {reason}" for label, reason in backend.load_notes]
    backend.close()
    return facts, None


def diagnose(repo: ModelRepository | None, *, runtime: str = "auto", providers: str = "auto") -> DoctorReport:
    """Check this host against what the configuration asks for (``runtime``/``providers``)."""
    from service.runtime.devices import gpu_count

    report = DoctorReport(
        python=f"{platform.python_version()} ({sys.executable})",
        packages={name: v for name in _PACKAGES if (v := _version(name))},
        torch=_torch_facts(),
        onnxruntime=_ort_facts(),
        tensorrt=_tensorrt_facts(),
        nvml=_nvml_facts(),
    )
    gpus = gpu_count()
    from service.runtime.devices import unusable_gpu_reason

    if providers != "cpu" and (reason := unusable_gpu_reason()):
        report.problems.append(reason)
    wants_gpu = gpus > 0 or providers in ("cuda", "tensorrt") or runtime == "tensorrt"
    if report.torch["error"]:
        report.problems.append(report.torch["error"])
    if wants_gpu:
        gpu_states = {p: s for p, s in report.onnxruntime["providers"].items() if p != "CPUExecutionProvider"}
        if not gpu_states:
            report.problems.append(
                f"a GPU is {'visible' if gpus else 'asked for'} but {report.onnxruntime['flavour']} has no GPU "
                "provider: install the gpu extra (pip install 'tessera[gpu]', docs/deploying.md)"
            )
        for provider, state in gpu_states.items():
            if not state["loads"] and (providers == "auto" or provider.lower().startswith(providers)):
                report.problems.append(f"{provider} does not load: {state['detail']}")
        if gpus and not report.nvml["ok"]:
            report.problems.append(f"GPU memory cannot be measured: {report.nvml['detail']}")
        if runtime == "tensorrt" and not report.tensorrt["ok"]:
            report.problems.append(f"runtime tensorrt is configured: {report.tensorrt['detail']}")
    if repo is not None:
        for name in repo.names():
            facts, problem = _model_facts(repo, name, runtime, providers)
            report.models[name] = facts
            if problem:
                report.problems.append(problem)
    return report
