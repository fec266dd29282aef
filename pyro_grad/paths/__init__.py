"""Gradient estimators, one module each; see :mod:`pyro_grad.paths.base` for the contract
and :mod:`pyro_grad.paths.registry` for the list (exported here by class name)."""

from pyro_grad.paths import registry
from pyro_grad.paths.base import CoupledRuns, DifferenceEstimator, Estimator, Example, PathwiseEstimator, Site, SiteDraw
from pyro_grad.paths.detached import DetachedSample
from pyro_grad.paths.names import parse_estimator
from pyro_grad.paths.registry import *  # noqa: F401,F403  every registered estimator class, by name

__all__ = [
    "CoupledRuns",
    "DetachedSample",
    "DifferenceEstimator",
    "Estimator",
    "Example",
    "PathwiseEstimator",
    "Site",
    "SiteDraw",
    "parse_estimator",
    *registry.__all__,
]
