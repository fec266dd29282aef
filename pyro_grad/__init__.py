"""pyro_grad: choose, check and measure the gradient path of every sample site in Pyro.

Quick start::

    import pyro, pyro.distributions as dist, torch
    import pyro_grad as pg

    def f(theta):
        z = pyro.sample("z", dist.Normal(theta, 2.0))
        return theta**2 * (z + 4)

    theta = torch.tensor(2.0, requires_grad=True)
    pg.expectation(pg.estimators(f, {"z": pg.Score("loo")}), theta, num_particles=1000).backward()
    theta.grad  # ≈ 8θ + 3θ² = 28
"""

from pyro_grad.comparison import AutoGuide, Comparison, compare
from pyro_grad.diagnostics import (
    EstimatorComparison,
    FiniteDifferences,
    GradientReport,
    compare_estimators,
    diagnose,
)
from pyro_grad.errors import EstimatorError
from pyro_grad.handler import EstimatorMessenger, estimators
from pyro_grad.presentation.html_report import report
from pyro_grad.objectives import ELBO, IWAE, expectation
from pyro_grad.tuning.schedule import Switch
from pyro_grad.tuning.tune import Tuning, tune
from pyro_grad import gradient_estimators
from pyro_grad.gradient_estimators import Estimator, applicable
from pyro_grad.gradient_estimators.registry import REGISTRY
from pyro_grad.gradient_estimators.registry import *  # noqa: F401,F403  every registered estimator class, by name

__version__ = "0.1.0"

__all__ = [
    "AutoGuide",
    "Comparison",
    "ELBO",
    "IWAE",
    "Estimator",
    "EstimatorComparison",
    "FiniteDifferences",
    "GradientReport",
    "compare_estimators",
    "diagnose",
    "EstimatorError",
    "EstimatorMessenger",
    "applicable",
    "compare",
    "estimators",
    "expectation",
    "gradient_estimators",
    "report",
    "Switch",
    "Tuning",
    "tune",
    *(cls.__name__ for cls in REGISTRY),
]
