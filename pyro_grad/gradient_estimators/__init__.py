"""Gradient estimators, one module each; see :mod:`pyro_grad.gradient_estimators.base` for the
contract and the three kinds (pathwise, score-function, difference), and
:mod:`pyro_grad.gradient_estimators.registry` for the list (exported here by class name)."""

from pyro_grad.gradient_estimators import registry
from pyro_grad.gradient_estimators.base import (
    CoupledRuns,
    DifferenceEstimator,
    Estimator,
    Example,
    PathwiseEstimator,
    Relaxation,
    ScoreEstimator,
    ScoreSite,
    Site,
    SiteDraw,
    ValueGradient,
    ValueGradientEstimator,
)
from pyro_grad.gradient_estimators.detached import DetachedSample
from pyro_grad.gradient_estimators.names import parse_estimator
from pyro_grad.gradient_estimators.registry import *  # noqa: F401,F403  every registered estimator class, by name

__all__ = [
    "CoupledRuns",
    "DetachedSample",
    "DifferenceEstimator",
    "Estimator",
    "Example",
    "PathwiseEstimator",
    "Relaxation",
    "ScoreEstimator",
    "ScoreSite",
    "Site",
    "SiteDraw",
    "ValueGradient",
    "ValueGradientEstimator",
    "parse_estimator",
    *registry.__all__,
]
