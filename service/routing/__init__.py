"""Routing by resolution: which backbone, at which input size, and why."""

from service.routing.decision import Candidate, RouteDecision
from service.routing.threshold import ThresholdRouter

__all__ = ["Candidate", "RouteDecision", "ThresholdRouter"]
