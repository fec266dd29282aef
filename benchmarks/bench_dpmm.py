"""The Dirichlet-process mixture of Pyro's tutorial: which default trains best at one particle?

A stick-breaking mixture (truncation T = 6, α = 0.1) of N = 200 points in 2-D from four
Gaussian clusters, a guide with a Categorical assignment ``z`` per datum, Adam (lr 0.05)
at one particle, as Pyro's ``dirichlet_process_mixture`` tutorial trains it. For each
configuration and seed it prints the final −ELBO (mean loss of the last 50 steps) and
seconds, side by side in one run:

* ``pg.ELBO()`` with its default at ``z`` (``"auto"`` sums ``z`` out, as TraceEnum_ELBO
  would: its values stay in the data plate; see ``pyro_grad.objectives.auto_enumeration``);
* ``pg.Score("auto")`` at ``z`` (at K = 1 the pooled, bias-corrected decaying average,
  β = 0.9: the default before ``"auto"`` summed such sites out);
* Pyro's ``Trace_ELBO`` and ``TraceGraph_ELBO`` (no baseline);
* ``pg.Score()`` (no baseline), ``pg.Score("decay")`` (one average per datum, β = 0.9:
  the former default and TraceGraph_ELBO's decaying baseline), ``pg.Score("decay",
  beta=0.99)`` and ``pg.Enumerate()`` (each datum's assignment summed out in parallel,
  as TraceEnum_ELBO does: one run, T-wide tensors) at ``z``.

Run: ``.venv/bin/python benchmarks/bench_dpmm.py [--steps 1000] [--seeds 0,1,2] [--only NAME,...]``
(about 30–100 s per configuration and seed at 1,000 steps on one core).
"""

import argparse
import time
import warnings
from typing import Callable, Dict, Tuple

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO
from pyro.optim import Adam
from torch.distributions import constraints

import pyro_grad as pg

T, ALPHA, N = 6, 0.1, 200


def make_data(seed: int = 0) -> torch.Tensor:
    """50 points around each of (−8, −8), (8, 8), (1.5, 2) and (−0.5, 1)."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[-8.0, -8.0], [8.0, 8.0], [1.5, 2.0], [-0.5, 1.0]])
    return torch.cat([c + torch.randn(N // 4, 2, generator=generator) for c in centers])


def mix_weights(beta: torch.Tensor) -> torch.Tensor:
    """Stick-breaking: π_k = β_k Π_{j<k} (1 − β_j), the last stick the remainder."""
    remaining = (1 - beta).cumprod(-1)
    return F.pad(beta, (0, 1), value=1) * F.pad(remaining, (1, 0), value=1)


def model(data: torch.Tensor) -> None:
    with pyro.plate("beta_plate", T - 1):
        beta = pyro.sample("beta", dist.Beta(1, ALPHA))
    with pyro.plate("mu_plate", T):
        mu = pyro.sample("mu", dist.MultivariateNormal(torch.zeros(2), 5 * torch.eye(2)))
    with pyro.plate("data", N):
        z = pyro.sample("z", dist.Categorical(mix_weights(beta)))
        pyro.sample("obs", dist.MultivariateNormal(mu[z], torch.eye(2)), obs=data)


def guide(data: torch.Tensor) -> None:
    kappa = pyro.param("kappa", lambda: dist.Uniform(0, 2).sample([T - 1]), constraint=constraints.positive)
    tau = pyro.param("tau", lambda: dist.MultivariateNormal(torch.zeros(2), 3 * torch.eye(2)).sample([T]))
    phi = pyro.param("phi", lambda: dist.Dirichlet(torch.ones(T) / T).sample([N]), constraint=constraints.simplex)
    with pyro.plate("beta_plate", T - 1):
        pyro.sample("beta", dist.Beta(torch.ones(T - 1), kappa))
    with pyro.plate("mu_plate", T):
        pyro.sample("mu", dist.MultivariateNormal(tau, torch.eye(2)))
    with pyro.plate("data", N):
        pyro.sample("z", dist.Categorical(phi))


#: name → (loss, guide)
CONFIGS: Dict[str, Callable[[], Tuple[object, Callable]]] = {
    "pg.ELBO() default": lambda: (pg.ELBO(), guide),
    "Trace_ELBO": lambda: (Trace_ELBO(), guide),
    "TraceGraph_ELBO": lambda: (TraceGraph_ELBO(), guide),
    "pg Score(auto)": lambda: (pg.ELBO(), pg.estimators(guide, {"z": pg.Score("auto")})),
    "pg Score()": lambda: (pg.ELBO(), pg.estimators(guide, {"z": pg.Score()})),
    "pg Score(decay)": lambda: (pg.ELBO(), pg.estimators(guide, {"z": pg.Score("decay")})),
    "pg Score(decay, 0.99)": lambda: (pg.ELBO(), pg.estimators(guide, {"z": pg.Score("decay", beta=0.99)})),
    "pg Enumerate()": lambda: (pg.ELBO(), pg.estimators(guide, {"z": pg.Enumerate()})),
}


def final_loss(config: str, seed: int, steps: int, data: torch.Tensor) -> Tuple[float, float]:
    loss, program = CONFIGS[config]()
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = SVI(model, program, Adam({"lr": 0.05}), loss=loss)
    start, losses = time.perf_counter(), []
    for _ in range(steps):
        losses.append(svi.step(data))
    last = losses[-50:]
    return sum(last) / len(last), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--only", default="", help="comma-separated configuration names")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    seeds = [int(s) for s in args.seeds.split(",")]
    names = [n for n in CONFIGS if not args.only or n in args.only.split(",")]
    data = make_data(0)
    print(f"final −ELBO (mean of the last 50 of {args.steps} steps), K = 1")
    print(f"{'configuration':24s} {'mean':>8s} " + " ".join(f"{'seed ' + str(s):>9s}" for s in seeds) + "  seconds")
    for name in names:
        results = [final_loss(name, seed, args.steps, data) for seed in seeds]
        mean = sum(r[0] for r in results) / len(results)
        print(f"{name:24s} {mean:8.0f} " + " ".join(f"{r[0]:9.0f}" for r in results)
              + f"  {sum(r[1] for r in results) / len(results):.0f}")


if __name__ == "__main__":
    main()
