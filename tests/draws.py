"""Independent draws of a gradient estimator, for tests that check means and variances."""

from typing import Callable, Dict

import torch

from pyro_grad.gradient_samples import gradient_draws
from pyro_grad.objectives.elbo import elbo_estimates
from pyro_grad.objectives.expectation import expectation_estimates


def expectation_draws(
    program: Callable,
    *args,
    num_draws: int,
    num_particles: int = 1,
    path: str = "vectorized",
    vectorize: bool = True,
    seed: int = 0,
) -> Dict[str, torch.Tensor]:
    """``num_draws`` gradients of ``pg.expectation(program, *args, num_particles=K)``."""

    def estimates(a, g):
        return expectation_estimates(program, a, {}, num_particles, g, vectorize)

    draws = gradient_draws(estimates, [program], args, {}, num_draws, seed=seed, path=path)
    assert draws.path == path
    return draws.samples


def elbo_draws(
    model: Callable,
    guide: Callable,
    *args,
    num_draws: int,
    num_particles: int = 1,
    path: str = "vectorized",
    seed: int = 0,
) -> Dict[str, torch.Tensor]:
    """``num_draws`` gradients of the ELBO (ascent direction) w.r.t. every param."""

    def estimates(a, g):
        return elbo_estimates(model, guide, a, {}, num_particles, g, path == "vectorized")

    draws = gradient_draws(estimates, [model, guide], args, {}, num_draws, seed=seed, path=path)
    assert draws.path == path
    return draws.samples
