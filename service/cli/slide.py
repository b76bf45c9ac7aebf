"""``tessera slide``: embed a slide offline, as a job on a server (``--server``), or many (``--batch``).

``add_slide_parser(subparsers)`` registers the subcommand on the ``tessera`` parser; its handler
reads ``args.model_repo`` (the top-level ``--model-repo``). Exit status: 0 done, 1 a slide or a
job failed (or was cancelled), 2 a usage problem or a slide that cannot be read as asked (a
missing resolution names ``--slide-mpp``), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from service.errors import TesseraError
from service.settings import ProcessSettings, ServerSettings, load
from service.slides.pipeline import PipelineSettings, SlideOptions

__all__ = ["DEFAULT_SLIDE_MODEL", "add_slide_parser", "cmd_slide"]

DEFAULT_SLIDE_MODEL = "vit_small"
#: environment: the default tile encoder, and the bearer token for ``--server``
MODEL_ENV = "TESSERA_SLIDE_MODEL"
TOKEN_ENV = "TESSERA_API_TOKEN"
#: SlideOptions field → the flag that sets it (for error messages)
_FLAGS = {
    "mpp": "--mpp",
    "slide_mpp": "--slide-mpp",
    "tile": "--tile",
    "overlap": "--overlap",
    "model": "--model",
    "tissue_threshold": "--tissue-threshold",
    "tissue_rule": "--tissue-rule",
    "export": "--export",
    "workers": "--workers",
}


class _UsageError(Exception):
    """A command-line mistake: printed as one line, exit status 2."""


def add_slide_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``tessera slide`` on ``subparsers`` (from ``ArgumentParser.add_subparsers``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "slide",
        help="tile and embed a whole-slide image (offline, on a server, or a batch on Ray)",
        description=(
            "Tile a whole-slide image at a target resolution, embed the tissue tiles with a tile encoder and "
            "write features.h5 (CLAM layout), heatmap.png, tissue_mask.png, slide_embedding.npy and report.json "
            "into DIR. With --server the slide is submitted as a job and the results are downloaded into DIR; "
            "with --batch SLIDE is a folder of slides (or a file listing one path a line), run on Ray Data into "
            "DIR/<slide name>/ with DIR/bulk_report.json."
        ),
    )
    p.add_argument("slide", metavar="SLIDE", help="the slide file (with --batch: a folder or a manifest file)")
    p.add_argument("-o", "--out", dest="out_dir", metavar="DIR", required=True, help="output folder")
    p.add_argument("--mpp", type=float, default=None, help="target resolution in µm per pixel (default 0.5)")
    p.add_argument(
        "--slide-mpp",
        type=float,
        default=None,
        help="the slide's level-0 µm per pixel; overrides its metadata (which is still recorded)",
    )
    p.add_argument("--tile", type=int, default=None, help="tile side in target pixels (default: the model's input)")
    p.add_argument("--overlap", type=int, default=None, help="overlap of neighbouring tiles in pixels (default 0)")
    p.add_argument(
        "--model", default=None, help=f"tile encoder (default: ${MODEL_ENV} or {DEFAULT_SLIDE_MODEL}; server: its own)"
    )
    p.add_argument(
        "--tissue-threshold",
        type=float,
        default=None,
        help="minimum tissue fraction of a tile for it to be embedded; 0 keeps every tile (default 0.25)",
    )
    p.add_argument(
        "--tissue-rule",
        choices=("fraction", "trident"),
        default=None,
        help="fraction (default): at least --tissue-threshold tissue; trident: TRIDENT's min_tissue_proportion rule",
    )
    p.add_argument(
        "--coords",
        default=None,
        metavar="H5",
        help=(
            "embed the grid of a TRIDENT patches file or a CLAM coordinates file instead of our own "
            "(with --server: uploaded beside the slide, or a path in the server's slide root with --server-path)"
        ),
    )
    p.add_argument(
        "--export",
        default=None,
        metavar="LAYOUTS",
        help="also write these layouts beside features.h5: trident, clam or trident,clam",
    )
    p.add_argument("--server", default=None, metavar="URL", help="submit to a Tessera server, e.g. http://host:8000")
    p.add_argument(
        "--server-path",
        action="store_true",
        help="with --server: SLIDE is a path inside the server's slide root; send the path instead of uploading",
    )
    p.add_argument("--token", default=None, help=f"with --server: bearer token (default: ${TOKEN_ENV})")
    p.add_argument("--poll", type=float, default=1.0, metavar="SECONDS", help="with --server: status poll interval")
    p.add_argument("--batch", action="store_true", help="SLIDE is a folder of slides or a manifest: run them all")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="with --batch: slides processed at once (default: min(slides, CPUs)); otherwise tile-reader threads",
    )
    p.add_argument("--address", default=None, help="with --batch: a Ray cluster to run on (default: embedded Ray)")
    p.set_defaults(func=cmd_slide)
    return p


def cmd_slide(args: argparse.Namespace) -> int:
    """The handler: dispatch to offline, server or batch mode and turn known failures into exit codes."""
    try:
        if args.server and args.batch:
            raise _UsageError("--batch runs on Ray here; with --server submit slides one at a time")
        if args.server:
            return _run_on_server(args)
        if args.batch:
            return _run_batch(args)
        return _run_offline(args)
    except _UsageError as exc:
        _fail(str(exc))
    except ValidationError as exc:
        _fail(_describe_validation(exc))
    except TesseraError as exc:
        message = exc.message
        if exc.param == "slide_mpp":
            message += "; on the command line: --slide-mpp MICRONS_PER_PIXEL"
        _fail(message)
    except (FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        _fail(str(exc))
    return 2


# -- modes -------------------------------------------------------------------------------------
def _run_offline(args: argparse.Namespace) -> int:
    from service.models import ModelRepository
    from service.runtime import load_backend
    from service.settings import ServerSettings
    from service.slides.encoder import BackendEncoder
    from service.slides.offline import run_slide

    slide = Path(args.slide)
    if slide.is_dir():
        raise _UsageError(f"{slide} is a folder: add --batch to embed every slide in it")
    if not slide.is_file():
        raise _UsageError(f"slide {slide} does not exist")
    name = _model_name(args)
    options = _options(args, name)
    settings = PipelineSettings(workers=args.workers) if args.workers is not None else None
    repo = ModelRepository(_model_repo(args))
    config = repo.config(name)
    # one process owns the cores here: TESSERA_ORT_SPIN=1 lets ORT's idle threads spin (docs/architecture.md)
    spin = ServerSettings.from_env().ort_spin
    encoder = BackendEncoder(load_backend(repo, name, spin=spin), config)
    out_dir = Path(args.out_dir)
    report = run_slide(
        slide, out_dir, encoder, options, progress=True, settings=settings, coords_file=getattr(args, "coords", None)
    )
    print(_summary(slide.name, report, out_dir))
    return 0


def _run_on_server(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from service.clients.slides import SlideClient

    slide = Path(args.slide)
    if not args.server_path and not slide.is_file():
        raise _UsageError(
            f"slide {slide} does not exist here (to name a slide in the server's slide root, add --server-path)"
        )
    if not args.poll > 0:
        raise _UsageError(f"--poll must be a positive number of seconds, got {args.poll}")
    options = _options(args, args.model)
    out_dir = Path(args.out_dir)
    token = args.token or load(ProcessSettings).api_token or None
    with SlideClient(args.server, token=token) as client:
        coords = getattr(args, "coords", None)
        if args.server_path:
            answer = client.submit(path=args.slide, options=options, coords_path=coords)
        else:
            print(f"uploading {slide.name} ({slide.stat().st_size / 2**20:.1f} MiB) to {client.base_url}", flush=True)
            answer = client.submit(upload_file=slide, options=options, coords_file=coords)
        job_id = str(answer["id"])
        print(f"job {job_id}: {answer.get('state', 'queued')}", flush=True)
        bar = tqdm(total=None, unit="tile", desc=slide.name, dynamic_ncols=True)
        try:
            final = client.wait(job_id, _bar_updater(bar), poll_s=args.poll)
        except KeyboardInterrupt:
            print(f"interrupted: cancelling job {job_id}", file=sys.stderr, flush=True)
            try:
                client.cancel(job_id)
            except TesseraError as exc:
                print(f"tessera slide: could not cancel job {job_id}: {exc.message}", file=sys.stderr)
            return 130
        finally:
            bar.close()
        state = final.get("state")
        if state != "succeeded":
            reason = final.get("error") or "no reason given"
            print(f"tessera slide: job {job_id} {state}: {reason}", file=sys.stderr)
            return 1
        files = client.download(job_id, out_dir)
    report = _read_report(out_dir)
    print(_summary(slide.name, report, out_dir, files=[f.name for f in files], job_id=job_id))
    return 0


def _run_batch(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from service.serve.slides_bulk import BULK_REPORT_FILE, collect_slides, run_bulk

    slides = collect_slides(args.slide)
    name = _model_name(args)
    options = _options(args, name)
    if args.workers is not None and args.workers < 1:
        raise _UsageError(f"--workers must be at least 1, got {args.workers}")
    out_dir = Path(args.out_dir)
    print(f"{len(slides)} slide(s) from {args.slide} with {name}, on Ray Data", flush=True)
    bar = tqdm(total=len(slides), unit="slide", desc="slides", dynamic_ncols=True)

    def finished(row: dict[str, Any]) -> None:
        shown = Path(row["path"]).name
        if row["ok"]:
            bar.write(f"  {shown}: {row['tiles']} tiles, {row['tiles_per_s']:.1f} tiles/s, {row['seconds']:.1f} s")
        else:
            bar.write(f"  {shown}: FAILED: {row['error']}")
        bar.update(1)

    try:
        rows = run_bulk(
            slides,
            out_dir,
            _model_repo(args),
            name,
            options,
            concurrency=args.workers,
            address=args.address,
            on_result=finished,
        )
    finally:
        bar.close()
    failed = [r for r in rows if not r["ok"]]
    tiles = sum(r["tiles"] for r in rows)
    print(
        f"{len(rows) - len(failed)} of {len(rows)} slide(s) embedded ({tiles} tiles) into {out_dir}/<slide>/; "
        f"summary in {out_dir / BULK_REPORT_FILE}" + (f"; {len(failed)} failed" if failed else "") + "."
    )
    return 1 if failed else 0


# -- helpers -----------------------------------------------------------------------------------
def _model_repo(args: argparse.Namespace) -> str:
    return str(getattr(args, "model_repo", None) or ServerSettings.from_env().model_repo)


def _model_name(args: argparse.Namespace) -> str:
    return str(args.model or ServerSettings.from_env().slide_model)


def _options(args: argparse.Namespace, model: str | None) -> SlideOptions:
    """The options the user gave (unset ones keep SlideOptions' defaults, or the server's)."""
    given = {
        "mpp": args.mpp,
        "slide_mpp": args.slide_mpp,
        "tile": args.tile,
        "overlap": args.overlap,
        "model": model,
        "tissue_threshold": args.tissue_threshold,
        "tissue_rule": args.tissue_rule,
        "export": tuple(part.strip() for part in args.export.split(",") if part.strip()) if args.export else None,
    }
    return SlideOptions(**{k: v for k, v in given.items() if v is not None})


def _describe_validation(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error.get("loc") else ""
        flag = _FLAGS.get(field, field)
        parts.append(f"{flag}: {error['msg']}" if flag else str(error["msg"]))
    return "invalid option " + "; ".join(parts)


def _fail(message: str) -> None:
    print(f"tessera slide: error: {message}", file=sys.stderr)


def _bar_updater(bar: Any) -> Callable[[dict[str, Any]], None]:
    """A ``SlideClient.wait`` callback that moves a tqdm bar from polled statuses."""
    started = time.monotonic()

    def update(status: dict[str, Any]) -> None:
        total, done = status.get("tiles_total"), int(status.get("tiles_done") or 0)
        if total is not None and bar.total != total:
            bar.total = int(total)
        bar.update(done - bar.n)
        postfix = {"state": status.get("state")}
        if status.get("eta_s") is not None:
            postfix["eta"] = f"{float(status['eta_s']):.0f}s"
        if status.get("tiles_per_s"):
            postfix["server tiles/s"] = f"{float(status['tiles_per_s']):.1f}"
        postfix["elapsed"] = f"{time.monotonic() - started:.0f}s"
        bar.set_postfix(postfix, refresh=True)

    return update


def _read_report(out_dir: Path) -> dict[str, Any]:
    import json

    from service.slides.store import REPORT_FILE

    try:
        report = json.loads((out_dir / REPORT_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def _summary(
    slide: str, report: dict[str, Any], out_dir: Path, *, files: list[str] | None = None, job_id: str | None = None
) -> str:
    """One paragraph: tiles, rate, resolution, model and the files written."""
    model = report.get("model") or {}
    grid = report.get("grid") or {}
    timing = report.get("timing_s") or {}
    outputs = files if files is not None else list(report.get("outputs") or [])
    tiles = report.get("tiles", "?")
    parts = [f"{slide}: {tiles} tiles"]
    if "tiles_grid" in report:
        parts.append(f" of {report['tiles_grid']} in the grid ({report.get('tiles_background', 0)} background)")
    if grid:
        parts.append(f" at {grid.get('target_mpp')} µm/px in {grid.get('tile')}-px tiles")
    if model:
        weights = " (untrained weights)" if model.get("weights") == "untrained" else ""
        parts.append(f", embedded with {model.get('model')} v{model.get('model_version')}{weights}")
    if job_id:
        parts.append(f" by job {job_id}")
    if "tiles_per_s" in report:
        total = timing.get("total")
        parts.append(f" at {float(report['tiles_per_s']):.1f} tiles/s")
        if total is not None:
            parts.append(f" ({float(total):.1f} s in all)")
    if report.get("tiles_resumed"):
        parts.append(f"; {report['tiles_resumed']} tiles were resumed from an earlier run")
    parts.append(f"; wrote {', '.join(outputs)} to {out_dir}.")
    text = "".join(parts)
    for warning in report.get("warnings") or []:
        text += f" Warning: {warning}."
    return text
