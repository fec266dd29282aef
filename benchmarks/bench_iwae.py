"""The importance-weighted bound's gradients: variance as K grows, and the cost of a step.

Run: ``.venv/bin/python benchmarks/bench_iwae.py [--draws G] [--rounds R]``.

1. **Variance** (Tucker et al. 2019, Fig. 1; Rainforth et al. 2018): on the conjugate
   Gaussian (z ~ N(0, 1), x | z ~ N(z, 1), a guide N(m, s) per datum, 3 data points),
   the variance and SNR (|mean| / sd, averaged over elements) of the guide's gradient
   under Reparam() and DReG() at K = 1, 4, 16, 64. The plain gradient's SNR falls as K
   grows; DReG's does not. On a one-Bernoulli model the same for Score() and VIMCO().
2. **Speed**: one IWAE gradient step at K = 16 on a 64-datum Gaussian, timed
   interleaved (the machine is shared, so only side-by-side ratios hold): pg.IWAE with
   Reparam and with DReG, the hand-written vectorized torch for each (the limit), and
   Pyro's ``RenyiELBO(alpha=0)``, its IWAE (pathwise only).
"""

import argparse
import math
import statistics
import time
from typing import Callable, Dict

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer import RenyiELBO

import pyro_grad as pg
from pyro_grad.diagnostics.gradient_samples import gradient_draws


def gaussian(n: int):
    data = torch.linspace(-1.5, 2.0, n)

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        m = pyro.param("m", torch.zeros(len(x)))
        s = pyro.param("s", torch.full((len(x),), 0.8), constraint=constraints.positive)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(m, s))

    return model, guide, data


def bernoulli():
    def model(x):
        z = pyro.sample("z", dist.Bernoulli(0.3))
        pyro.sample("x", dist.Normal(2.0 * z, 1.0), obs=x)

    def guide(x):
        pyro.sample("z", dist.Bernoulli(logits=pyro.param("phi", torch.tensor(0.2))))

    return model, guide, torch.tensor(1.3)


def variance_table(draws: int) -> None:
    print("| model | estimator | K | variance (sum over guide elements) | SNR (mean over elements) |")
    print("|---|---|---|---|---|")
    for label, build, estimators in (("Gaussian", lambda: gaussian(3), (pg.Reparam(), pg.DReG())),
                                     ("one Bernoulli", bernoulli, (pg.Score(), pg.VIMCO()))):
        for estimator in estimators:
            for k in (1, 4, 16, 64):
                if k < estimator.min_particles:
                    continue
                pyro.clear_param_store()
                model, guide, data = build()
                wrapped = pg.estimators(guide, {"z": estimator})

                def estimates(a, g, k=k, model=model, wrapped=wrapped):
                    return pg.IWAE(num_particles=k).estimates(model, wrapped, a, {}, num_samples=g)

                samples = gradient_draws(estimates, [model, wrapped], (data,), {}, draws, seed=0).samples
                guide_draws = torch.cat([v.reshape(draws, -1) for n, v in samples.items() if n in ("m", "s", "phi")], 1)
                variance = float(guide_draws.var(0).sum())
                snr = float((guide_draws.mean(0).abs() / guide_draws.std(0)).mean())
                print(f"| {label} | {estimator!r} | {k} | {variance:.4g} | {snr:.3g} |")


def handwritten_step(dreg: bool, k: int) -> Callable:
    """The vectorized torch IWAE step on the Gaussian, pathwise or DReG (the limit)."""
    m = torch.zeros(64, requires_grad=True)
    log_s = torch.full((64,), math.log(0.8), requires_grad=True)
    optimizer = torch.optim.Adam([m, log_s], lr=1e-3)
    x = torch.linspace(-1.5, 2.0, 64)

    def step():
        optimizer.zero_grad()
        s = log_s.exp()
        z = m + s * torch.randn(k, 64)
        q_m, q_s = (m.detach(), s.detach()) if dreg else (m, s)
        log_w = dist.Normal(0.0, 1.0).log_prob(z) + dist.Normal(z, 1.0).log_prob(x) - dist.Normal(q_m, q_s).log_prob(z)
        if dreg:
            w = torch.softmax(log_w, 0).detach()
            surrogate = (w**2 * log_w).sum()
        else:
            surrogate = (torch.logsumexp(log_w, 0) - math.log(k)).sum()
        (-surrogate).backward()
        optimizer.step()

    return step


def pyro_step(loss, estimator=None) -> Callable:
    """One gradient of ``loss`` on the 64-datum Gaussian (the contenders share the
    param store's m and s: only the time is compared)."""
    model, guide, data = gaussian(64)
    if estimator is not None:
        guide = pg.estimators(guide, {"z": estimator})

    def step():
        for p in pyro.get_param_store().values():
            p.grad = None
        loss.loss_and_grads(model, guide, data)

    return step


def speed_table(rounds: int, k: int = 16) -> None:
    steps: Dict[str, Callable] = {
        "hand-written torch, pathwise": handwritten_step(False, k),
        "hand-written torch, DReG": handwritten_step(True, k),
        "pg.IWAE Reparam()": pyro_step(pg.IWAE(num_particles=k, max_plate_nesting=1), pg.Reparam()),
        "pg.IWAE DReG()": pyro_step(pg.IWAE(num_particles=k, max_plate_nesting=1), pg.DReG()),
        "Pyro RenyiELBO(alpha=0)": pyro_step(RenyiELBO(alpha=0, num_particles=k, vectorize_particles=True,
                                                       max_plate_nesting=1)),
    }
    times = {label: [] for label in steps}
    for step in steps.values():
        step()  # warm-up
    for _ in range(rounds):
        for label, step in steps.items():
            start = time.perf_counter()
            for _ in range(20):
                step()
            times[label].append((time.perf_counter() - start) / 20)
    median = {label: statistics.median(t) for label, t in times.items()}
    print(f"\n| step, K = {k}, 64 data points | ms/step | ÷ hand-written of the same estimator |")
    print("|---|---|---|")
    limit = {"pg.IWAE Reparam()": "hand-written torch, pathwise", "pg.IWAE DReG()": "hand-written torch, DReG",
             "Pyro RenyiELBO(alpha=0)": "hand-written torch, pathwise"}
    for label, seconds in median.items():
        ratio = f"{seconds / median[limit[label]]:.2f}" if label in limit else "1"
        print(f"| {label} | {1000 * seconds:.2f} | {ratio} |")
    print(f"\npg.IWAE Reparam() ÷ Pyro RenyiELBO(alpha=0): {median['pg.IWAE Reparam()'] / median['Pyro RenyiELBO(alpha=0)']:.2f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    variance_table(args.draws)
    if args.rounds > 0:
        speed_table(args.rounds)


if __name__ == "__main__":
    main()
