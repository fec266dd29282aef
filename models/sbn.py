"""A sigmoid belief net on binarized digits (scikit-learn's bundled 8×8 ``load_digits``):
the classic discrete-latent benchmark of REBAR, RELAX and DisARM.

One layer of binary latents h ∈ {0,1}^L with prior Bernoulli(σ(b)), a Bernoulli decoder
p(x | h) = Bernoulli(σ(W h + c)) over the 64 pixels, and an amortized guide
q(h | x) = Bernoulli(σ(V x + d)). With few latents the exact ELBO sums every h.
"""

import itertools
from typing import Dict

import pyro
import pyro.distributions as dist
import torch

from pyro_grad.harness.models.benchmark import Benchmark

PIXELS = 64


def binarized_digits(n: int = 64, seed: int = 0) -> torch.Tensor:
    """``n`` digits from ``sklearn.datasets.load_digits`` (1,797 in all), pixels > 8 → 1."""
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().data, dtype=torch.float)
    index = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    return (images[index] > 8).float()


class SigmoidBeliefNet(torch.nn.Module):
    """Decoder and encoder of a one-layer sigmoid belief net; ``model`` and ``guide``."""

    def __init__(self, latents: int = 4, seed: int = 0):
        super().__init__()
        self.latents = latents
        self.seed = seed
        self.prior_logits = torch.nn.Parameter(torch.zeros(latents))
        self.decoder = torch.nn.Linear(latents, PIXELS)
        self.encoder = torch.nn.Linear(PIXELS, latents)
        self.reset()

    def reset(self) -> None:
        """Re-initialize every weight from ``seed`` (training updates them in place)."""
        state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)
        with torch.no_grad():
            self.prior_logits.zero_()
            self.decoder.reset_parameters()
            self.encoder.reset_parameters()
        torch.random.set_rng_state(state)

    def model(self, data: torch.Tensor) -> None:
        pyro.module("sbn", self)
        with pyro.plate("data", len(data)):
            h = pyro.sample("h", dist.Bernoulli(logits=self.prior_logits).expand([len(data), self.latents]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(h)).to_event(1), obs=data)

    def guide(self, data: torch.Tensor) -> None:
        pyro.module("sbn", self)
        with pyro.plate("data", len(data)):
            pyro.sample("h", dist.Bernoulli(logits=self.encoder(data)).to_event(1))

    def exact_elbo(self, data: torch.Tensor) -> torch.Tensor:
        """Σ_x Σ_h q(h|x) [log p(x, h) − log q(h|x)], every h ∈ {0,1}^L summed."""
        configs = torch.tensor(list(itertools.product([0.0, 1.0], repeat=self.latents)))  # (2^L, L)
        q = dist.Bernoulli(logits=self.encoder(data).unsqueeze(-2)).to_event(1)  # (n, 1) batch
        log_q = q.log_prob(configs)  # (n, 2^L)
        log_prior = dist.Bernoulli(logits=self.prior_logits).to_event(1).log_prob(configs)  # (2^L,)
        log_lik = dist.Bernoulli(logits=self.decoder(configs)).to_event(1).log_prob(data.unsqueeze(-2))
        return (log_q.exp() * (log_prior + log_lik - log_q)).sum()


NET = SigmoidBeliefNet()


def model(data: torch.Tensor) -> None:
    NET.model(data)


def guide(data: torch.Tensor) -> None:
    NET.guide(data)


def exact_elbo_gradient(data: torch.Tensor) -> Dict[str, torch.Tensor]:
    """∇ of the exact ELBO w.r.t. every network parameter, named as in the param store."""
    names = {f"sbn$$${name}": p for name, p in NET.named_parameters()}  # pyro.module naming
    grads = torch.autograd.grad(NET.exact_elbo(data), list(names.values()))
    return dict(zip(names, grads))


BENCHMARK = Benchmark(
    name="sbn",
    description=(
        "A sigmoid belief net with 4 binary latents on 64 binarized 8×8 digits "
        "(scikit-learn's load_digits), with an amortized Bernoulli guide: the classic "
        "benchmark of REBAR, RELAX and DisARM. With 4 latents the exact ELBO sums all 16 "
        "configurations per image."
    ),
    program=model,
    guide=guide,
    default_args=(binarized_digits(),),
    arg_names=("data",),
    reference_gradient=exact_elbo_gradient,
    reset=NET.reset,
)
