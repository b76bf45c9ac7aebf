"""Routing by resolution: which backbone, at which input size, and why.

Torch-free: the cost model, the calibration and the policy run in processes without PyTorch.
"""

from service.routing.calibration import (
    Calibration,
    CalibrationEntry,
    LatencyPrediction,
    calibrate,
    load_calibration,
    predict_latency,
)
from service.routing.cost import CostEstimate, estimate_cost
from service.routing.decision import Candidate, RouteDecision, Router
from service.routing.policy import CostRouter, DevicePolicy, ModelRoute, RoutesPolicy, load_policy
from service.routing.threshold import ThresholdRouter

__all__ = [
    "Calibration",
    "CalibrationEntry",
    "Candidate",
    "CostEstimate",
    "CostRouter",
    "DevicePolicy",
    "LatencyPrediction",
    "ModelRoute",
    "RouteDecision",
    "Router",
    "RoutesPolicy",
    "ThresholdRouter",
    "calibrate",
    "estimate_cost",
    "load_calibration",
    "load_policy",
    "predict_latency",
]
