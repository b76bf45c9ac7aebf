"""The schema of ``model_repo/<model>/config.yaml``: the source of truth for a model.

Torch-free on purpose: the router, the runtime and the Ray replicas read configs without
importing PyTorch. Every field has bounds and a description; unknown keys are errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.settings import load_yaml

__all__ = [
    "ArchitectureConfig",
    "ArtifactsConfig",
    "BatchingConfig",
    "InputConfig",
    "ModelConfig",
    "OutputConfig",
    "Pooling",
    "WeightsConfig",
    "load_model_config",
]


class StrictModel(BaseModel):
    """Base for config sections: a typo in a config file is an error, not a silent default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


#: Layer classes a config may name (YAML holds no Python classes); the factory maps each to timm's.
MlpLayer = Literal["mlp", "swiglu_packed", "swiglu"]
ActLayer = Literal["gelu", "gelu_tanh", "silu", "relu"]

#: Keys the factory sets itself: in ``kwargs`` they are an error that names the field to use instead.
_RESERVED_KWARGS = {
    "mlp_layer": "architecture.mlp_layer",
    "act_layer": "architecture.act_layer",
    "pretrained": "weights.path (nothing is downloaded)",
    "pretrained_cfg": "input.mean/std",
    "checkpoint_path": "weights.path",
}


class ArchitectureConfig(StrictModel):
    timm_name: str = Field(description="Name in timm's registry (the in-house NA family is registered there too).")
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Keyword overrides passed to timm.create_model (depth, img_size, ...)."
    )
    mlp_layer: MlpLayer | None = Field(
        default=None,
        description="MLP block: `mlp` (timm Mlp), `swiglu_packed` (timm SwiGLUPacked: one fc1 holding gate and "
        "value, as UNI2-h, Virchow2 and the DINOv2 giants ship), `swiglu` (timm SwiGLU); unset keeps the "
        "architecture's own.",
    )
    act_layer: ActLayer | None = Field(
        default=None, description="Activation inside the MLP (`silu` for SwiGLU); unset keeps the architecture's own."
    )

    @model_validator(mode="after")
    def _no_reserved_kwargs(self) -> ArchitectureConfig:
        for key, instead in _RESERVED_KWARGS.items():
            if key in self.kwargs:
                raise ValueError(f"architecture.kwargs.{key} is not accepted here; use {instead}")
        return self


class WeightsConfig(StrictModel):
    source: Literal["random", "file"] = Field(
        default="random", description="`random`: fixed-seed initialisation (untrained); `file`: a local checkpoint."
    )
    path: str | None = Field(
        default=None, description="Checkpoint path (timm state dict or .safetensors), relative to the config file."
    )
    seed: int = Field(default=0, ge=0, description="Seed for random initialisation.")
    strict: bool = Field(default=True, description="Refuse checkpoints with missing or unexpected keys.")
    layout: Literal["timm", "hf_dinov2"] = Field(
        default="timm",
        description="Key layout of the checkpoint: `timm` (timm's state-dict names, as UNI, UNI2-h, Virchow2, "
        "H-optimus and Prov-GigaPath publish) or `hf_dinov2` (Hugging Face transformers' Dinov2Model, as "
        "Phikon-v2 publishes; mapped to timm's ViT names on load).",
    )

    @model_validator(mode="after")
    def _path_iff_file(self) -> WeightsConfig:
        if self.source == "file" and not self.path:
            raise ValueError("weights.source is 'file' but weights.path is not set")
        return self


class InputConfig(StrictModel):
    native_size: int = Field(ge=16, le=8192, description="Square side the architecture was designed for.")
    patch_size: int = Field(ge=1, le=64, description="Pixels per token side at the stem.")
    window_size: int | None = Field(default=None, ge=1, le=64, description="Swin window (tokens), if any.")
    kernel_size: int | None = Field(default=None, ge=3, le=63, description="Neighbourhood kernel, if any.")
    sizes: list[int] = Field(
        default_factory=list,
        description="Square input sizes (buckets) the model accepts; empty means only native_size.",
    )
    mean: tuple[float, float, float] = Field(default=(0.485, 0.456, 0.406), description="Per-channel mean (0-1).")
    std: tuple[float, float, float] = Field(default=(0.229, 0.224, 0.225), description="Per-channel std (0-1).")
    interpolation: Literal["bilinear", "bicubic", "nearest"] = Field(
        default="bicubic", description="Resampling filter for resizes."
    )
    fit: Literal["letterbox", "resize"] = Field(
        default="letterbox",
        description="letterbox: keep aspect and pad to the square input; resize: stretch to the square input.",
    )

    @property
    def buckets(self) -> list[int]:
        return sorted(set(self.sizes or [self.native_size]))


Pooling = Literal["head", "cls", "mean", "cls+mean"]


class OutputConfig(StrictModel):
    embedding_dim: int = Field(ge=1, le=65536, description="Width of the pooled embedding.")
    num_classes: int = Field(default=1000, ge=0, le=100000, description="Logit count; 0 for none.")
    pooling: Pooling = Field(
        default="head",
        description="How the embedding is pooled from the final (normalised) tokens. `head`: timm's own "
        "`forward_head(pre_logits=True)`, whatever the architecture's `global_pool` says; `cls`: the class "
        "token; `mean`: the mean of the patch tokens, class and register tokens excluded; `cls+mean`: both "
        "concatenated (twice the width), as Virchow2 publishes. All but `head` need a ViT (family `vit`).",
    )


class BatchingConfig(StrictModel):
    max_batch_size: int = Field(default=8, ge=1, le=1024, description="Largest batch one replica runs.")
    batch_wait_timeout_s: float = Field(
        default=0.01, ge=0.0, le=1.0, description="How long a replica waits to fill a batch."
    )
    max_concurrent_batches: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Batches one replica runs at once. 2 lets a small image run beside a large one "
        "instead of queueing behind it (processor sharing); each running batch holds its own activations.",
    )
    max_ongoing_requests: int = Field(default=32, ge=1, le=4096, description="In-flight requests per replica.")
    max_queued_requests: int = Field(
        default=64, ge=-1, le=100000, description="Requests queued for the deployment before 503; -1 unbounded."
    )
    num_replicas: int = Field(default=1, ge=1, le=1024, description="Replicas of this backbone.")
    num_cpus: float = Field(default=0.5, ge=0.0, le=256.0, description="Ray CPU request per replica.")
    num_gpus: float = Field(default=0.0, ge=0.0, le=16.0, description="Ray GPU request per replica.")


class ArtifactsConfig(StrictModel):
    onnx: bool = Field(default=True, description="Export model.onnx (fp32).")
    optimize: bool = Field(default=True, description="Run ONNX Runtime's transformer optimizer on the export.")
    fp16: bool = Field(
        default=True,
        description="Also build model.fp16.onnx (fp32 inputs/outputs, standard ops): what GPU runtimes run.",
    )
    tensorrt: bool = Field(
        default=False, description="Also build a TensorRT plan (from the fp16 graph) on a GPU host with TensorRT."
    )
    tensorrt_max_batch: int = Field(
        default=256,
        ge=1,
        le=4096,
        description="Largest batch of the TensorRT plan at the native size; larger buckets keep the same "
        "pixels per batch (224² at 256 → 1024² at 12).",
    )
    external_data: bool = Field(
        default=False,
        description="Keep the graphs' weights in a `<graph>.data` file beside each graph. Done anyway when the "
        "fp32 weights pass 1.5 GiB (a protobuf message stops at 2 GiB: ViT-H and ViT-g need it).",
    )
    opset: int = Field(
        default=23,
        ge=17,
        le=23,
        description="ONNX opset. 23 is the first with the standard `Attention` op, which the exporter writes for "
        "every scaled-dot-product attention (one fused op per attention block); 17-22 decompose attention.",
    )
    parity_atol: float = Field(default=1e-3, gt=0, le=1.0, description="Max abs error accepted vs PyTorch (fp32).")


class ModelConfig(StrictModel):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]{0,62}$", description="Model name used in URLs.")
    enabled: bool = Field(
        default=True,
        description="A disabled model (a preset waiting for its checkpoint) stays in the repository but is not "
        "built, served, routed or listed.",
    )
    version: int = Field(default=1, ge=1, le=100000, description="Version; artifacts go to <model>/<version>/.")
    family: Literal["vit", "swin", "nat"] = Field(description="Attention family: global, windowed, neighbourhood.")
    description: str = Field(default="", description="One line for humans.")
    architecture: ArchitectureConfig
    weights: WeightsConfig = Field(default_factory=WeightsConfig)
    input: InputConfig
    output: OutputConfig
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    artifacts: ArtifactsConfig = Field(default_factory=ArtifactsConfig)

    @model_validator(mode="after")
    def _pooling_needs_tokens(self) -> ModelConfig:
        if self.output.pooling != "head" and self.family != "vit":
            raise ValueError(
                f"output.pooling {self.output.pooling!r} pools ViT tokens; family {self.family!r} needs pooling 'head'"
            )
        if self.weights.layout != "timm" and self.family != "vit":
            raise ValueError(f"weights.layout {self.weights.layout!r} maps to timm's ViT; family is {self.family!r}")
        return self

    @property
    def trained(self) -> bool:
        return self.weights.source == "file"


def load_model_config(path: str | Path) -> ModelConfig:
    """Read and validate one config.yaml; errors name the file and the bad field."""
    return load_yaml(path, ModelConfig)
