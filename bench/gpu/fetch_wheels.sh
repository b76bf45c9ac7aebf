#!/usr/bin/env bash
# Fills bench/gpu/wheels/ with the pure-Python and small binary wheels the GPU benchmark needs on a
# bare GPU host (Python 3.12, PyTorch with CUDA, onnx, CPU onnxruntime; nothing else of Tessera's),
# and the timm the default models need (the host's own may be older: 1.0.29's Swin takes no
# dynamic_img_size). Run on a machine that reaches the package index; the folder is git-ignored
# and travels with the benchmark (about 6.4 MiB).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
mkdir -p wheels
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    -d wheels \
    "pydantic==2.14.4" "pydantic-core==2.50.5" "annotated-types==0.8.0" "typing-inspection==0.4.5" \
    "typing-extensions==4.16.0" "pyyaml==6.0.4" "pydantic-settings==2.16.3" "python-dotenv==1.2.4" \
    "timm==1.0.31"
du -sh wheels
