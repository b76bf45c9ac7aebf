"""Where a NAT-T forward's time goes on a GPU: kernel launches, wall time and summed kernel time at
512² and 2048² (``bash bench/gpu/run.sh --profile-nat``). A launch-bound forward shows a wall time
far above its kernels' and flat across sizes. Prints; writes nothing."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def main() -> int:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from service.bench.gpu import _model
    from service.runtime.torch_backend import TorchBackend

    _, model = _model("nat_tiny", False)
    model.backbone.set_attn_backend("tiled")
    runner = TorchBackend(model, device="cuda:0", precision="fp16")
    for side in (512, 2048):
        x = torch.randn(1, 3, side, side, device="cuda:0", dtype=torch.float16)
        with torch.inference_mode():
            for _ in range(3):
                runner.model(x)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                started = time.perf_counter()
                runner.model(x)
                torch.cuda.synchronize()
                wall = time.perf_counter() - started
        events = prof.key_averages()
        launches = sum(
            e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC")
        )
        kernel_ms = sum(e.self_device_time_total for e in events) / 1e3
        print(
            f"nat_tiny tiled {side}²: wall {wall * 1e3:.1f} ms (profiled), {launches} kernel launches, "
            f"kernels {kernel_ms:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
