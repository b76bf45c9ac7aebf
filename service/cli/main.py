"""The ``tessera`` command: build, serve, predict, route, slide, bench."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _settings(args: argparse.Namespace, **extra: Any) -> Any:
    from service.settings import ServerSettings

    return ServerSettings.from_env(model_repo=args.model_repo, **extra)


def cmd_build(args: argparse.Namespace) -> int:
    from service.export import build_repository
    from service.models import ModelRepository

    repo = ModelRepository(args.model_repo)
    models = [args.model] if args.model else None
    started = time.monotonic()
    phase_started: dict[str, float] = {}

    def progress(model: str, phase: str, eta_s: float | None = None) -> None:
        now = time.monotonic()
        since = now - phase_started.setdefault(model, now)
        if args.progress == "json":  # for a program that follows the build (tessera serve --build)
            line = json.dumps({"model": model, "phase": phase, "elapsed_s": round(since, 1), "eta_s": eta_s})
            print(line, file=sys.stderr, flush=True)
            return
        eta = f", ~{eta_s:.0f}s left" if eta_s is not None else ""
        print(f"[{now - started:6.1f}s] {model:<14} {phase}  (model {since:.0f}s{eta})", file=sys.stderr, flush=True)

    rows = build_repository(repo, models, fp16=args.fp16, tensorrt=args.tensorrt, force=args.force, progress=progress)
    print(f"{'model':<16} {'artifact':<10} {'status':<11} {'parity max|err|':>16} {'seconds':>8}  note")
    for row in rows:
        parity = f"{row.parity_max_abs:.2e}" if row.parity_max_abs is not None else "-"
        print(f"{row.model:<16} {row.artifact:<10} {row.status:<11} {parity:>16} {row.seconds:>8.1f}  {row.note}")
    return 1 if any(r.status == "failed" for r in rows) else 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from service.models import ModelRepository
    from service.runtime.doctor import diagnose

    settings = _settings(args)
    repo_root = settings.resolved_repo()
    repo = ModelRepository(repo_root) if repo_root.is_dir() else None
    report = diagnose(repo, runtime=settings.runtime, providers=settings.providers)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.render())
    return 0 if report.ok else 1


def cmd_calibrate(args: argparse.Namespace) -> int:
    from service.models import ModelRepository
    from service.routing.factory import CALIBRATION_FILE
    from service.routing.host_calibration import DEFAULT_CALIBRATION_SIZES, calibrate_repository

    repo = ModelRepository(args.model_repo)
    if args.if_missing and (repo.root / CALIBRATION_FILE).exists():
        print(f"calibration exists: {repo.root / CALIBRATION_FILE} (use without --if-missing to redo it)")
        return 0
    sizes = args.sizes or list(DEFAULT_CALIBRATION_SIZES)
    calibration = calibrate_repository(
        repo,
        models=[args.model] if args.model else None,
        sizes=sizes,
        repeats=args.repeats,
        progress=(lambda line: print(line, flush=True)) if args.verbose else None,
    )
    print(calibration.report())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from service.serve.runner import run_service

    settings = _settings(
        args,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        front_end=args.front_end,
        topology=args.topology,
        model_control_mode=args.model_control_mode,
        **({"build_missing": True} if args.build else {}),
    )
    if args.print_config:
        from service.serve.config import serve_config

        print(json.dumps(serve_config(settings), indent=2))
        return 0
    return run_service(settings, address=args.address, announce=lambda line: print(line, flush=True))


def _local_core(model_repo: str) -> Any:
    from service.api.serving import LocalBackboneClient, ServingCore
    from service.models import ModelRepository
    from service.routing.factory import make_router
    from service.runtime import load_backend

    repo = ModelRepository(model_repo)
    backends = {name: load_backend(repo, name) for name in repo.names()}
    return ServingCore(repo, make_router(repo), LocalBackboneClient(backends))


def cmd_predict(args: argparse.Namespace) -> int:
    import asyncio

    import httpx

    data = Path(args.image).read_bytes()
    ctype = _guess_type(args.image)
    if args.server:
        params = {"output": args.output}
        if args.model:
            params["model"] = args.model
        response = httpx.post(
            f"{args.server.rstrip('/')}/v1/predict",
            content=data,
            params=params,
            headers={"content-type": ctype},
            timeout=120,
        )
        print(json.dumps(response.json(), indent=2))
        return 0 if response.status_code == 200 else 1
    from service.api.protocol import PredictOptions
    from service.errors import TesseraError

    core = _local_core(args.model_repo)
    try:
        answer = asyncio.run(core.predict(data, ctype, PredictOptions(model=args.model, output=args.output)))
    except TesseraError as exc:
        print(json.dumps({"error": exc.to_dict()}, indent=2), file=sys.stderr)
        return 2
    print(answer.model_dump_json(indent=2))
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    from service.models import ModelRepository
    from service.routing.factory import make_router

    repo = ModelRepository(args.model_repo)
    decision = make_router(repo).decide(args.width, args.height, args.model)
    if args.json:
        print(decision.model_dump_json(indent=2))
        return 0
    print(
        f"route: {decision.model} ({decision.reason}) at {decision.input_size[1]}x{decision.input_size[0]}, "
        f"fit={decision.fit}: {decision.explanation}"
    )
    print(
        f"{'candidate':<16} {'fits':<5} {'input':>11} {'tokens':>8} {'GMACs':>8} {'attn%':>6} {'pred ms':>9}"
        f" {'pred MB':>9}"
    )
    for c in decision.candidates:
        size = f"{c.input_size[1]}x{c.input_size[0]}"
        ms = f"{c.predicted_latency_ms:.1f}" if c.predicted_latency_ms is not None else "-"
        mb = f"{c.predicted_peak_bytes / 2**20:.0f}" if c.predicted_peak_bytes is not None else "-"
        print(
            f"{c.model:<16} {'yes' if c.fits else 'no':<5} {size:>11} {c.tokens:>8} {c.gmacs:>8.2f} "
            f"{c.attention_fraction * 100:>5.1f}% {ms:>9} {mb:>9}"
        )
    return 0


def _guess_type(path: str) -> str:
    suffix = Path(path).suffix.lower()
    return {
        ".jpg": "image/jpeg",
        ".jpeg": "image/jpeg",
        ".png": "image/png",
        ".tif": "image/tiff",
        ".tiff": "image/tiff",
        ".webp": "image/webp",
    }.get(suffix, "application/octet-stream")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tessera", description=__doc__)
    parser.add_argument(
        "--model-repo", default=None, help="model repository (default: $TESSERA_MODEL_REPO or ./model_repo)"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="export and check what config.yaml asks for")
    p.add_argument("--model")
    p.add_argument("--fp16", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--tensorrt", action="store_true", default=None)
    p.add_argument("--force", action="store_true", help="rebuild even when up to date")
    p.add_argument(
        "--progress", choices=["text", "json"], default="text", help="progress lines on stderr: for people, or JSON"
    )
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("doctor", help="what this host can run (runtimes, providers, GPUs, models) and why not")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("calibrate", help="measure the built models on this host; fit the router's latency model")
    p.add_argument("--model")
    p.add_argument("--sizes", type=int, nargs="+", help="square sides to measure")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--if-missing", action="store_true", help="do nothing when a calibration exists")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("serve", help="start the service (Ray embedded unless --address)")
    p.add_argument("--address", default=None, help="existing Ray cluster address")
    p.add_argument("--host", default=None)
    p.add_argument("--http-port", type=int, default=None)
    p.add_argument("--grpc-port", type=int, default=None)
    p.add_argument("--metrics-port", type=int, default=None)
    p.add_argument(
        "--front-end",
        choices=["auto", "ray", "haproxy", "replica"],
        default=None,
        help="what listens on the ports: the ingress replicas' own servers (replica: no proxy at all, "
        "the most requests/s on one host), Ray Serve's proxies (ray), or HAProxy in front of the ingress "
        "replicas (haproxy). auto (default): replica on the Ray tessera serve starts, ray with --address",
    )
    p.add_argument(
        "--topology",
        choices=["auto", "split", "colocated"],
        default=None,
        help="where backbones run: inside every ingress replica, with no hop between processes "
        "(colocated: a fifth more images/s here) or a Ray Serve deployment per model (split: each scales "
        "and crashes on its own). auto (default): colocated on the Ray tessera serve starts on a node with "
        "at most one GPU, split with --address or several GPUs",
    )
    p.add_argument(
        "--model-control-mode",
        choices=["none", "explicit"],
        default=None,
        help="explicit: allow Triton's repository load/unload requests (default: none, refused with 403)",
    )
    p.add_argument(
        "--build",
        action="store_true",
        help="build the models that are not built while serving: ready when the first is, the others join",
    )
    p.add_argument("--print-config", action="store_true", help="print the Serve config (KubeRay) and exit")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("predict", help="one prediction, locally or against --server")
    p.add_argument("image")
    p.add_argument("--server", default=None, help="e.g. http://127.0.0.1:8000")
    p.add_argument("--model", default=None)
    p.add_argument("--output", default="embedding", choices=["embedding", "logits", "both"])
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("route", help="the routing decision for WIDTH x HEIGHT")
    p.add_argument("width", type=int)
    p.add_argument("height", type=int)
    p.add_argument("--model", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_route)

    from service.cli.slide import add_slide_parser

    add_slide_parser(sub)

    from service.bench.command import add_bench_parser
    from service.cli.loadtest import add_loadtest_parser

    add_bench_parser(sub)
    add_loadtest_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from service.errors import TesseraError

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if not args.model_repo:
            from service.settings import ServerSettings

            args.model_repo = ServerSettings.from_env().model_repo  # $TESSERA_MODEL_REPO or ./model_repo
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except (FileNotFoundError, ValueError, TesseraError) as exc:
        print(f"tessera: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
