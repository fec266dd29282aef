"""Objectives whose gradients are the chosen estimators' estimates."""

from pyro_grad.objectives.elbo import ELBO
from pyro_grad.objectives.expectation import expectation
from pyro_grad.objectives.iwae import IWAE

__all__ = ["ELBO", "IWAE", "expectation"]
