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

``import pyro_grad`` loads the estimators, the handler and the objectives. Diagnostics
and tuning (which tabulate with pandas) and the harness (comparisons, reports: the
``harness`` extra) load on first use of one of their names below.
"""

import importlib
from typing import Any, List

from pyro_grad import gradient_estimators
from pyro_grad.errors import EstimatorError
from pyro_grad.gradient_estimators import Estimator, applicable
from pyro_grad.gradient_estimators.registry import REGISTRY
from pyro_grad.gradient_estimators.registry import *  # noqa: F401,F403  every registered estimator class, by name
from pyro_grad.handler import EstimatorMessenger, estimators
from pyro_grad.objectives import ELBO, IWAE, Objective, expectation

__version__ = "0.1.0"

#: Public names whose modules load on first use: {name: module}.
LAZY = {
    "EstimatorComparison": "pyro_grad.diagnostics",
    "FiniteDifferences": "pyro_grad.diagnostics",
    "GradientReport": "pyro_grad.diagnostics",
    "compare_estimators": "pyro_grad.diagnostics",
    "diagnose": "pyro_grad.diagnostics",
    "Retuned": "pyro_grad.tuning.retuned",
    "Switch": "pyro_grad.tuning.retuned",
    "Tuning": "pyro_grad.tuning.tune",
    "tune": "pyro_grad.tuning.tune",
    "AutoGuide": "pyro_grad.harness.comparison",
    "Comparison": "pyro_grad.harness.comparison",
    "compare": "pyro_grad.harness.comparison",
    "report": "pyro_grad.harness.presentation.html_report",
}


def __getattr__(name: str) -> Any:
    # PEP 562: a lazy name is its module's attribute, imported when first asked for.
    if name in LAZY:
        return getattr(importlib.import_module(LAZY[name]), name)
    raise AttributeError(f"module 'pyro_grad' has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(LAZY))


__all__ = [
    "ELBO",
    "IWAE",
    "Estimator",
    "EstimatorError",
    "EstimatorMessenger",
    "Objective",
    "applicable",
    "estimators",
    "expectation",
    "gradient_estimators",
    *LAZY,
    *(cls.__name__ for cls in REGISTRY),
]
