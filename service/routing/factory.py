"""The router the service and the CLI use, built from the repository and the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.models import ModelRepository
from service.routing.threshold import ThresholdRouter
from service.settings import ServerSettings

if TYPE_CHECKING:
    from service.api.serving import Router

__all__ = ["make_router"]


def make_router(repo: ModelRepository, settings: ServerSettings | None = None) -> Router:
    settings = settings or ServerSettings.from_env(model_repo=str(repo.root))
    configs = repo.configs()
    small = settings.small_model if settings.small_model in configs else next(iter(configs))
    large = settings.large_model if settings.large_model in configs else small
    return ThresholdRouter(configs, small=small, large=large, threshold=settings.threshold)
