"""Independent draws of a gradient estimator, for tests that check means and variances."""

from typing import Callable, Dict

import pyro
import torch

from pyro_grad.diagnostics.gradient_samples import gradient_draws
import pyro_grad as pg
from pyro_grad.objectives.expectation import expectation_estimates


def expectation_draws(
    program: Callable,
    *args,
    num_samples: int,
    num_particles: int = 1,
    mode: str = "vectorized",
    vectorize: bool = True,
    seed: int = 0,
) -> Dict[str, torch.Tensor]:
    """``num_samples`` gradients of ``pg.expectation(program, *args, num_particles=K)``."""

    def estimates(a, g):
        return expectation_estimates(program, a, {}, num_particles, g, vectorize)

    draws = gradient_draws(estimates, [program], args, {}, num_samples, seed=seed, mode=mode)
    assert draws.mode == mode
    return draws.samples


def elbo_draws(
    model: Callable,
    guide: Callable,
    *args,
    num_samples: int,
    num_particles: int = 1,
    mode: str = "vectorized",
    seed: int = 0,
    objective=pg.ELBO,
    values: bool = False,
):
    """``num_samples`` gradients of the ELBO (ascent direction) w.r.t. every param, or
    of another bound (``objective=pg.IWAE``); with ``values``, also the ``(G,)`` bounds
    whose gradients they are."""

    def estimates(a, g):
        elbo = objective(num_particles=num_particles, vectorize_particles=mode == "vectorized")
        return elbo.estimates(model, guide, a, {}, num_samples=g)

    draws = gradient_draws(estimates, [model, guide], args, {}, num_samples, seed=seed, mode=mode)
    assert draws.mode == mode
    if not values:
        return draws.samples
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        return draws.samples, estimates(args, num_samples).values
