"""What Tessera's runtime selection does on a bare GPU host (run by bench/gpu/run.sh --host-check).

Builds a shallow ViT repository (224 px) with the host's own PyTorch and ONNX Runtime, prints
``tessera doctor``'s report, loads the model with ``runtime=auto`` the way a replica does, and
compares its answer with ONNX Runtime on the CPU. Prints; asserts nothing a benchmark would not.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> int:
    from service.models import ModelRepository
    from service.runtime import load_backend
    from service.runtime.doctor import diagnose
    from tests.helpers import make_vit_only_repo

    started = time.perf_counter()
    root = make_vit_only_repo(Path(tempfile.mkdtemp()) / "repo")
    print(f"built a shallow vit_small in {time.perf_counter() - started:.1f} s", flush=True)
    repo = ModelRepository(root)
    print(diagnose(repo).render(), flush=True)
    auto = load_backend(repo, "vit_small")
    print(f"runtime=auto chose {auto.name} on {getattr(auto, 'device', '?')} ({getattr(auto, 'precision', '?')})")
    for label, reason in auto.load_notes:
        print(f"  skipped {label}: {reason}")
    cpu = load_backend(repo, "vit_small", providers="cpu")
    x = np.random.default_rng(0).standard_normal((4, 3, 224, 224)).astype(np.float32)
    got, want = auto.infer(x).outputs["embedding"], cpu.infer(x).outputs["embedding"]
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    print(f"auto vs onnxruntime[cpu] fp32: max abs diff / max abs = {rel:.2e}")
    print(f"memory report: {auto.memory()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
