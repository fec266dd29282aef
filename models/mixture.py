"""A Gaussian mixture with discrete assignments on real data: petal lengths of the iris
data set (shipped inside scikit-learn; no network). Exact ELBO gradient by enumerating
the guide's assignments."""

from typing import Dict

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from pyro_grad.harness.models.benchmark import Benchmark

COMPONENTS = 3
SCALE = 0.5


def iris_petal_lengths(n: int = 30, seed: int = 0) -> torch.Tensor:
    """``n`` standardized petal lengths from ``sklearn.datasets.load_iris``, a fixed subset."""
    from sklearn.datasets import load_iris

    x = torch.tensor(load_iris().data[:, 2], dtype=torch.float)
    x = (x - x.mean()) / x.std()
    index = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[index]


def component_mean(means: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """μ_z, written as Σ_k μ_k·max(0, 1 − |z − k|): exactly μ_z at an integer z, and
    piecewise linear in z so that a relaxed (fractional) assignment carries a gradient."""
    k = torch.arange(COMPONENTS, dtype=means.dtype)
    weights = (1 - (z.unsqueeze(-1).to(means.dtype) - k).abs()).clamp(min=0)
    return (weights * means).sum(-1)


def model(data: torch.Tensor) -> None:
    """Means are global params; z_i ~ Categorical(uniform), x_i ~ N(μ_{z_i}, 0.5)."""
    means = pyro.param("means", torch.tensor([-1.2, 0.0, 1.0]))
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Categorical(torch.ones(COMPONENTS) / COMPONENTS))
        pyro.sample("x", dist.Normal(component_mean(means, z), SCALE), obs=data)


def guide(data: torch.Tensor) -> None:
    """q(z_i) = Categorical(assignment probabilities), one row per point."""
    # Soft initial assignments (at least 5% each), so that no draw is a rare event.
    closeness = torch.softmax(-((data.unsqueeze(-1) - torch.tensor([-1.2, 0.0, 1.0])) ** 2), -1)
    init = 0.85 * closeness + 0.05
    probs = pyro.param("assignment_probs", init, constraint=constraints.simplex)
    with pyro.plate("data", len(data)):
        pyro.sample("z", dist.Categorical(probs))


def exact_elbo_gradient(data: torch.Tensor) -> Dict[str, torch.Tensor]:
    """The exact ELBO gradient, every assignment enumerated (Pyro's TraceEnum_ELBO)."""
    from pyro.infer import TraceEnum_ELBO, config_enumerate

    with pyro.poutine.trace(param_only=True) as params:
        loss = TraceEnum_ELBO().differentiable_loss(model, config_enumerate(guide, "parallel"), data)
    leaves = {n: s["value"].unconstrained() for n, s in params.trace.nodes.items()}
    grads = torch.autograd.grad(-loss, list(leaves.values()))
    return dict(zip(leaves, grads))


BENCHMARK = Benchmark(
    name="mixture",
    description=(
        "A three-component Gaussian mixture on 30 standardized iris petal lengths "
        "(scikit-learn's bundled data). Each point's assignment is a Categorical guide site "
        "in a plate; the exact ELBO gradient enumerates them (TraceEnum_ELBO)."
    ),
    program=model,
    guide=guide,
    default_args=(iris_petal_lengths(),),
    arg_names=("data",),
    reference_gradient=exact_elbo_gradient,
)
