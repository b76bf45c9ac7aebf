"""The Dockerfile, checked statically (no Docker engine here): stages, bases, user, caches, ports,
health check; the shell of its RUN steps is run against stub commands."""

from __future__ import annotations

import fnmatch
import http.server
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.render import JOB_DIR, MODELS_MOUNT
from service.settings import ServerSettings
from tests.unit.deploy._dockerfile import Dockerfile, Stage

ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = Dockerfile(ROOT / "Dockerfile")
FINAL = DOCKERFILE.stages[-1]
VARIANTS = ("cpu", "gpu")
COMPILERS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|cmake|cpp|[\w.+-]+-dev)\b")


def final_chain(variant: str) -> list[Stage]:
    return DOCKERFILE.chain(FINAL, {"VARIANT": variant})


def test_variant_arg_defaults_to_cpu_and_picks_the_base_image() -> None:
    assert DOCKERFILE.global_arg_default("VARIANT") == "cpu"
    assert any("${VARIANT}" in stage.base for stage in DOCKERFILE.stages), "no stage is FROM base-${VARIANT}"
    bases = {variant: DOCKERFILE.base_image(FINAL, {"VARIANT": variant}) for variant in VARIANTS}
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", bases["cpu"]), bases
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-base-ubuntu[\d.]+", bases["gpu"]), bases  # CUDA libraries from pip
    # The builder shares the final image's base, so the venv's interpreter exists in both.
    builder = DOCKERFILE.stage("builder")
    for variant in VARIANTS:
        args = {"VARIANT": variant}
        assert DOCKERFILE.base_image(builder, args) == DOCKERFILE.base_image(FINAL, args)


def test_multi_stage_final_image_takes_only_the_venv_and_the_models() -> None:
    assert len(DOCKERFILE.stages) >= 3
    copies = FINAL.all("COPY")
    assert copies, "the final stage copies nothing"
    sources = []
    for copy in copies:
        assert "--from=builder" in copy.args, f"final stage copies from the build context: {copy.args}"
        sources.append(next(a for a in copy.args.split() if not a.startswith("--")))
    assert sorted(sources) == ["/models", "/opt/venv"]
    assert not any("pip install" in run.args for stage in final_chain("cpu") for run in stage.all("RUN"))


def test_builder_installs_the_variant_extra_without_caches() -> None:
    builder = DOCKERFILE.stage("builder")
    installs = [run.args for run in builder.all("RUN") if "pip install" in run.args]
    assert any('".[${VARIANT}]"' in args for args in installs), installs
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("onnxruntime") and "gpu" not in dep for dep in extras["cpu"])
    assert any(dep.startswith("onnxruntime-gpu") for dep in extras["gpu"])
    assert any(dep.startswith("tensorrt") for dep in extras["gpu"])
    for variant in VARIANTS:
        for stage in DOCKERFILE.chain(builder, {"VARIANT": variant}):
            for run in stage.all("RUN"):
                if "pip install" in run.args:
                    assert "--no-cache-dir" in run.args, f"line {run.line}: pip keeps its cache"


@pytest.mark.parametrize("variant", VARIANTS)
def test_final_image_has_no_compilers_and_no_apt_lists(variant: str) -> None:
    for stage in final_chain(variant):
        for run in stage.all("RUN"):
            if "apt-get install" not in run.args:
                continue
            packages = run.args.split("apt-get install", 1)[1].split("&&")[0]
            assert not COMPILERS.search(packages), f"line {run.line}: compiler or headers in the final image"
            assert "--no-install-recommends" in run.args, f"line {run.line}"
            assert "rm -rf /var/lib/apt/lists/*" in run.args, f"line {run.line}: apt lists left in the layer"
    env: dict[str, str] = {}
    for stage in reversed(final_chain(variant)):
        env.update(stage.env())
    assert env.get("PIP_NO_CACHE_DIR") == "1", "pip run in the image later would keep a cache"


def test_final_stage_runs_as_uid_1000() -> None:
    user = FINAL.last("USER")
    assert user is not None and user.args.split(":")[0] in ("1000", "tessera"), user
    assert any("useradd --uid 1000" in run.args for run in FINAL.all("RUN"))
    assert FINAL.all("USER")[-1].line > max(run.line for run in FINAL.all("RUN")), "a RUN after USER runs as root"


def test_contract_ports_exposed() -> None:
    exposed = {int(port) for expose in FINAL.all("EXPOSE") for port in expose.args.split()}
    defaults = ServerSettings()
    assert exposed == {defaults.http_port, defaults.grpc_port, defaults.metrics_port} == {8000, 9000, 8080}


def test_cmd_and_environment() -> None:
    cmd = FINAL.last("CMD")
    assert cmd is not None and cmd.exec_form() == ["tessera", "serve", "--host", "0.0.0.0"]
    env = FINAL.env()
    assert env["TESSERA_MODEL_REPO"] == MODELS_MOUNT == "/models"
    assert env["TESSERA_JOB_DIR"] == JOB_DIR


def test_healthcheck_asks_the_readiness_route() -> None:
    check = FINAL.last("HEALTHCHECK")
    assert check is not None
    command = check.exec_form()
    assert command is not None and "http://127.0.0.1:8000/v2/health/ready" in " ".join(command)


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/v2/health/ready" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[http.server.HTTPServer, type[_Health]]]:
    handler = type("Handler", (_Health,), {})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


def test_healthcheck_command_fails_unless_ready(health_server: tuple[http.server.HTTPServer, type[_Health]]) -> None:
    server, handler = health_server
    check = FINAL.last("HEALTHCHECK")
    assert check is not None
    command = check.exec_form()
    assert command is not None and command[0] == "python"
    port = server.server_address[1]
    argv = [sys.executable, *(a.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for a in command[1:])]
    handler.status = 200
    assert subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    handler.status = 503
    assert subprocess.run(argv, capture_output=True, timeout=30).returncode != 0


def test_every_run_step_is_valid_shell() -> None:
    for stage in DOCKERFILE.stages:
        for run in stage.all("RUN"):
            if run.exec_form() is None:
                result = subprocess.run(["sh", "-n", "-c", run.args], capture_output=True, text=True)
                assert result.returncode == 0, f"line {run.line}: {result.stderr}"


# --- the RUN steps' logic, against stub commands ----------------------------------------------

STUBBED = ("getent", "userdel", "groupdel", "groupadd", "useradd", "mkdir", "chown", "rm", "tessera")


def run_with_stubs(tmp_path: Path, script: str, env: dict[str, str]) -> list[str]:
    """Run ``script`` with only stub commands (and ``cut``) on PATH; the stubs' calls, in order."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "calls.log"
    for name in STUBBED:
        stub = bin_dir / name
        if name == "getent":
            body = (
                '[ "$1" = passwd ] && printf "%s" "${FAKE_PASSWD:-}"\n[ "$1" = group ] && printf "%s" "${FAKE_GROUP:-}"'
            )
        else:
            body = f'echo "{name} $* [TESSERA_MODEL_REPO=${{TESSERA_MODEL_REPO:-}}]" >> "{log}"'
        stub.write_text(f"#!/bin/sh\n{body}\nexit 0\n")
        stub.chmod(0o755)
    cut = shutil.which("cut")
    assert cut is not None
    (bin_dir / "cut").symlink_to(cut)
    result = subprocess.run(
        ["/bin/sh", "-c", script], env={"PATH": str(bin_dir), **env}, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    return log.read_text().splitlines() if log.exists() else []


def test_user_step_replaces_an_existing_uid_1000(tmp_path: Path) -> None:
    (step,) = [run for run in FINAL.all("RUN") if "useradd" in run.args]
    fresh = run_with_stubs(tmp_path / "fresh", step.args, {})
    assert not any(call.startswith(("userdel", "groupdel")) for call in fresh)
    assert any(call.startswith("useradd --uid 1000 --gid 1000") and "tessera" in call for call in fresh)
    # Ubuntu 24.04 (the GPU base) ships user and group `ubuntu` with uid/gid 1000.
    ubuntu = run_with_stubs(
        tmp_path / "ubuntu",
        step.args,
        {"FAKE_PASSWD": "ubuntu:x:1000:1000::/home/ubuntu:/bin/bash", "FAKE_GROUP": "ubuntu:x:1000:"},
    )
    names = [call.split()[0] for call in ubuntu]
    assert names.index("userdel") < names.index("groupadd") < names.index("useradd")
    assert "userdel ubuntu" in " ".join(ubuntu) and "groupdel ubuntu" in " ".join(ubuntu)


@pytest.mark.parametrize(("bake", "builds"), [("1", True), ("0", False)])
def test_bake_models_runs_tessera_build_only_when_asked(tmp_path: Path, bake: str, builds: bool) -> None:
    builder = DOCKERFILE.stage("builder")
    assert any(arg.args == "BAKE_MODELS=0" for arg in builder.all("ARG")), "BAKE_MODELS must default to 0"
    (step,) = [run for run in builder.all("RUN") if "BAKE_MODELS" in run.args]
    calls = run_with_stubs(tmp_path, step.args, {"BAKE_MODELS": bake})
    expected = [f"tessera build [TESSERA_MODEL_REPO={MODELS_MOUNT}]"] if builds else []
    assert calls == expected
    assert any(copy.args.split()[-1].rstrip("/") == MODELS_MOUNT for copy in builder.all("COPY"))


# --- .dockerignore --------------------------------------------------------------------------


def _ignored(path: str, patterns: list[str]) -> bool:
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]  # a match on a parent counts
        candidates = prefixes + (parts if pattern.startswith("**/") else [])
        glob = pattern.removeprefix("**/")
        if any(fnmatch.fnmatchcase(c, glob) for c in candidates):
            result = not negate
    return result


def test_dockerignore_keeps_what_the_build_copies_and_drops_the_rest() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    copied = [
        source.rstrip("/")
        for stage in DOCKERFILE.stages
        for copy in stage.all("COPY")
        if "--from" not in copy.args
        for source in copy.args.split()[:-1]
        if not source.startswith("--")
    ]
    assert {"pyproject.toml", "README.md", "service", "model_repo"} <= set(copied)
    for source in copied:
        assert not _ignored(source, patterns), f"{source} is COPYed but .dockerignore drops it"
        assert (ROOT / source).exists(), f"{source} is COPYed but does not exist"
    for dropped in (
        ".venv/bin/python",
        ".git/HEAD",
        "model_repo/vit_small/1/model.onnx",
        "model_repo/vit_small/1/manifest.json",
        "service/__pycache__/cli.cpython-311.pyc",
        ".pytest_cache/v",
        ".mypy_cache/3.11",
        "tests/unit/test_errors.py",
    ):
        assert _ignored(dropped, patterns), f"{dropped} would be sent to the Docker daemon"
    assert not _ignored("model_repo/vit_small/config.yaml", patterns)
