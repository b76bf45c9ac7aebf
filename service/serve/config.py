"""The Serve config (``serveConfigV2`` for KubeRay) generated from the same settings and builder."""

from __future__ import annotations

from typing import Any

from service.models import ModelRepository
from service.settings import ServerSettings

__all__ = [
    "APP_NAME",
    "INGRESS",
    "backbone_deployment_name",
    "deployment_options",
    "placement_shortfall",
    "resolve_layout",
    "serve_config",
    "states_in_ingress",
]

APP_NAME = "tessera"
#: Ray Serve writes a line per request (and per handle call) to the replica's log: the request path
#: replicas leave that to Tessera's own JSON access log (``tessera.access``), one line per request.
_NO_RAY_ACCESS_LOG = {"enable_access_log": False}
#: The ingress deployment's name (a colocated ingress also runs the slide jobs' batches).
INGRESS = "Ingress"
#: A light deployment: the ingress and the slide-job manager do no inference themselves.
_LIGHT = {"num_cpus": 0.1}


def backbone_deployment_name(model: str) -> str:
    return f"backbone_{model}"


def resolve_layout(settings: ServerSettings, *, embedded: bool, gpus: float | None = None) -> ServerSettings:
    """``settings`` with an ``auto`` front end and topology made concrete (what others set is kept).

    On the Ray that ``tessera serve`` starts itself (``embedded``), the fastest set-up on one host:
    the ingress replicas' own servers on the ports (``replica``) and the models inside them
    (``colocated``), unless the node has several GPUs, where a deployment per model spreads the
    models over them. ``gpus`` is the node's GPUs as Ray counts them; None (Ray not started yet)
    leaves an ``auto`` topology as it is. On a cluster (``--address``, KubeRay): the cluster's
    proxies and a deployment per model, which scale, and crash, on their own."""
    update: dict[str, str] = {}
    if settings.front_end == "auto":
        update["front_end"] = "replica" if embedded else "ray"
    if settings.topology == "auto" and (gpus is not None or not embedded):
        update["topology"] = "colocated" if embedded and gpus is not None and gpus <= 1 else "split"
    return settings.model_copy(update=update) if update else settings


def states_in_ingress(settings: ServerSettings) -> bool:
    """Whether the ingress replica keeps the models' states itself (``ModelStateBook``) instead of a
    ``ModelStates`` deployment: when it is the only process that holds models and decodes requests
    (topology ``colocated``, one ingress replica). One Ray process fewer, and the polls (the serving
    core's twice a second, each model's report every second) are calls within it: 1.035x ViT-S
    images/s on the median of four interleaved pairs on the 2-core host (docs/architecture.md,
    "Topology"). Several colocated replicas share the deployment: scale them with
    ``ingress_replicas``, not by editing ``num_replicas`` in a generated Serve config, or each
    replica would keep a book of its own."""
    return _resolved(settings).topology == "colocated" and settings.ingress_replicas == 1


def _resolved(settings: ServerSettings) -> ServerSettings:
    """``settings``, refused while their topology is still ``auto``."""
    if settings.topology == "auto":
        raise ValueError("topology 'auto': resolve_layout makes it concrete before the deployments are built")
    return settings


def deployment_options(settings: ServerSettings, repo: ModelRepository) -> dict[str, dict[str, Any]]:
    """Ray Serve's options for every deployment, by deployment name: the one source of what
    ``tessera serve`` deploys (``build_app``) and what KubeRay's ``serveConfigV2`` declares."""
    settings = _resolved(settings)
    configs = repo.configs()
    ingress_resources: dict[str, float] = dict(_LIGHT)
    if settings.topology == "colocated":  # the ingress replica runs every model: it asks for their resources
        ingress_resources = {
            "num_cpus": max(_LIGHT["num_cpus"], sum(cfg.batching.num_cpus for cfg in configs.values())),
            "num_gpus": max((cfg.batching.num_gpus for cfg in configs.values()), default=0.0),
        }
    options: dict[str, dict[str, Any]] = {
        INGRESS: {
            "num_replicas": settings.ingress_replicas,
            "max_ongoing_requests": settings.ingress_max_ongoing_requests,
            "max_queued_requests": settings.ingress_max_queued_requests,
            "ray_actor_options": ingress_resources,
            "logging_config": dict(_NO_RAY_ACCESS_LOG),
        }
    }
    for name, cfg in configs.items() if settings.topology == "split" else ():
        b = cfg.batching
        options[backbone_deployment_name(name)] = {
            "num_replicas": b.num_replicas,
            "max_ongoing_requests": b.max_ongoing_requests,
            "max_queued_requests": b.max_queued_requests,
            "ray_actor_options": {"num_cpus": b.num_cpus, "num_gpus": b.num_gpus},
            "logging_config": dict(_NO_RAY_ACCESS_LOG),
        }
    options["SlideJobs"] = {"num_replicas": 1, "ray_actor_options": dict(_LIGHT)}
    if states_in_ingress(settings):
        return options
    # Every replica polls it each second: no CPU reserved, no access log line per poll.
    options["ModelStates"] = {
        "num_replicas": 1,
        "ray_actor_options": {"num_cpus": 0},
        "logging_config": dict(_NO_RAY_ACCESS_LOG),
    }
    return options


#: What Ray Serve reserves for a replica whose ``ray_actor_options`` name no CPUs.
_RAY_DEFAULT_CPUS = 1.0


def _replicas_at_start(opts: dict[str, Any]) -> int:
    """How many replicas a deployment starts with: ``num_replicas``, or autoscaling's minimum."""
    replicas = opts.get("num_replicas", 1)
    if isinstance(replicas, int):
        return replicas
    return int((opts.get("autoscaling_config") or {}).get("min_replicas", 1))


def _gpus_fit(requests: list[float], gpus: float) -> bool:
    """Whether one node's ``gpus`` hold every replica's GPU request as Ray places them: a whole
    number takes that many whole GPUs, a fraction must fit inside one GPU (first fit, largest
    first: 3 x 0.6 do not fit on 2 GPUs although 1.8 <= 2)."""
    free = [1.0] * int(gpus + 1e-9)
    for each in sorted(requests, reverse=True):
        if each >= 1.0:
            whole = [i for i, f in enumerate(free) if f >= 1.0 - 1e-9][: round(each)]
            if len(whole) < round(each):
                return False
            for i in whole:
                free[i] = 0.0
        else:
            slot = next((i for i, f in enumerate(free) if f >= each - 1e-9), None)
            if slot is None:
                return False
            free[slot] -= each
    return True


def placement_shortfall(options: dict[str, dict[str, Any]], cpus: float, gpus: float) -> str | None:
    """What the deployments in ``options`` ask for that one node with ``cpus`` and ``gpus`` cannot
    give (as ``tessera serve`` starts Ray), or None when every replica they start with fits. Ray
    leaves a replica it cannot place pending without a word, and the service would run with fewer
    replicas than configured: a colocated ingress asks for every model's CPUs, so
    ``TESSERA_INGRESS_REPLICAS=2`` on a 2-core host started one replica and said nothing."""
    need = {"CPU": 0.0, "GPU": 0.0}
    parts: dict[str, list[str]] = {"CPU": [], "GPU": []}
    gpu_requests: list[float] = []
    for name, opts in options.items():
        replicas = _replicas_at_start(opts)
        actor = opts.get("ray_actor_options", {})
        asked = {"CPU": float(actor.get("num_cpus", _RAY_DEFAULT_CPUS)), "GPU": float(actor.get("num_gpus", 0.0))}
        gpu_requests += [asked["GPU"]] * replicas if asked["GPU"] > 0 else []
        for key, each in asked.items():
            if each > 0:
                need[key] += replicas * each
                parts[key].append(f"{name} {replicas} x {each:g}")
    short = []
    if need["CPU"] > cpus + 1e-9:
        short.append(f"{need['CPU']:g} CPUs ({' + '.join(parts['CPU'])}) but Ray has {cpus:g}")
    if not _gpus_fit(gpu_requests, gpus):
        packed = " (a fraction of a GPU must fit inside one)" if need["GPU"] <= gpus + 1e-9 else ""
        short.append(f"{need['GPU']:g} GPUs ({' + '.join(parts['GPU'])}) but Ray has {gpus:g}{packed}")
    return "; and ".join(short) or None


def serve_config(settings: ServerSettings, *, model_repo_in_cluster: str | None = None) -> dict[str, Any]:
    """A ``ServeDeploySchema``-shaped dict: proxies, gRPC, and the app with per-deployment options."""
    from service.serve.grpc_options import servicer_functions

    settings = resolve_layout(settings, embedded=False)  # the cluster's proxies serve the ports
    repo = ModelRepository(settings.model_repo)
    repo_path = model_repo_in_cluster or settings.model_repo
    args = {
        k: v
        for k, v in settings.model_dump(mode="json").items()
        # what listens on the ports is the cluster's (its proxies, or RAY_SERVE_* on its nodes), not the app's
        if k not in ("host", "http_port", "grpc_port", "metrics_port", "front_end")
    }
    args["model_repo"] = repo_path
    deployments = [{"name": name, **options} for name, options in deployment_options(settings, repo).items()]
    config: dict[str, Any] = {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": settings.http_port},
        "applications": [
            {
                "name": APP_NAME,
                "route_prefix": "/",
                "import_path": "service.serve.app:app_builder",
                "args": args,
                "deployments": deployments,
            }
        ],
    }
    if settings.grpc_port:  # configured: servicers that do not import are an error, not "no gRPC"
        config["grpc_options"] = {"port": settings.grpc_port, "grpc_servicer_functions": servicer_functions()}
    return config
