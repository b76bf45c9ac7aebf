"""One CUDA major through the GPU stack: pins, the lock, the image, checked without a GPU.

``deploy/gpu-stack.lock.json`` records, per piece of the stack, the version pinned and the shared
libraries it links (read from the wheels). :func:`check` compares pyproject.toml's ``gpu`` extra,
the Dockerfile's GPU base image and the installed torch against it and lists every disagreement.

``python deploy/gpu_stack.py --read-wheel onnxruntime_gpu-X.whl`` prints the ``needed`` libraries
of the wheel's provider libraries (``readelf -d``), to refresh the lock when a pin moves.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["LOCK", "check", "gpu_extra_pins", "needed_libraries"]

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "deploy" / "gpu-stack.lock.json"
_PROVIDER_LIBS = {
    "CUDAExecutionProvider": "libonnxruntime_providers_cuda.so",
    "TensorrtExecutionProvider": "libonnxruntime_providers_tensorrt.so",
}


def gpu_extra_pins(pyproject: dict[str, Any]) -> dict[str, str]:
    """``{package: exact version}`` for each ``==`` pin of the ``gpu`` extra (extras stripped)."""
    pins: dict[str, str] = {}
    for requirement in pyproject["project"]["optional-dependencies"]["gpu"]:
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?\s*(==|>=)\s*([^\s;,]+)", requirement)
        if match:
            pins[match.group(1).lower()] = ("" if match.group(3) == "==" else ">=") + match.group(4)
    return pins


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def _major(soname: str) -> int:
    return int(soname.rsplit(".so.", 1)[1].split(".")[0])


def check(pyproject: dict[str, Any], lock: dict[str, Any], dockerfile: str, torch_cuda: str | None) -> list[str]:
    """Every way the GPU stack disagrees with itself; empty when it is coherent."""
    problems: list[str] = []
    cuda = int(lock["cuda_major"])
    pins = gpu_extra_pins(pyproject)
    ort = lock["onnxruntime-gpu"]
    if pins.get("onnxruntime-gpu") != ort["version"]:
        problems.append(f"gpu extra pins onnxruntime-gpu {pins.get('onnxruntime-gpu')}, the lock {ort['version']}")
    for provider, libs in ort["needed"].items():
        for lib in libs:
            if lib.startswith(("libcudart.so", "libcublas.so", "libcublasLt.so")) and _major(lib) != cuda:
                problems.append(f"{provider} links {lib}, but the stack is CUDA {cuda}")
    cpu_floor = next(
        (
            r.split(">=", 1)[1]
            for r in pyproject["project"]["optional-dependencies"]["cpu"]
            if r.startswith("onnxruntime>=")
        ),
        None,
    )
    if cpu_floor and _version_tuple(ort["version"]) < _version_tuple(cpu_floor):
        problems.append(
            f"onnxruntime-gpu {ort['version']} is older than the CPU build's floor {cpu_floor} "
            "(the oldest that runs the exported graphs' Attention op): builds on a GPU host would fail parity"
        )
    trt = lock["tensorrt"]
    trt_packages = [p for p in pins if p.startswith("tensorrt")]
    if trt_packages != [trt["package"]]:
        problems.append(f"gpu extra pins TensorRT as {trt_packages}, the lock as [{trt['package']!r}]")
    elif pins[trt["package"]] != trt["version"]:
        problems.append(f"gpu extra pins {trt['package']} {pins[trt['package']]}, the lock {trt['version']}")
    suffix = re.search(r"-cu(\d+)$", trt["package"])
    if suffix is None or int(suffix.group(1)) != cuda:
        problems.append(f"TensorRT package {trt['package']} is not the CUDA {cuda} build (tensorrt-cu{cuda})")
    trt_major = int(trt["version"].split(".")[0])
    for lib in ort["needed"]["TensorrtExecutionProvider"]:
        if lib.startswith(("libnvinfer.so", "libnvonnxparser.so")) and _major(lib) != trt_major:
            problems.append(f"ONNX Runtime's TensorRT provider links {lib}, the pinned TensorRT is {trt['version']}")
    if tuple(int(x) for x in trt["version"].split(".")[:2]) < (10, 14):
        problems.append(f"TensorRT {trt['version']} cannot import the ONNX Attention op (10.14 and later can)")
    if "nvidia-ml-py" not in pins:
        problems.append("gpu extra lacks nvidia-ml-py (GPU memory through NVML)")
    torch_pin = next((d for d in pyproject["project"]["dependencies"] if d.startswith("torch==")), None)
    if torch_pin != f"torch=={lock['torch']['version']}":
        problems.append(f"pyproject pins {torch_pin}, the lock torch=={lock['torch']['version']}")
    if int(lock["torch"]["cuda"].split(".")[0]) != cuda:
        problems.append(f"the lock's torch is a CUDA {lock['torch']['cuda']} build, the stack CUDA {cuda}")
    if torch_cuda is not None and int(torch_cuda.split(".")[0]) != cuda:
        problems.append(f"the installed torch is a CUDA {torch_cuda} build, the stack CUDA {cuda}")
    base = re.search(r"^FROM nvidia/cuda:(\d+)\.[\d.]+-\S+ AS base-gpu$", dockerfile, re.MULTILINE)
    if base is None:
        problems.append("the Dockerfile has no `FROM nvidia/cuda:<version>-... AS base-gpu` stage")
    elif int(base.group(1)) != cuda:
        problems.append(f"the Dockerfile's GPU base is CUDA {base.group(1)}, the stack CUDA {cuda}")
    return problems


def load() -> tuple[dict[str, Any], dict[str, Any], str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return pyproject, json.loads(LOCK.read_text()), (ROOT / "Dockerfile").read_text()


def needed_libraries(wheel: Path) -> dict[str, list[str]]:
    """The ``NEEDED`` entries of an onnxruntime-gpu wheel's provider libraries (``readelf -d``)."""
    out: dict[str, list[str]] = {}
    with zipfile.ZipFile(wheel) as archive, tempfile.TemporaryDirectory() as tmp:
        for provider, lib in _PROVIDER_LIBS.items():
            member = f"onnxruntime/capi/{lib}"
            archive.extract(member, tmp)
            dump = subprocess.run(
                ["readelf", "-d", str(Path(tmp) / member)], capture_output=True, text=True, check=True
            )
            out[provider] = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", dump.stdout)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--read-wheel", type=Path, help="print an onnxruntime-gpu wheel's provider libraries' needs")
    args = parser.parse_args(argv)
    if args.read_wheel:
        print(json.dumps(needed_libraries(args.read_wheel), indent=2))
        return 0
    try:
        import torch

        torch_cuda = torch.version.cuda
    except ImportError:
        torch_cuda = None
    problems = check(*load(), torch_cuda)
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
