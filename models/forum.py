"""The forum threads' programs: a Poisson rate fitted through a downstream loss, and a
convolutional network fed a reparameterized Gaussian sample."""

from typing import Dict

import pyro
import pyro.distributions as dist
import torch

from pyro_grad.harness.models.benchmark import Benchmark

POISSON_TARGET = 3.0
POISSON_COUNTS = 5


def poisson_fit(lam: torch.Tensor) -> torch.Tensor:
    """Counts X_i ~ Poisson(λ), i = 1..5; loss mean_i (X_i − 3)².
    E[loss] = λ + (λ − 3)², so ∂λ E[loss] = 1 + 2(λ − 3)."""
    with pyro.plate("counts", POISSON_COUNTS):
        x = pyro.sample("x", dist.Poisson(lam))
    return ((x - POISSON_TARGET) ** 2).mean(-1)


def poisson_fit_gradient(lam) -> Dict[str, torch.Tensor]:
    lam = torch.as_tensor(lam, dtype=torch.float)
    return {"lam": 1 + 2 * (lam - POISSON_TARGET)}


def torch_poisson_gradient(lam: float) -> float:
    """What plain torch gives for the same loss: ``torch.poisson`` silently returns a
    zero gradient (the first forum thread)."""
    rate = torch.tensor(float(lam), requires_grad=True)
    counts = torch.poisson(rate.expand(POISSON_COUNTS))
    ((counts - POISSON_TARGET) ** 2).mean().backward()
    return float(rate.grad)


CHANNELS_IN, CHANNELS_OUT = 16, 32


def make_net(seed: int = 0) -> torch.nn.Conv2d:
    """The thread's ``Conv2d(16, 32, 3, padding=1)``, with fixed weights."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    net = torch.nn.Conv2d(CHANNELS_IN, CHANNELS_OUT, kernel_size=3, padding=1)
    torch.random.set_rng_state(generator_state)
    return net


NET = make_net()


def conv_inputs(size: int, seed: int = 0):
    """``x_mean`` and a positive ``x_var`` of shape (1, 16, size, size), requiring grad."""
    g = torch.Generator().manual_seed(seed)
    x_mean = torch.randn(1, CHANNELS_IN, size, size, generator=g)
    x_var = torch.rand(1, CHANNELS_IN, size, size, generator=g) + 0.1
    return x_mean.requires_grad_(), x_var.requires_grad_()


def conv_net(x_mean: torch.Tensor, x_var: torch.Tensor) -> torch.Tensor:
    """z ~ N(x_mean, x_var) elementwise (one site, event dims (16, H, W)), fed to the
    convolution; loss = mean of the squared output."""
    z = pyro.sample("z", dist.Normal(x_mean, x_var.sqrt()).to_event(3))
    out = NET(z.reshape((-1,) + z.shape[-3:])).reshape(z.shape[:-3] + (CHANNELS_OUT,) + z.shape[-2:])
    return out.pow(2).mean((-3, -2, -1)).reshape(z.shape[:-3])


def conv_net_expected_loss(x_mean: torch.Tensor, x_var: torch.Tensor) -> torch.Tensor:
    """E[loss] in closed form: the convolution is linear, so each output is Gaussian with
    mean conv(μ) + b and variance conv_{W²}(σ²) (the squared kernel on the variances)."""
    mean = NET(x_mean)
    variance = torch.nn.functional.conv2d(x_var, NET.weight.pow(2), padding=1)
    return (mean.pow(2) + variance).mean()


def conv_net_gradient(x_mean, x_var) -> Dict[str, torch.Tensor]:
    m = x_mean.detach().clone().requires_grad_()
    v = x_var.detach().clone().requires_grad_()
    dm, dv = torch.autograd.grad(conv_net_expected_loss(m, v), [m, v])
    return {"x_mean": dm, "x_var": dv}


BENCHMARKS = (
    Benchmark(
        name="poisson_fit",
        description=(
            "The first forum thread: a Poisson rate λ reached through a downstream loss on "
            "five counts, mean (X − 3)². torch.poisson's gradient is silently zero; the exact "
            "one is 1 + 2(λ − 3)."
        ),
        program=poisson_fit,
        default_args=(2.0,),
        arg_names=("lam",),
        reference_gradient=poisson_fit_gradient,
    ),
    Benchmark(
        name="conv_net",
        description=(
            "The second forum thread: z = x_mean + sqrt(x_var)·ε fed to Conv2d(16, 32, 3, "
            "padding=1), loss the mean squared output, at 8×8 (300×300 in the thread). The "
            "convolution is linear, so the expected loss and its gradient are exact."
        ),
        program=conv_net,
        default_args=conv_inputs(8),
        arg_names=("x_mean", "x_var"),
        reference_gradient=conv_net_gradient,
    ),
)
