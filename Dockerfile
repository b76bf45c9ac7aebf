# syntax=docker/dockerfile:1
#
# Tessera's image, one Dockerfile for both variants:
#   docker build -t REGISTRY/tessera:0.1.0 .                                  # CPU (default)
#   docker build --build-arg VARIANT=gpu -t REGISTRY/tessera:0.1.0-gpu .      # CUDA + TensorRT
#   docker build --build-arg BAKE_MODELS=1 ...                                # model repository built in
#
# Without BAKE_MODELS the image holds the model configs only, and the repository (configs and
# built artifacts) is mounted at /models (TESSERA_MODEL_REPO). The same image runs `tessera serve`
# (its CMD) and, under KubeRay, the Ray head and workers (KubeRay replaces the command with
# `ray start`). Checked statically by tests/unit/deploy/test_dockerfile.py; see docs/deploying.md.

ARG VARIANT=cpu

# --- runtime bases: everything both the builder and the final image share ---------------------

# CPU: Debian slim with CPython 3.11. PyTorch comes from its CPU wheel index (the default PyPI
# wheel carries several GB of CUDA libraries a CPU image never loads).
FROM python:3.11-slim-bookworm AS base-cpu
ENV PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu

# GPU: NVIDIA's CUDA 13 base image (driver compatibility only). Every CUDA library comes from pip,
# one CUDA major through the stack (deploy/gpu-stack.lock.json): torch 2.14.1's CUDA 13 wheels,
# onnxruntime-gpu[cuda,cudnn] (which preloads them: no LD_LIBRARY_PATH), tensorrt-cu13 10.x
# (libnvinfer.so.10, what onnxruntime-gpu's TensorRT provider links) from NVIDIA's index. A
# cudnn-runtime base would put a second, possibly different cuDNN on the library path.
# Ubuntu 24.04's Python is 3.12 (pyproject: requires-python >= 3.11).
FROM nvidia/cuda:13.0.0-base-ubuntu24.04 AS base-gpu
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    PIP_EXTRA_INDEX_URL=https://pypi.nvidia.com

FROM base-${VARIANT} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# --- builder: the virtual environment (and, with BAKE_MODELS=1, the built model repository) ----

FROM runtime AS builder
ARG VARIANT
ARG BAKE_MODELS=0
RUN python3 -m venv /opt/venv \
    && pip install --no-cache-dir --upgrade pip
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service/ service/
# A regular (not editable) install: the final image needs the venv only, not /src.
RUN pip install --no-cache-dir ".[${VARIANT}]"
COPY model_repo/ /models/
# Builds what each config.yaml asks for (ONNX export, optimizer, parity check, manifest). No GPU
# is visible during `docker build`, so TensorRT plans are built later, on the GPU host.
RUN if [ "${BAKE_MODELS}" = "1" ]; then \
        TESSERA_MODEL_REPO=/models tessera build; \
    else \
        echo "BAKE_MODELS=${BAKE_MODELS}: model repository not built; mount one at /models"; \
    fi

# --- final: the venv, the model repository, a non-root user; no compilers, no caches ----------

FROM runtime AS final
ARG VARIANT
LABEL org.opencontainers.image.title="tessera" \
      org.opencontainers.image.description="Vision-transformer inference on Ray Serve (${VARIANT})" \
      org.opencontainers.image.licenses="Apache-2.0"
# uid 1000 (the uid the Kubernetes manifests run as); Ubuntu 24.04 images ship a user `ubuntu` with it.
RUN set -eu; \
    if old="$(getent passwd 1000 | cut -d: -f1)" && [ -n "$old" ]; then userdel "$old"; rm -rf "/home/$old"; fi; \
    if old="$(getent group 1000 | cut -d: -f1)" && [ -n "$old" ]; then groupdel "$old"; fi; \
    groupadd --gid 1000 tessera; \
    useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash tessera; \
    mkdir -p /var/lib/tessera/jobs; \
    chown -R 1000:1000 /var/lib/tessera
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder --chown=1000:1000 /models /models
ENV TESSERA_MODEL_REPO=/models \
    TESSERA_JOB_DIR=/var/lib/tessera/jobs \
    HOME=/home/tessera
USER 1000:1000
WORKDIR /home/tessera
# HTTP (REST, Open Inference Protocol), gRPC, Prometheus metrics.
EXPOSE 8000 9000 8080
# The image has no curl or wget: Python asks the readiness route (urlopen raises on non-2xx).
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=4)"]
CMD ["tessera", "serve", "--host", "0.0.0.0"]
