"""Shared test helpers: small model repositories built from the real configs, images, slides."""

from __future__ import annotations

import io
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import yaml
from PIL import Image

from service.ports import bind_error
from service.ports import free_port as free_port  # re-exported: the tests import it from here

ROOT = Path(__file__).resolve().parents[1]
MODEL_REPO = ROOT / "model_repo"
SLIDES = ROOT.parent / "shared" / "data" / "slides"
CMU_SMALL = SLIDES / "CMU-1-Small-Region.svs"

# Depth overrides that keep each family's real architecture but make export and inference fast.
_SHRINK: dict[str, dict[str, Any]] = {
    "vit": {"depth": 2},
    "swin": {"depths": [1, 1, 1, 1]},
    "nat": {"depths": [1, 1, 1, 1]},
}


def default_model_names() -> list[str]:
    """The models `make serve` builds: enabled configs (presets are ``enabled: false``)."""
    names = []
    for path in MODEL_REPO.glob("*/config.yaml"):
        if yaml.safe_load(path.read_text()).get("enabled", True):
            names.append(path.parent.name)
    return sorted(names)


def preset_model_names() -> list[str]:
    """The disabled presets of the default repository (published encoders waiting for a checkpoint)."""
    return sorted(p.parent.name for p in MODEL_REPO.glob("*/config.yaml") if p.parent.name not in default_model_names())


def make_small_repo(dest: Path, names: list[str] | None = None) -> Path:
    """Copy the default configs into ``dest`` with shallower networks (same families, same I/O)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in names or default_model_names():
        raw = yaml.safe_load((MODEL_REPO / name / "config.yaml").read_text())
        raw["architecture"]["kwargs"] = {**raw["architecture"].get("kwargs", {}), **_SHRINK[raw["family"]]}
        (dest / name).mkdir(exist_ok=True)
        (dest / name / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    routes = yaml.safe_load((MODEL_REPO / "routes.yaml").read_text())
    # Tests run uncalibrated (costs are MACs / an assumed rate, and the shallow test networks
    # do not rank like the real ones): give small images to the global-attention model by
    # policy so tests can rely on it; larger images are still routed by cost.
    for name, route in routes["models"].items():
        if name != "vit_small":
            route["min_side"] = 257
    routes["models"] = {k: v for k, v in routes["models"].items() if k in (names or default_model_names())}
    (dest / "routes.yaml").write_text(yaml.safe_dump(routes, sort_keys=False))
    return dest


def make_vit_only_repo(dest: Path, **batching: Any) -> Path:
    """A built repository with only a shallow ViT at 224 px (the e2e servers), ``batching`` overrides."""
    from service.export import build_repository
    from service.models import ModelRepository

    root = make_small_repo(dest, ["vit_small"])
    cfg_path = root / "vit_small" / "config.yaml"
    raw = yaml.safe_load(cfg_path.read_text())
    raw["input"]["sizes"] = [224]
    raw["batching"].update(batching)
    cfg_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    routes = yaml.safe_load((MODEL_REPO / "routes.yaml").read_text())
    routes["models"] = {"vit_small": {"max_side": 4096, "dynamic": False}}
    (root / "routes.yaml").write_text(yaml.safe_dump(routes))
    rows = build_repository(ModelRepository(root))
    if not all(r.status == "built" for r in rows):
        raise RuntimeError(f"test repository did not build: {rows}")
    return root


def jpeg_bytes(width: int = 224, height: int = 224, seed: int = 0, quality: int = 90) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((height, width, 3)) * 255).astype(np.uint8)
    return encode(pixels, "JPEG", quality=quality)


def encode(pixels: np.ndarray, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **kwargs)
    return buf.getvalue()


def slide_crop_jpeg(x: int = 800, y: int = 1200, size: int = 224) -> bytes:
    """A real tissue crop from CMU-1-Small-Region.svs, read with OpenSlide."""
    import openslide

    with openslide.OpenSlide(str(CMU_SMALL)) as slide:
        region = slide.read_region((x, y), 0, (size, size)).convert("RGB")
    buf = io.BytesIO()
    region.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def descendants(pid: int) -> list[psutil.Process]:
    """Every process under ``pid`` now (empty once it is gone)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def stop_process_tree(
    proc: subprocess.Popen[str], children: Iterable[psutil.Process] = (), *, grace_s: float = 30.0
) -> list[str]:
    """The ``finally`` of a test that started ``tessera serve``: stops it if the test has not
    (SIGTERM, SIGKILL after ``grace_s``), then gives what is left of its process tree 5 s to exit
    and kills the rest: ``children`` (a snapshot taken while it ran) and its process group (it
    leads a session of its own, so processes re-parented to init are found too). Ray's processes
    and the HAProxy a replica spawns outlive a killed parent and would keep the next test's ports.

    Returns what had to be killed; a test that stopped the service itself asserts it is empty
    (:func:`assert_nothing_left`), so a leak still fails that test, and no later one."""
    from loadtest.runner import end_process_group

    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    _, alive = psutil.wait_procs(list(children), timeout=5)
    left = []
    for child in alive:
        try:
            left.append(child.name())
            child.kill()
        except psutil.NoSuchProcess:
            pass
    if end_process_group(proc.pid, grace_s=5):
        left.append(f"process group {proc.pid}")
    return left


def assert_nothing_left(left: list[str], ports: Iterable[int]) -> None:
    """After ``tessera serve`` stopped: :func:`stop_process_tree` had nothing to kill, and every
    port binds again."""
    assert not left, f"processes left behind (killed): {left}"
    still = [port for port in ports if bind_error("127.0.0.1", port) is not None]
    assert not still, f"ports still listening: {still}"


def assert_front_end_contract(ports: dict[str, int]) -> None:
    """What every front end must carry on ``tessera serve``'s ports (small repository): REST predict,
    a large image whose pixels exceed gRPC's 4 MB default between deployments, a bad image as a 400,
    OIP over gRPC and REST with ``tritonclient`` (equal answers, a wrong input INVALID_ARGUMENT)."""
    import httpx
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    base = f"http://127.0.0.1:{ports['http']}"
    response = httpx.post(
        f"{base}/v1/predict", content=slide_crop_jpeg(), headers={"content-type": "image/jpeg"}, timeout=60
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["embedding"]) == 384
    # a large image's pixels (over gRPC between deployments) are far over gRPC's 4 MB default
    large = httpx.post(
        f"{base}/v1/predict",
        content=slide_crop_jpeg(size=1500),
        headers={"content-type": "image/jpeg", "x-request-timeout": "120"},
        timeout=120,
    )
    assert large.status_code == 200, large.text
    bad = httpx.post(f"{base}/v1/predict", content=b"not an image", headers={"content-type": "image/jpeg"})
    assert bad.status_code == 400 and bad.json()["error"]["code"], bad.text

    pixels = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    with grpcclient.InferenceServerClient(f"127.0.0.1:{ports['grpc']}") as client:
        inputs = [grpcclient.InferInput("pixels", list(pixels.shape), "FP32")]
        inputs[0].set_data_from_numpy(pixels)
        embedding = client.infer("vit_small", inputs).as_numpy("embedding")
        assert embedding is not None and embedding.shape == (1, 384)
        wrong = [grpcclient.InferInput("nope", list(pixels.shape), "FP32")]
        wrong[0].set_data_from_numpy(pixels)
        with pytest.raises(InferenceServerException) as refused:
            client.infer("vit_small", wrong)
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    with httpclient.InferenceServerClient(f"127.0.0.1:{ports['http']}") as client:
        inputs = [httpclient.InferInput("pixels", list(pixels.shape), "FP32")]
        inputs[0].set_data_from_numpy(pixels, binary_data=True)
        outputs = [httpclient.InferRequestedOutput("embedding", binary_data=True)]
        rest_embedding = client.infer("vit_small", inputs, outputs=outputs).as_numpy("embedding")
        assert rest_embedding is not None
        np.testing.assert_allclose(rest_embedding, embedding, rtol=1e-4, atol=1e-5)


def start_tessera_serve(
    *,
    model_repo: Path | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    ready_timeout_s: float = 240.0,
    args: tuple[str, ...] = (),
    output: list[str] | None = None,
) -> tuple[subprocess.Popen[str], dict[str, int], str]:
    """``tessera serve`` as a subprocess on free ports: the process, its ports and its ready line.

    ``args`` are more ``tessera serve`` flags (e.g. ``--model-control-mode=explicit``); ``output``
    collects every line it prints, before and after the ready line. The process is
    :class:`loadtest.runner.ServiceProcess`, the one the load test starts, in a session of its own.

    Returns once the ready line is printed (its output is drained from then on); fails the test if
    the process exits first or prints none within ``ready_timeout_s``. Stopping it is the caller's
    (:func:`stop_process_tree` in a ``finally``).
    """
    from loadtest.runner import ServiceProcess

    service = ServiceProcess(
        str(model_repo) if model_repo is not None else None,
        env=env,
        cwd=cwd,
        args=args,
        ready_timeout_s=ready_timeout_s,
        temp_job_dir=False,
        output=output,
    )
    try:
        service.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    assert service.ready_line is not None
    return service.proc, service.ports, service.ready_line
