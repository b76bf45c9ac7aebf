"""torch → ONNX through the dynamo exporter, then ONNX Runtime's transformer optimizer."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from collections import Counter
from pathlib import Path

import onnx
import torch
from torch import nn

__all__ = ["count_fused", "export_onnx", "nonstandard_domains", "optimize_onnx"]

log = logging.getLogger(__name__)

# ORT's transformer optimizer has dedicated fusions for these families; NAT gets the generic ones.
_ORT_MODEL_TYPE = {"vit": "vit", "swin": "swin", "nat": "vit"}


def export_onnx(
    model: nn.Module, path: Path, *, size: tuple[int, int], opset: int, dynamic_hw: bool = False, max_batch: int = 1024
) -> list[str]:
    """Export ``model`` (``pixels -> (embedding, logits)``) with a dynamic batch axis.

    Returns the names of the dynamic axes. With ``dynamic_hw`` the spatial axes are dynamic too
    (architectures that support it: ViT with dynamic image size, NAT).
    """
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
            external_data=False,
            verbose=False,
        )
    onnx.checker.check_model(str(path))
    return axes


def optimize_onnx(src: Path, dst: Path, *, family: str, num_heads: int, hidden_size: int) -> dict[str, int]:
    """Run ORT's transformer optimizer (graph fusions, CPU-safe) and return fused-op counts."""
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
        opt.save_model_to_file(str(staged))
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
