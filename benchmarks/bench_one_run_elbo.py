"""The one-run engine in ``pg.ELBO``, on a guide whose T discrete sites form a chain.

Model: ``z_t ~ Bernoulli(σ(1.5·z_{t−1} − 0.5))``, ``x_t ~ Normal(z_t, 1)`` observed, for
``t = 1..T``; guide: ``z_t ~ Bernoulli(σ(φ_t + w·z_{t−1}))`` with ``φ`` and ``w`` learned.
Each guide site moves every later one's logit, so the re-run engine pays 1 + T runs per
particle and the one-run engine 2. For each T and estimator, ``pg.diagnose`` (one thread,
``--draws`` draws of ``--particles`` particles, seed 0, the exact gradient by enumeration
as reference) prints side by side: program evaluations per draw, seconds per draw, the
total gradient variance, work-normalized variance (× evaluations) and time-normalized
variance (× seconds), both relative to ``Score("loo")``'s, and the largest |z| against
the exact gradient (Bonferroni over the parameter elements).

Run: ``.venv/bin/python benchmarks/bench_one_run_elbo.py [--t 5,10,20] [--draws 1000]
[--particles 2]``.
"""

import argparse
from typing import Callable, Dict

import pyro
import pyro.distributions as dist
import torch

import pyro_grad as pg

ESTIMATORS: Dict[str, Callable[[], pg.Estimator]] = {
    "Score(loo)": lambda: pg.Score("loo"),
    "MeasureValued (re-run)": lambda: pg.MeasureValued(),
    "MeasureValued (one-run)": lambda: pg.MeasureValued(engine="one-run"),
    "DisARM (re-run)": lambda: pg.DisARM(),
    "DisARM (one-run)": lambda: pg.DisARM(engine="one-run"),
}


def chain(steps: int):
    """The model, the guide and data of one chain of ``steps`` sites (module docs)."""
    data = torch.linspace(-0.5, 1.5, steps)

    def model(x):
        z = torch.zeros(())
        for t in range(steps):
            z = pyro.sample(f"z_{t}", dist.Bernoulli(torch.sigmoid(1.5 * z - 0.5)))
            pyro.sample(f"x_{t}", dist.Normal(z, 1.0), obs=x[t])

    def guide(x):
        phi = pyro.param("phi", torch.zeros(steps))
        w = pyro.param("w", torch.tensor(0.5))
        z = torch.zeros(())
        for t in range(steps):
            z = pyro.sample(f"z_{t}", dist.Bernoulli(logits=phi[t] + w * z))

    return model, guide, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--t", default="5,10,20")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--particles", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"guide chain of T Bernoulli sites; {args.draws} draws of {args.particles} particles, one thread")
    print(f"{'T':>3s} {'estimator':24s} {'evals':>6s} {'s/draw':>8s} {'variance':>10s} {'work ÷ Score':>12s} "
          f"{'time ÷ Score':>12s} {'max |z|':>8s}")
    for steps in [int(v) for v in args.t.split(",")]:
        model, guide, data = chain(steps)
        # A throwaway diagnosis keeps one-time costs (imports, caches) out of the first row's seconds.
        pyro.clear_param_store()
        pg.diagnose(model, data, guide=guide, objective=pg.ELBO, num_particles=args.particles, num_samples=2,
                    sites=False)
        rows = {}
        for name, make in ESTIMATORS.items():
            pyro.clear_param_store()
            report = pg.diagnose(model, data, guide=pg.estimators(guide, default=make()), objective=pg.ELBO,
                                 num_particles=args.particles, num_samples=args.draws, reference="enumerate",
                                 sites=False)
            seconds = float(report.params["seconds per draw"].iloc[0])
            rows[name] = (float(report.params["cost"].iloc[0]), seconds, report.total_variance(),
                          float(report.params["z"].abs().max()))
        base = rows["Score(loo)"]
        for name, (cost, seconds, variance, z) in rows.items():
            print(f"{steps:3d} {name:24s} {cost:6.0f} {seconds:8.4f} {variance:10.4g} "
                  f"{variance * cost / (base[2] * base[0]):12.3g} {variance * seconds / (base[2] * base[1]):12.3g} "
                  f"{z:8.2f}")


if __name__ == "__main__":
    main()
