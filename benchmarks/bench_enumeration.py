"""Programs written for TraceEnum_ELBO under pg.ELBO: the same objective, gradient and cost?

Three of Pyro's own patterns, with only the loss swapped, side by side in one run:

* **GMM tutorial** (``config_enumerate`` on the model, AutoDelta guide of the globals,
  data [0, 1, 10, 11, 12], Adam lr 0.1, betas (0.8, 0.99), 200 steps): the largest |z|
  of pg's gradient against TraceEnum's at the start (both deterministic, so a z is the
  difference over the float rounding 1e-6·max(1, |g|)), and the trained weights.
* **HMM** (``examples/hmm.py``'s ``model_1``: a hidden chain under ``pyro.markov``
  enumerated in the model, 16 states, 20 binary-note sequences of 30 steps, synthetic):
  loss and gradient against TraceEnum's.
* **Semi-supervised VAE** (``examples/vae/ss_vae_M2.py``'s shape on scikit-learn's 8×8
  digits, 100 unlabelled: the label enumerated in the guide, z pathwise): the total
  gradient variance of each network over 200 draws, pg's over TraceEnum's (independent
  seeds), and the largest difference on common seeds (draw for draw).

Each also prints ms per step for pg.ELBO and TraceEnum_ELBO, one after the other, and
for the HMM the forward algorithm written in torch (the limit).

Run: ``.venv/bin/python benchmarks/bench_enumeration.py [--draws 200]`` (about a minute).
"""

import argparse
import time
import warnings
from typing import Callable, Dict, Tuple

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer import SVI, TraceEnum_ELBO, config_enumerate
from pyro.infer.autoguide import AutoDelta
from pyro.infer.autoguide.initialization import init_to_value
from pyro.optim import Adam
from sklearn.datasets import load_digits

import pyro_grad as pg

GMM_DATA = torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0])


@config_enumerate
def gmm(data: torch.Tensor) -> None:
    weights = pyro.sample("weights", dist.Dirichlet(0.5 * torch.ones(2)))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 2.0))
    with pyro.plate("components", 2):
        locs = pyro.sample("locs", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(data)):
        assignment = pyro.sample("assignment", dist.Categorical(weights))
        pyro.sample("obs", dist.Normal(locs[assignment], scale), obs=data)


def gmm_guide() -> Callable:
    start = {"weights": torch.ones(2) / 2, "scale": (GMM_DATA.var() / 2).sqrt(), "locs": GMM_DATA[[0, 2]]}
    return AutoDelta(poutine.block(gmm, expose=["weights", "locs", "scale"]), init_loc_fn=init_to_value(values=start))


def hmm_data(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(20, 30, 4, generator=generator) < 0.3).float()


def hmm(sequences: torch.Tensor, hidden: int = 16) -> None:
    """examples/hmm.py's model_1: x_t ~ Categorical(T[x_{t−1}]), y_t ~ Bernoulli(p[x_t])."""
    probs_x = pyro.sample("probs_x", dist.Dirichlet(0.9 * torch.eye(hidden) + 0.1).to_event(1))
    probs_y = pyro.sample("probs_y", dist.Beta(0.1, 0.9).expand([hidden, sequences.shape[-1]]).to_event(2))
    tones = pyro.plate("tones", sequences.shape[-1], dim=-1)
    with pyro.plate("sequences", sequences.shape[0], dim=-2):
        x = 0
        for t in pyro.markov(range(sequences.shape[1])):
            x = pyro.sample(f"x_{t}", dist.Categorical(probs_x[x]), infer={"enumerate": "parallel"})
            with tones:
                pyro.sample(f"y_{t}", dist.Bernoulli(probs_y[x.squeeze(-1)]), obs=sequences[:, t])


def hmm_guide() -> Callable:
    return AutoDelta(poutine.block(hmm, expose=["probs_x", "probs_y"]))


def digits(n: int = 100) -> torch.Tensor:
    images = torch.tensor(load_digits().data[:n], dtype=torch.float32) / 16.0
    return (images > 0.5).float()


LABELS, LATENT, PIXELS = 10, 8, 64


class Networks:
    """The ss-VAE's networks, made once per run (as ss_vae_M2.py does) and seeded."""

    def __init__(self, seed: int = 0) -> None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self._make()

    def _make(self) -> None:
        self.decoder = torch.nn.Sequential(torch.nn.Linear(LATENT + LABELS, 64), torch.nn.Softplus(),
                                           torch.nn.Linear(64, PIXELS))
        self.classifier = torch.nn.Linear(PIXELS, LABELS)
        self.encoder = torch.nn.Sequential(torch.nn.Linear(PIXELS + LABELS, 64), torch.nn.Softplus(),
                                           torch.nn.Linear(64, 2 * LATENT))


NETWORKS = Networks()


def ss_model(xs: torch.Tensor) -> None:
    decoder = pyro.module("decoder", NETWORKS.decoder)
    with pyro.plate("data", xs.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(LATENT), 1.0).to_event(1))
        y = pyro.sample("y", dist.OneHotCategorical(torch.ones(LABELS) / LABELS))
        shape = torch.broadcast_shapes(z.shape[:-1], y.shape[:-1])
        logits = decoder(torch.cat([z.expand(shape + (LATENT,)), y.expand(shape + (LABELS,))], -1))
        pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=xs)


def ss_guide(xs: torch.Tensor) -> None:
    classifier = pyro.module("classifier", NETWORKS.classifier)
    encoder = pyro.module("encoder", NETWORKS.encoder)
    with pyro.plate("data", xs.shape[0]):
        y = pyro.sample("y", dist.OneHotCategorical(logits=classifier(xs)))
        shape = torch.broadcast_shapes(xs.shape[:-1], y.shape[:-1])
        loc, log_scale = encoder(torch.cat([xs.expand(shape + (PIXELS,)), y.expand(shape + (LABELS,))], -1)).chunk(2, -1)
        pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def gradients(elbo, model, guide, *args, seed=None) -> Tuple[float, Dict[str, torch.Tensor]]:
    if seed is not None:
        pyro.set_rng_seed(seed)
    loss = elbo.differentiable_loss(model, guide, *args)
    names, params = zip(*sorted(pyro.get_param_store().named_parameters()))
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return float(loss.detach()), {n: torch.zeros_like(p) if g is None else g for n, p, g in zip(names, params, grads)}


def largest_z(ours: Dict[str, torch.Tensor], theirs: Dict[str, torch.Tensor]) -> float:
    """Deterministic gradients: the difference over float rounding, 1e-6·max(1, |g|)."""
    return max(float(((ours[n] - theirs[n]).abs() / (1e-6 * theirs[n].abs().clamp(min=1))).max()) for n in theirs)


def step_ms(elbo, model, guide, *args, steps: int = 20) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        elbo.differentiable_loss(model, guide, *args).backward()
    return 1000 * (time.perf_counter() - start) / steps


def hmm_by_hand(sequences: torch.Tensor, guide: Callable) -> Tuple[float, float]:
    """The HMM's −ELBO and ms per step written in torch (the forward algorithm in log
    space over the AutoDelta point, its priors included): the limit."""
    def loss():
        probs_x, probs_y = guide.probs_x, guide.probs_y  # AutoDelta's constrained parameters
        hidden = probs_x.shape[0]
        prior = (dist.Dirichlet(0.9 * torch.eye(hidden) + 0.1).log_prob(probs_x).sum()
                 + dist.Beta(0.1, 0.9).log_prob(probs_y).sum())
        emit = sequences @ probs_y.log().T + (1 - sequences) @ (1 - probs_y).log().T  # (S, T, H)
        log_x = probs_x.log()
        alpha = log_x[0] + emit[:, 0]
        for t in range(1, sequences.shape[1]):
            alpha = torch.logsumexp(alpha[:, :, None] + log_x, 1) + emit[:, t]
        return -(prior + torch.logsumexp(alpha, -1).sum())

    value = float(loss().detach())
    start = time.perf_counter()
    for _ in range(20):
        loss().backward()
    return value, 1000 * (time.perf_counter() - start) / 20


def compare_deterministic(name: str, model, make_guide, *args) -> None:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = make_guide()
    theirs_loss, theirs = gradients(TraceEnum_ELBO(max_plate_nesting=2), model, guide, *args)
    ours_loss, ours = gradients(pg.ELBO(), model, guide, *args)
    pg_ms = step_ms(pg.ELBO(max_plate_nesting=2), model, guide, *args)
    pyro_ms = step_ms(TraceEnum_ELBO(max_plate_nesting=2), model, guide, *args)
    limit = ""
    if model is hmm:
        by_hand, by_hand_ms = hmm_by_hand(args[0], guide)
        limit = f", torch by hand {by_hand_ms:.1f} (its loss {by_hand:.4f})"
    print(f"{name}: loss pg {ours_loss:.4f} TraceEnum {theirs_loss:.4f}; largest |z| of the gradient "
          f"{largest_z(ours, theirs):.2f}; ms/step pg {pg_ms:.1f} TraceEnum {pyro_ms:.1f} ({pg_ms / pyro_ms:.2f}x)"
          f"{limit}")


def train_gmm(loss) -> torch.Tensor:
    pyro.clear_param_store()
    guide = gmm_guide()
    svi = SVI(gmm, guide, Adam({"lr": 0.1, "betas": [0.8, 0.99]}), loss=loss)
    for _ in range(200):
        svi.step(GMM_DATA)
    return guide.median()["weights"].detach()


def ss_variances(draws: int) -> None:
    xs = digits()
    pyro.clear_param_store()
    reference, ours = TraceEnum_ELBO(max_plate_nesting=1), pg.ELBO(max_plate_nesting=1)
    guide = config_enumerate(ss_guide)
    groups = ("classifier", "encoder", "decoder")

    def total_variance(elbo, seeds) -> Dict[str, float]:
        rows = [gradients(elbo, ss_model, guide, xs, seed=s)[1] for s in seeds]
        return {g: sum(float(torch.stack([r[n] for r in rows]).var(0).sum()) for n in rows[0] if n.startswith(g))
                for g in groups}

    theirs = total_variance(reference, range(draws))
    mine = total_variance(ours, range(draws, 2 * draws))
    same = max(largest_z(gradients(ours, ss_model, guide, xs, seed=s)[1],
                         gradients(reference, ss_model, guide, xs, seed=s)[1]) for s in range(5))
    ratios = ", ".join(f"{g} {mine[g] / theirs[g]:.2f}" for g in groups)
    pg_ms = step_ms(ours, ss_model, guide, xs)
    pyro_ms = step_ms(reference, ss_model, guide, xs)
    print(f"ss-VAE: gradient variance pg / TraceEnum over {draws} independent draws: {ratios}; on common seeds "
          f"the largest |z| (float rounding) is {same:.2f}; ms/step pg {pg_ms:.1f} TraceEnum {pyro_ms:.1f} "
          f"({pg_ms / pyro_ms:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=200)
    args = parser.parse_args()
    warnings.simplefilter("ignore", FutureWarning)
    compare_deterministic("GMM tutorial", gmm, gmm_guide, GMM_DATA)
    print(f"GMM tutorial after 200 steps: weights pg {train_gmm(pg.ELBO()).tolist()} "
          f"TraceEnum {train_gmm(TraceEnum_ELBO(max_plate_nesting=1)).tolist()}")
    compare_deterministic("HMM (hmm.py model_1)", hmm, hmm_guide, hmm_data())
    ss_variances(args.draws)


if __name__ == "__main__":
    main()
