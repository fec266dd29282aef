"""Gradient estimators, one module each; see :mod:`pyro_grad.paths.base` for the contract
and :mod:`pyro_grad.paths.registry` for the list."""

from pyro_grad.paths.arm import ARM, DisARM
from pyro_grad.paths.base import DifferenceEstimator, Estimator, Example, Site
from pyro_grad.paths.detached import DetachedSample
from pyro_grad.paths.enumerate import Enumerate
from pyro_grad.paths.measure_valued import MeasureValued
from pyro_grad.paths.names import parse_estimator
from pyro_grad.paths.registry import REGISTRY, applicable, not_applicable
from pyro_grad.paths.relaxed import GumbelSoftmax, StraightThrough
from pyro_grad.paths.reparam import Reparam
from pyro_grad.paths.score import Score

__all__ = [
    "ARM",
    "REGISTRY",
    "DetachedSample",
    "DifferenceEstimator",
    "DisARM",
    "Enumerate",
    "Estimator",
    "Example",
    "GumbelSoftmax",
    "MeasureValued",
    "Reparam",
    "Score",
    "Site",
    "StraightThrough",
    "applicable",
    "not_applicable",
    "parse_estimator",
]
