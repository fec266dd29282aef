"""Gradient estimators, one module each; see :mod:`pyro_grad.paths.base` for the contract."""

from pyro_grad.paths.base import REGISTRY, Estimator, applicable, describe
from pyro_grad.paths.names import parse_estimator
from pyro_grad.paths.reparam import Reparam
from pyro_grad.paths.score import Score, ScoreFunctionSample

__all__ = [
    "REGISTRY",
    "Estimator",
    "Reparam",
    "Score",
    "ScoreFunctionSample",
    "applicable",
    "describe",
    "parse_estimator",
]
