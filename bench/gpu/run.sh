#!/usr/bin/env bash
# The GPU benchmark in one command, on a bare H100/H200 host (service/bench/gpu.py says what it
# measures). From the repository root:
#
#   bash bench/gpu/fetch_wheels.sh     # once, where the package index is reachable
#   bash bench/gpu/run.sh              # on the GPU host; results go to bench/results/
#
# Needs there: Python 3.12, PyTorch with CUDA, torchvision and timm's other dependencies. The rest
# (timm itself too) comes from bench/gpu/wheels/ (installed without their dependencies into a
# private folder, nothing system-wide). About a minute on an
# H200 with --no-flex (NAT's flex kernel compiles for minutes). Then, where Tessera is installed:
# `tessera bench report` puts the results in docs/performance.md with the GPU named.
# `--host-check` runs bench/gpu/host_check.py instead (which runtime `runtime=auto` picks there,
# and why), `--profile-nat` bench/gpu/profile_nat.py (NAT-T's kernel launches and time),
# `--compile-modes` bench/gpu/compile_modes.py (ViT-B/16 under torch.compile's modes).
set -euo pipefail
cd "$(dirname "$0")/../.."
SITE=${TESSERA_GPU_SITE:-/tmp/tessera-gpu-site}
# The wheels (timm included: the host's own may predate what the default models need) go first on
# the path, whatever the host has.
if ls bench/gpu/wheels/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" bench/gpu/wheels/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
elif ! python3 -c "import pydantic, yaml" 2>/dev/null; then
    echo "bench/gpu/wheels/ is empty: run bench/gpu/fetch_wheels.sh first" >&2; exit 2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
case "${1:-}" in
    --host-check) exec python3 bench/gpu/host_check.py ;;
    --profile-nat) exec python3 bench/gpu/profile_nat.py ;;
    --compile-modes) exec python3 bench/gpu/compile_modes.py ;;
esac
exec python3 -m service.bench.gpu --device cuda:0 "$@"
