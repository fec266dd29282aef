"""Objectives whose gradients are the chosen estimators' estimates, each an
:class:`~pyro_grad.objectives.objective.Objective`."""

from pyro_grad.objectives.elbo import ELBO
from pyro_grad.objectives.expectation import Expectation, expectation
from pyro_grad.objectives.iwae import IWAE
from pyro_grad.objectives.objective import Objective, objective_type

__all__ = ["ELBO", "IWAE", "Expectation", "Objective", "expectation", "objective_type"]
