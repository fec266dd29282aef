"""The seed tutorial's programs ("Differentiating through randomness"), with exact gradients.

Each program returns one scalar cost per particle and broadcasts over a leading
particle plate, so it runs vectorized under ``pg.expectation``.
"""

from typing import Dict

import pyro
import pyro.distributions as dist
import torch

from pyro_grad.harness.models.benchmark import Benchmark


def fixed_noise(theta: torch.Tensor) -> torch.Tensor:
    """z ~ N(1, 2); f = θ²(z + 4). ∇θ E[f] = 10θ (noise independent of θ)."""
    z = pyro.sample("z", dist.Normal(1.0, 2.0))
    return theta**2 * (z + 4)


def parameterized_noise(theta: torch.Tensor) -> torch.Tensor:
    """z ~ N(θ, 2); f = θ²(z + 4). ∇θ E[f] = 8θ + 3θ²."""
    z = pyro.sample("z", dist.Normal(theta, 2.0))
    return theta**2 * (z + 4)


def two_bernoullis(theta: torch.Tensor) -> torch.Tensor:
    """f = 2·Bern(3θ) + Bern(θ). ∇θ E[f] = 7."""
    a = pyro.sample("a", dist.Bernoulli(probs=3 * theta))
    b = pyro.sample("b", dist.Bernoulli(probs=theta))
    return 2 * a + b


RANDOM_WALK_STEPS = 10


def random_walk(theta: torch.Tensor, steps: int = RANDOM_WALK_STEPS) -> torch.Tensor:
    """x_t = Σ of t steps of ±1, +1 with probability θ. ∇θ E[x_t] = 2t."""
    with pyro.plate("steps", steps):
        up = pyro.sample("up", dist.Bernoulli(probs=theta))
    return (2 * up - 1).sum(-1)


def random_walk_gradient(theta, steps: int = RANDOM_WALK_STEPS) -> Dict[str, torch.Tensor]:
    return {"theta": torch.full_like(torch.as_tensor(theta, dtype=torch.float), 2.0 * steps)}


def fixed_noise_gradient(theta) -> Dict[str, torch.Tensor]:
    return {"theta": 10 * torch.as_tensor(theta, dtype=torch.float)}


def parameterized_noise_gradient(theta) -> Dict[str, torch.Tensor]:
    theta = torch.as_tensor(theta, dtype=torch.float)
    return {"theta": 8 * theta + 3 * theta**2}


def two_bernoullis_gradient(theta) -> Dict[str, torch.Tensor]:
    return {"theta": torch.full_like(torch.as_tensor(theta, dtype=torch.float), 7.0)}


BENCHMARKS = (
    Benchmark(
        name="fixed_noise",
        description=(
            "The tutorial's first program: z ~ N(1, 2) and f = θ²(z + 4). The noise does not "
            "depend on θ, so the gradient of the expectation is the expectation of the "
            "gradient, 10θ; finite differences with independent noise blow up as ε → 0."
        ),
        program=fixed_noise,
        default_args=(2.0,),
        arg_names=("theta",),
        reference_gradient=fixed_noise_gradient,
    ),
    Benchmark(
        name="parameterized_noise",
        description=(
            "The tutorial's second program: z ~ N(θ, 2) and f = θ²(z + 4). Sampling with "
            ".sample() cuts the gradient through z; the true gradient is 8θ + 3θ² (28 at θ=2), "
            "reached pathwise (per-sample variance 64) or by the score function (about 432)."
        ),
        program=parameterized_noise,
        default_args=(2.0,),
        arg_names=("theta",),
        reference_gradient=parameterized_noise_gradient,
    ),
    Benchmark(
        name="two_bernoullis",
        description=(
            "The tutorial's discrete program: f = 2·Bern(3θ) + Bern(θ), ∇θ E[f] = 7. There is "
            "no pathwise gradient; hard Gumbel-softmax is biased at every temperature."
        ),
        program=two_bernoullis,
        default_args=(0.1,),
        arg_names=("theta",),
        reference_gradient=two_bernoullis_gradient,
    ),
    Benchmark(
        name="random_walk",
        description=(
            "The tutorial's random walk: x_t is the sum of t = 10 steps of ±1, each +1 with "
            "probability θ, so ∇θ E[x_t] = 2t = 20. Ten Bernoulli sites in a plate."
        ),
        program=random_walk,
        default_args=(0.3,),
        arg_names=("theta",),
        reference_gradient=random_walk_gradient,
    ),
)
