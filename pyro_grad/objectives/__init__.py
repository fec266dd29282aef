"""Objectives whose gradients are the chosen estimators' estimates."""

from pyro_grad.objectives.elbo import ELBO
from pyro_grad.objectives.expectation import expectation

__all__ = ["ELBO", "expectation"]
