"""``tessera slide``: offline on real slides with a shallow model, ``--server`` against a tiny HTTP
server started here (a test double for ``/v1/slides``), and the pure parts of ``--batch``."""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h5py
import numpy as np
import pytest

from service.cli.slide import add_slide_parser
from service.clients.slides import RESULT_ROUTES, ServerUnavailable, SlideClient
from service.errors import InvalidInput, NotFound, Overloaded, Unauthenticated
from service.serve.slides_bulk import collect_slides, plan_out_dirs
from service.slides import SlideOptions
from service.testing import make_synthetic_slide
from tests.helpers import free_port

from .conftest import CMU, TCGA

OUTPUTS = ("features.h5", "heatmap.png", "tissue_mask.png", "slide_embedding.npy", "report.json")
CLAM_ATTRS = (
    "patch_size",
    "patch_size_level0",
    "target_mpp",
    "level0_mpp",
    "level0_width",
    "level0_height",
    "model",
    "model_version",
    "weights",
)


def tessera(argv: list[str]) -> int:
    """``service.cli.main`` in miniature: the top-level ``--model-repo`` and the ``slide`` subcommand."""
    parser = argparse.ArgumentParser(prog="tessera")
    parser.add_argument("--model-repo", default="model_repo")
    add_slide_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("small") / "small.tiff"
    make_synthetic_slide(path, 2000, 1500, mpp=0.25, seed=7)
    return path


# -- offline -----------------------------------------------------------------------------------
def test_offline_cmu_writes_clam_features_and_every_output(
    small_repo: Path, slides_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmu"
    code = tessera(["--model-repo", str(small_repo), "slide", str(slides_dir / CMU), "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    with h5py.File(out / "features.h5") as h5:
        coords, features = h5["coords"][:], h5["features"][:]
        attrs = dict(h5.attrs)
    assert coords.dtype == np.int64 and coords.ndim == 2 and coords.shape[1] == 2
    assert features.dtype == np.float32 and features.shape == (coords.shape[0], 384)
    assert coords.shape[0] == report["tiles"] > 0 and np.isfinite(features).all()
    assert set(CLAM_ATTRS) <= set(attrs)
    assert attrs["model"] == "vit_small" and attrs["patch_size"] == 224 and attrs["target_mpp"] == 0.5
    assert attrs["level0_width"] == 2220 and attrs["level0_height"] == 2967
    assert abs(attrs["level0_mpp"] - 0.499) < 1e-3
    np.testing.assert_allclose(np.load(out / "slide_embedding.npy"), features.mean(axis=0), rtol=1e-4, atol=1e-5)
    # the one-paragraph summary on stdout, the progress bar on stderr
    summary = captured.out.strip().splitlines()[-1]
    assert f"{CMU}: {report['tiles']} tiles" in summary and "tiles/s" in summary and "vit_small" in summary
    assert all(name in summary for name in OUTPUTS)
    assert f"{report['tiles']}/{report['tiles']}" in captured.err
    print(f"offline CMU, shallow vit_small: {report['tiles']} tiles at {report['tiles_per_s']} tiles/s")


def test_tcga_without_resolution_exits_2_naming_slide_mpp(
    small_repo: Path, slides_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--model-repo", str(small_repo), "slide", str(slides_dir / TCGA), "-o", str(tmp_path / "tcga")]
    assert tessera(argv) == 2
    err = capsys.readouterr().err
    assert "slide_mpp" in err and "--slide-mpp" in err and TCGA in err
    assert "Traceback" not in err
    assert not (tmp_path / "tcga" / "features.h5").exists()

    assert tessera([*argv, "--slide-mpp", "0.25"]) == 0
    with h5py.File(tmp_path / "tcga" / "features.h5") as h5:
        assert h5.attrs["level0_mpp"] == 0.25 and h5.attrs["patch_size_level0"] == 448
        assert h5["features"].shape[0] > 0


def test_model_from_the_environment_and_options(
    small_repo: Path, small_slide: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TESSERA_SLIDE_MODEL", "swin_tiny")
    out = tmp_path / "swin"
    argv = ["--model-repo", str(small_repo), "slide", str(small_slide), "-o", str(out)]
    assert tessera([*argv, "--mpp", "1.0", "--tissue-threshold", "0", "--workers", "1"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["model"] == "swin_tiny" and report["embedding_dim"] == 768
    assert report["options"]["tissue_threshold"] == 0.0 and report["settings"]["workers"] == 1
    assert report["tiles"] == report["tiles_grid"] == 3 * 2  # 2000x1500 at 4x downsampling in 224-px tiles
    with h5py.File(out / "features.h5") as h5:
        assert h5.attrs["model"] == "swin_tiny" and h5["features"].shape == (6, 768)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--tile", "8"], "--tile"),
        (["--tile", "224", "--overlap", "224"], "overlap"),
        (["--mpp", "-1"], "--mpp"),
        (["--model", "no_such_model"], "no_such_model"),
        (["--workers", "0"], "--workers"),
    ],
)
def test_bad_options_exit_2_with_one_line(
    small_repo: Path,
    small_slide: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    expected: str,
) -> None:
    code = tessera(["--model-repo", str(small_repo), "slide", str(small_slide), "-o", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and err.startswith("tessera slide: error:") and "Traceback" not in err


def test_missing_slide_and_folder_without_batch_exit_2(
    small_repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--model-repo", str(small_repo), "slide"]
    assert tessera([*base, str(tmp_path / "nope.svs"), "-o", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert tessera([*base, str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    assert "--batch" in capsys.readouterr().err
    assert tessera([*base, str(tmp_path), "-o", str(tmp_path / "o"), "--batch", "--server", "http://x"]) == 2


# -- --batch without Ray: what it reads and where it writes ---------------------------------------
def test_collect_slides_from_a_folder_and_a_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "slides"
    folder.mkdir()
    for name in ("b.svs", "a.tiff", "c.NDPI", "notes.txt"):
        (folder / name).write_bytes(b"x")
    (folder / "sub.svs").mkdir()
    assert [p.name for p in collect_slides(folder)] == ["a.tiff", "b.svs", "c.NDPI"]

    manifest = tmp_path / "list.txt"
    manifest.write_text(f"# slides\n\nslides/b.svs\n  {folder / 'a.tiff'}  \n")
    assert collect_slides(manifest) == [folder / "b.svs", folder / "a.tiff"]

    manifest.write_text("slides/missing.svs\n")
    with pytest.raises(FileNotFoundError, match=r"list\.txt:1"):
        collect_slides(manifest)
    manifest.write_text("# nothing\n")
    with pytest.raises(InvalidInput):
        collect_slides(manifest)
    with pytest.raises(InvalidInput):
        collect_slides(tmp_path / "slides" / "sub.svs")  # an empty folder
    with pytest.raises(FileNotFoundError):
        collect_slides(tmp_path / "absent")


def test_out_dirs_are_named_by_stem_and_never_collide(tmp_path: Path) -> None:
    slides = [Path("a/x.svs"), Path("b/x.tiff"), Path("c/X.svs"), Path("y.svs")]
    assert [d.name for d in plan_out_dirs(slides, tmp_path)] == ["x", "x-2", "X-3", "y"]


# -- --server: SlideClient against a tiny HTTP server ---------------------------------------------
@dataclass
class _Job:
    id: str
    slide: str
    source: str
    params: dict[str, str]
    fields: dict[str, str]
    upload: bytes = b""
    polls: int = 0
    state: str = "queued"


@dataclass
class FakeSlideServer:
    """``/v1/slides`` in miniature: jobs advance one step per status poll; results are fixed bytes."""

    token: str | None = None
    tiles: int = 10
    fail_with: str | None = None
    busy_polls: int = 0
    jobs: dict[str, _Job] = field(default_factory=dict)
    results: dict[str, bytes] = field(default_factory=dict)
    url: str = ""

    def status(self, job: _Job) -> dict[str, Any]:
        done = min(self.tiles, max(0, job.polls - 1) * 4)
        if job.state != "cancelled":
            job.state = "queued" if job.polls <= 1 else "running" if done < self.tiles else "succeeded"
            if job.state == "succeeded" and self.fail_with:
                job.state = "failed"
        return {
            "id": job.id,
            "state": job.state,
            "tiles_total": self.tiles if job.polls > 1 else None,
            "tiles_done": done,
            "tiles_per_s": 20.0 if job.polls > 1 else None,
            "eta_s": (self.tiles - done) / 20.0 if job.state == "running" else None,
            "error": self.fail_with if job.state == "failed" else None,
        }


def _handler(server: FakeSlideServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header(
                "content-type", "application/octet-stream" if isinstance(body, bytes) else "application/json"
            )
            self.send_header("content-length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, kind: str, message: str, param: str | None = None, **headers: str) -> None:
            self._send(code, {"error": {"code": kind, "message": message, "param": param}}, headers)

        def _authorised(self) -> bool:
            if server.token and self.headers.get("authorization") != f"Bearer {server.token}":
                self._error(401, "unauthenticated", "a bearer token is required")
                return False
            return True

        def _job(self, job_id: str) -> _Job | None:
            job = server.jobs.get(job_id)
            if job is None:
                self._error(404, "not_found", f"no slide job {job_id!r}", "id")
            return job

        def do_POST(self) -> None:
            url = urlsplit(self.path)
            if url.path != "/v1/slides":
                return self._error(404, "not_found", "no route")
            if not self._authorised():
                return None
            params = {k: v[0] for k, v in parse_qs(url.query).items()}
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            ctype = self.headers.get("content-type", "")
            job_id = f"{len(server.jobs) + 1:032x}"
            if ctype.startswith("application/json"):
                payload = json.loads(body)
                fields = {k: str(v) for k, v in payload.items() if k != "path"}
                job = _Job(job_id, payload["path"], "path", params, fields)
            elif ctype.startswith("multipart/form-data"):
                message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    f"content-type: {ctype}\r\n\r\n".encode() + body
                )
                job = _Job(job_id, "", "upload", params, {})
                for part in message.iter_parts():
                    name = part.get_param("name", header="content-disposition")
                    if name == "slide":
                        job.slide, job.upload = part.get_filename(), part.get_payload(decode=True)
                    else:
                        job.fields[str(name)] = part.get_content()
            else:
                return self._error(400, "invalid_argument", "send JSON or multipart", "content-type")
            if params.get("mpp") and float(params["mpp"]) <= 0:
                return self._error(400, "invalid_argument", "mpp must be positive", "mpp")
            server.jobs[job_id] = job
            self._send(202, {"id": job_id, "state": "queued"})

        def do_GET(self) -> None:
            parts = urlsplit(self.path).path.strip("/").split("/")
            if not self._authorised():
                return
            if parts[:2] != ["v1", "slides"] or len(parts) not in (3, 4):
                return self._error(404, "not_found", "no route")
            job = self._job(parts[2])
            if job is None:
                return
            if len(parts) == 3:
                if server.busy_polls > 0:
                    server.busy_polls -= 1
                    return self._error(503, "overloaded", "busy", **{"Retry-After": "0"})
                job.polls += 1
                return self._send(200, server.status(job))
            name = {route: file for file, route in RESULT_ROUTES.items()}.get(parts[3])
            if name is None:
                return self._error(404, "not_found", f"no result {parts[3]!r}", "name")
            if job.state != "succeeded":
                return self._error(404, "not_found", f"job {job.id} has no results yet", "id")
            self._send(200, server.results[name])

        def do_DELETE(self) -> None:
            parts = urlsplit(self.path).path.strip("/").split("/")
            job = self._job(parts[-1]) if self._authorised() else None
            if job is not None:
                job.state = "cancelled"
                self._send(200, {"id": job.id, "state": "cancelled"})

    return Handler


@pytest.fixture
def fake_server() -> Iterator[FakeSlideServer]:
    state = FakeSlideServer()
    report = {
        "tiles": 10,
        "tiles_grid": 16,
        "tiles_background": 6,
        "tiles_per_s": 20.0,
        "timing_s": {"total": 0.5},
        "model": {"model": "vit_small", "model_version": "1", "weights": "untrained"},
        "grid": {"target_mpp": 0.5, "tile": 224},
        "warnings": [],
    }
    state.results = {name: f"<{name} bytes>".encode() * 1000 for name in RESULT_ROUTES}
    state.results["report.json"] = json.dumps(report).encode()
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), _handler(state))
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_client_uploads_polls_downloads_and_cancels(fake_server: FakeSlideServer, tmp_path: Path) -> None:
    fake_server.token = "s3cret"
    slide = tmp_path / "case 1.svs"
    slide.write_bytes(bytes(range(256)) * 4000)
    options = SlideOptions(mpp=0.5, tile=256, edge="drop")
    with SlideClient(fake_server.url + "/", token="s3cret") as client:
        answer = client.submit(upload_file=slide, options=options)
        job = fake_server.jobs[answer["id"]]
        assert answer["state"] == "queued" and job.source == "upload"
        assert job.slide == "case 1.svs" and job.upload == slide.read_bytes()
        # only the options that were set: documented ones as query parameters, edge as a form field
        assert job.params == {"mpp": "0.5", "tile": "256"} and job.fields == {"edge": "drop"}

        seen: list[dict[str, Any]] = []
        final = client.wait(answer["id"], seen.append, poll_s=0.01)
        assert final["state"] == "succeeded" and seen[0]["state"] == "queued"
        assert [s["tiles_done"] for s in seen] == sorted(s["tiles_done"] for s in seen)
        assert seen[-1]["tiles_done"] == seen[-1]["tiles_total"] == 10

        files = client.download(answer["id"], tmp_path / "out")
        assert [f.name for f in files] == list(RESULT_ROUTES)
        for f in files:
            assert f.read_bytes() == fake_server.results[f.name]
        assert not list((tmp_path / "out").glob("*.part"))

        by_path = client.submit(path="cases/a.svs", options={"slide_mpp": 0.25, "model": None})
        assert fake_server.jobs[by_path["id"]].source == "path"
        assert fake_server.jobs[by_path["id"]].params == {"slide_mpp": "0.25"}
        assert client.cancel(by_path["id"])["state"] == "cancelled"
        assert client.status(by_path["id"])["state"] == "cancelled"


def test_client_raises_the_servers_errors(fake_server: FakeSlideServer, tmp_path: Path) -> None:
    with SlideClient(fake_server.url) as client:
        with pytest.raises(NotFound) as err:
            client.status("0" * 32)
        assert err.value.message.startswith("no slide job") and err.value.param == "id"
        assert "HTTP 404" in err.value.message
        with pytest.raises(InvalidInput, match="mpp must be positive") as bad:
            client.submit(path="a.svs", options={"mpp": -1})
        assert bad.value.param == "mpp"
        with pytest.raises(InvalidInput):
            client.submit()
        with pytest.raises(InvalidInput):
            client.submit(path="a.svs", upload_file=tmp_path / "a.svs")
        with pytest.raises(FileNotFoundError):
            client.submit(upload_file=tmp_path / "absent.svs")

        job_id = client.submit(path="a.svs")["id"]
        with pytest.raises(NotFound, match="no results yet"):
            client.download(job_id, tmp_path / "early")
        assert not list((tmp_path / "early").iterdir())

        fake_server.busy_polls = 2
        with pytest.raises(Overloaded) as busy:
            client.status(job_id)
        assert busy.value.retry_after_s == 0
        assert client.wait(job_id, poll_s=0.01)["state"] == "succeeded"  # polls through the second 503

    fake_server.token = "s3cret"
    with SlideClient(fake_server.url, token="wrong") as client, pytest.raises(Unauthenticated):
        client.status(job_id)
    with SlideClient(f"http://127.0.0.1:{free_port()}", timeout_s=2) as client, pytest.raises(ServerUnavailable):
        client.status(job_id)


def test_cli_with_server_submits_shows_progress_and_downloads(
    fake_server: FakeSlideServer, small_slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["slide", str(small_slide), "-o", str(out), "--server", fake_server.url, "--poll", "0.01"]
    assert tessera([*argv, "--mpp", "1.0"]) == 0
    captured = capsys.readouterr()
    job = next(iter(fake_server.jobs.values()))
    assert job.source == "upload" and job.slide == small_slide.name and job.params == {"mpp": "1.0"}
    for name in OUTPUTS:
        assert (out / name).read_bytes() == fake_server.results[name]
    assert f"by job {job.id}" in captured.out and "10 tiles" in captured.out and "10/10" in captured.err

    assert tessera([*argv[:-2], "--server-path", "--poll", "0.01"]) == 0
    assert list(fake_server.jobs.values())[-1].slide == str(small_slide)

    fake_server.fail_with = "the slide could not be read"
    assert tessera(argv) == 1
    assert "failed: the slide could not be read" in capsys.readouterr().err

    fake_server.token = "s3cret"
    assert tessera(argv) == 2
    assert "bearer token" in capsys.readouterr().err
    assert tessera([*argv, "--token", "s3cret"]) == 1  # authorised: the job runs (and fails, as set above)
    assert tessera([*argv[:-2], "--poll", "0"]) == 2
    assert "--poll" in capsys.readouterr().err
    assert tessera(["slide", str(tmp_path / "absent.svs"), "-o", str(out), "--server", fake_server.url]) == 2
    assert "--server-path" in capsys.readouterr().err
