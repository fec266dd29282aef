"""Gradient estimators, one module each; see :mod:`pyro_grad.paths.base` for the contract."""

# Import order is registry order, which is the order errors list what applies.
from pyro_grad.paths.base import REGISTRY, DifferenceEstimator, Estimator, applicable, describe  # isort: skip
from pyro_grad.paths.reparam import Reparam  # isort: skip
from pyro_grad.paths.detached import DetachedSample  # isort: skip
from pyro_grad.paths.score import Score  # isort: skip
from pyro_grad.paths.enumerate import Enumerate  # isort: skip
from pyro_grad.paths.measure_valued import MeasureValued  # isort: skip
from pyro_grad.paths.arm import ARM, DisARM  # isort: skip
from pyro_grad.paths.relaxed import GumbelSoftmax, StraightThrough  # isort: skip
from pyro_grad.paths.names import parse_estimator  # isort: skip

__all__ = [
    "ARM",
    "REGISTRY",
    "DetachedSample",
    "DifferenceEstimator",
    "DisARM",
    "Enumerate",
    "Estimator",
    "GumbelSoftmax",
    "MeasureValued",
    "Reparam",
    "Score",
    "StraightThrough",
    "applicable",
    "describe",
    "parse_estimator",
]
