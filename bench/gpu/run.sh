#!/usr/bin/env bash
# The GPU benchmark in one command, on a bare H100/H200 host (service/bench/gpu.py says what it
# measures). From the repository root:
#
#   bash bench/gpu/fetch_wheels.sh     # once, where the package index is reachable
#   bash bench/gpu/run.sh              # on the GPU host; results go to bench/results/
#
# Needs there: Python 3.12, PyTorch with CUDA, timm. Everything else it imports comes from
# bench/gpu/wheels/ (installed into a private folder, nothing system-wide). About 5 minutes on an
# H200. Then, where Tessera is installed: `tessera bench report` puts the results in
# docs/performance.md with the GPU named.
set -euo pipefail
cd "$(dirname "$0")/../.."
SITE=${TESSERA_GPU_SITE:-/tmp/tessera-gpu-site}
if ! python3 -c "import pydantic, yaml" 2>/dev/null; then
    ls bench/gpu/wheels/*.whl >/dev/null 2>&1 || { echo "bench/gpu/wheels/ is empty: run bench/gpu/fetch_wheels.sh first" >&2; exit 2; }
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" bench/gpu/wheels/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
exec python3 -m service.bench.gpu --device cuda:0 "$@"
