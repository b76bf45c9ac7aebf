"""The router the service and the CLI use, built from the repository and the settings.

With ``model_repo/routes.yaml`` present: the cost-model router (``CostRouter``), calibrated from
``model_repo/calibration.json`` when ``tessera calibrate`` has written one. Without it: the
foundation's size threshold.
"""

from __future__ import annotations

from service.models import ArchFacts, ModelRepository
from service.routing.calibration import load_calibration
from service.routing.decision import Router
from service.routing.policy import CostRouter, load_policy
from service.routing.threshold import ThresholdRouter
from service.settings import ServerSettings

__all__ = ["CALIBRATION_FILE", "make_router"]

CALIBRATION_FILE = "calibration.json"


def make_router(repo: ModelRepository, settings: ServerSettings | None = None, *, device: str | None = None) -> Router:
    settings = settings or ServerSettings.from_env(model_repo=str(repo.root))
    configs = repo.configs()
    if repo.routes_path.exists():
        policy = load_policy(repo.routes_path)
        facts = {}
        for name in configs:
            manifest = repo.manifest(name)
            if manifest is not None:
                facts[name] = ArchFacts.from_dict(manifest.arch)
        policy_models = {name: cfg for name, cfg in configs.items() if name in facts}
        if policy_models:
            calibration = load_calibration(repo.root / CALIBRATION_FILE, missing_ok=True)
            # Models named in routes.yaml but not built are left out rather than failing the service.
            routes = {k: v for k, v in policy.models.items() if k in policy_models}
            policy = policy.model_copy(update={"models": routes})
            return CostRouter(policy_models, facts, policy, calibration, device=device)
    small = settings.small_model if settings.small_model in configs else next(iter(configs))
    large = settings.large_model if settings.large_model in configs else small
    return ThresholdRouter(configs, small=small, large=large, threshold=settings.threshold)
