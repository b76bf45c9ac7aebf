"""torch → ONNX through the dynamo exporter, then ONNX Runtime's transformer optimizer."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

__all__ = [
    "EXTERNAL_DATA_BYTES",
    "artifact_files",
    "copy_onnx",
    "count_fused",
    "data_path",
    "export_onnx",
    "nonstandard_domains",
    "optimize_onnx",
    "remove_onnx",
    "save_onnx",
]

log = logging.getLogger(__name__)

#: Weights above this many bytes go to a ``<graph>.data`` file beside the graph: a protobuf
#: message cannot exceed 2 GiB (ViT-H and ViT-g in fp32 are 2.5-4.5 GB). The dynamo exporter's
#: own threshold, so that every step of a build agrees with the export.
EXTERNAL_DATA_BYTES = 1536 * 1024 * 1024


def data_path(graph: Path) -> Path:
    """Where a graph's external weights live: ``model.onnx`` → ``model.onnx.data``."""
    return graph.with_name(graph.name + ".data")


def artifact_files(graph: Path) -> dict[str, Any]:
    """The manifest's file fields for a graph: its name, hash and size, and its data file's if any."""
    from service.models.manifest import sha256_file

    fields: dict[str, Any] = {"file": graph.name, "sha256": sha256_file(graph), "bytes": graph.stat().st_size}
    data = data_path(graph)
    if data.exists():
        fields |= {"data_file": data.name, "data_sha256": sha256_file(data), "data_bytes": data.stat().st_size}
    return fields


def remove_onnx(graph: Path) -> None:
    """Remove a graph and its external data file, if any."""
    graph.unlink(missing_ok=True)
    data_path(graph).unlink(missing_ok=True)


def save_onnx(model: onnx.ModelProto, dst: Path, *, external_data: bool) -> None:
    """Save ``model`` at ``dst``; with ``external_data`` its weights go to ``data_path(dst)`` (one file)."""
    remove_onnx(dst)  # onnx appends to an existing data file
    if not external_data:
        onnx.save(model, str(dst))
        return
    onnx.save(
        model,
        str(dst),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data_path(dst).name,
        size_threshold=1024,
    )


def copy_onnx(src: Path, dst: Path, *, external_data: bool) -> None:
    """Copy a graph; one with external data is re-saved so that it names its own data file."""
    if not external_data and not data_path(src).exists():
        remove_onnx(dst)
        shutil.copyfile(src, dst)
        return
    save_onnx(onnx.load(str(src)), dst, external_data=True)


# ORT's transformer optimizer has dedicated fusions for these families; NAT gets the generic ones.
_ORT_MODEL_TYPE = {"vit": "vit", "swin": "swin", "nat": "vit"}


def export_onnx(
    model: nn.Module,
    path: Path,
    *,
    size: tuple[int, int],
    opset: int,
    dynamic_hw: bool = False,
    max_batch: int = 1024,
    external_data: bool = False,
) -> list[str]:
    """Export ``model`` (``pixels -> (embedding, logits)``) with a dynamic batch axis.

    Returns the names of the dynamic axes. With ``dynamic_hw`` the spatial axes are dynamic too
    (architectures that support it: ViT with dynamic image size, NAT). With ``external_data``
    (and, whatever it says, for weights above ``EXTERNAL_DATA_BYTES``) the weights are written to
    ``data_path(path)``.
    """
    remove_onnx(path)
    height, width = size
    example = torch.randn(2, 3, height, width)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    dims: dict[int, object] = {0: batch}
    axes = ["batch"]
    if dynamic_hw:
        dims[2] = torch.export.Dim.AUTO
        dims[3] = torch.export.Dim.AUTO
        axes += ["height", "width"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,
            input_names=["pixels"],
            output_names=["embedding", "logits"],
            dynamic_shapes=(dims,),
            opset_version=opset,
            external_data=external_data,
            verbose=False,
        )
    onnx.checker.check_model(str(path))
    return axes


def optimize_onnx(
    src: Path, dst: Path, *, family: str, num_heads: int, hidden_size: int, external_data: bool = False
) -> dict[str, int]:
    """Run ORT's transformer optimizer (graph fusions, CPU-safe) and return fused-op counts.

    With ``external_data`` the optimised graph keeps its weights in ``data_path(dst)``.
    """
    from onnxruntime.transformers import optimizer

    # The optimizer's symbolic shape inference does not follow the dynamic H/W graphs and prints
    # "failed in shape inference" to stdout; the fusions that need it are skipped. One log line
    # instead of a stray print in the middle of `tessera build`'s progress.
    # Its fusion modules log under their bare module names ("fusion_skiplayernorm"), so warnings
    # are silenced process-wide for the length of the call (a build step, not serving).
    printed = io.StringIO()
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(printed):
            opt = optimizer.optimize_model(
                str(src),
                model_type=_ORT_MODEL_TYPE.get(family, "vit"),
                num_heads=num_heads,
                hidden_size=hidden_size,
                opt_level=0,
                use_gpu=False,
                only_onnxruntime=False,
            )
    finally:
        logging.disable(logging.NOTSET)
    if "shape inference" in printed.getvalue():
        log.info("%s: ORT's symbolic shape inference does not cover this dynamic-size graph", src.name)
    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        staged = Path(tmp) / dst.name
        opt.save_model_to_file(str(staged), use_external_data_format=external_data)
        remove_onnx(dst)
        if external_data:  # the graph names its data file by base name: move both, keep the names
            os.replace(data_path(staged), data_path(dst))
        os.replace(staged, dst)
    return count_fused(onnx.load(str(dst), load_external_data=False))


def nonstandard_domains(model: onnx.ModelProto) -> set[str]:
    """Operator domains other than the standard ONNX one (``com.microsoft`` after ORT's optimizer).

    TensorRT's ONNX parser imports standard ops only: the graph handed to it must give ``set()``.
    """
    return {node.domain for node in model.graph.node if node.domain not in ("", "ai.onnx")}


def count_fused(model: onnx.ModelProto) -> dict[str, int]:
    """Count the operator kinds that matter for transformer speed in a graph.

    ``attention`` counts the standard ``Attention`` op (opset 23) and ONNX Runtime's fused
    ``Attention`` / ``MultiHeadAttention`` (``com.microsoft``); ``softmax_unfused`` the softmaxes
    left over from attention that was decomposed into MatMul-Softmax-MatMul.
    """
    ops = Counter(node.op_type for node in model.graph.node)
    return {
        "attention": ops["Attention"] + ops["MultiHeadAttention"],
        "layernorm": ops["LayerNormalization"]
        + ops["SkipLayerNormalization"]
        + ops["SimplifiedLayerNormalization"]
        + ops["SkipSimplifiedLayerNormalization"],
        "gelu": ops["Gelu"] + ops["FastGelu"] + ops["BiasGelu"] + ops["GemmFastGelu"],
        "softmax_unfused": ops["Softmax"],
        "matmul": ops["MatMul"] + ops["Gemm"],
        "nodes": sum(ops.values()),
    }
