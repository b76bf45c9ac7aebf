"""One CUDA major through the GPU stack, checked on a CPU machine without downloading it.

The lock (deploy/gpu-stack.lock.json) holds what each GPU wheel links, read from the wheels once;
these tests fail when pyproject's gpu extra, the Dockerfile's GPU base or the installed torch
disagree with it, or when the lock disagrees with itself.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from deploy import gpu_stack


def test_the_committed_gpu_stack_is_coherent() -> None:
    pyproject, lock, dockerfile = gpu_stack.load()
    assert gpu_stack.check(pyproject, lock, dockerfile, torch.version.cuda) == []


def test_the_installed_torch_is_the_locked_cuda_build() -> None:
    lock = json.loads(gpu_stack.LOCK.read_text())
    assert torch.__version__.split("+")[0] == lock["torch"]["version"]
    assert torch.version.cuda is not None and torch.version.cuda.split(".")[0] == str(lock["cuda_major"])


def _mutated(change):  # type: ignore[no-untyped-def]
    pyproject, lock, dockerfile = (copy.deepcopy(x) for x in gpu_stack.load())
    dockerfile = change(pyproject, lock, dockerfile) or dockerfile
    return gpu_stack.check(pyproject, lock, dockerfile, torch.version.cuda)


def _gpu(pyproject: dict) -> list[str]:
    return pyproject["project"]["optional-dependencies"]["gpu"]


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        # the unpinned TensorRT of main before this check: resolves to 11.x, libnvinfer.so.11
        (lambda p, lock, d: _gpu(p).__setitem__(1, "tensorrt>=10.0"), "pins TensorRT as"),
        (lambda p, lock, d: _gpu(p).__setitem__(1, "tensorrt-cu12==10.16.1.11"), "pins TensorRT as"),
        (lambda p, lock, d: _gpu(p).__setitem__(0, "onnxruntime-gpu==1.30.0"), "onnxruntime-gpu"),
        (lambda p, lock, d: lock["tensorrt"].update(version="11.4.0.106", package="tensorrt-cu13"), "links libnvinfer"),
        (lambda p, lock, d: lock["tensorrt"].update(version="10.13.3.9"), "Attention"),
        (lambda p, lock, d: lock.update(cuda_major=12), "CUDA"),
        (lambda p, lock, d: _gpu(p).pop(2), "nvidia-ml-py"),
        (lambda p, lock, d: p["project"]["optional-dependencies"].update(cpu=["onnxruntime>=1.32"]), "older than"),
        (lambda p, lock, d: d.replace("nvidia/cuda:13.0.0", "nvidia/cuda:12.8.1"), "Dockerfile"),
    ],
)
def test_a_disagreeing_pin_is_caught(change, complaint: str) -> None:  # type: ignore[no-untyped-def]
    problems = _mutated(change)
    assert any(complaint in p for p in problems), problems


def test_an_installed_torch_of_another_cuda_is_caught() -> None:
    pyproject, lock, dockerfile = gpu_stack.load()
    assert any("installed torch" in p for p in gpu_stack.check(pyproject, lock, dockerfile, "12.8"))
