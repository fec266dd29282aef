"""pg.tune across the benchmark suite: is the tuned config as quiet per unit of work as
the best fixed unbiased choice?

For every model, each fixed unbiased candidate of the suite (one estimator at every
site, ``pyro_grad.harness.presentation.suite.candidates``, at its own particles) and the tuned
config (``pg.tune`` at K particles, measured again on fresh draws) are diagnosed with
the same draws and seed. The work-normalized variance of a config is Σ over parameters
of (total gradient variance × evaluations per draw). The table prints each model's
best fixed choice, the tuned config, their ratio (target: ≤ 1.2) and the seconds tuning
took.

Run: ``.venv/bin/python benchmarks/bench_tune.py [--draws 1000] [--k 4] [--only coin,sbn]``.
``mnist_vae`` (314,000 parameter elements, so the slow loop path) runs only when named.
"""

import argparse
import math
import time
import warnings

import pandas as pd
import pyro

import pyro_grad as pg
from pyro_grad.harness.models import registry
from pyro_grad.harness.presentation.suite import candidates

#: Draws per config for the costly models (one draw runs a network or an epidemic).
DRAWS = {"conv_net": 200, "sir": 300, "mnist_vae": 20}


def described(config: dict) -> str:
    """``site: estimator`` pairs, or per estimator the sites (or how many) that use it."""
    if len(config) <= 3:
        return ", ".join(f"{site}: {estimator!r}" for site, estimator in config.items())
    by_estimator = {}
    for site, estimator in config.items():
        by_estimator.setdefault(repr(estimator), []).append(site)
    return "; ".join(f"{e} at {len(sites)} sites" if len(sites) > 3 else f"{e} at {', '.join(sites)}"
                     for e, sites in by_estimator.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=1000, help="gradient draws per config")
    parser.add_argument("--k", type=int, default=4, help="particles of the tuned config")
    parser.add_argument("--tune-draws", type=int, default=200, help="draws per candidate while tuning")
    parser.add_argument("--only", default="", help="comma-separated model names")
    options = parser.parse_args()
    warnings.filterwarnings("ignore")
    chosen = [n for n in options.only.split(",") if n]
    rows = []
    for name, bench in registry().items():
        if (chosen and name not in chosen) or (not chosen and name == "mnist_vae"):
            continue
        draws = min(DRAWS.get(name, options.draws), options.draws)
        fixed = {}
        for candidate in candidates(bench):
            if not candidate.unbiased:
                continue
            pyro.clear_param_store()
            report = pg.diagnose(bench.program, *bench.arguments(), guide=bench.guide, estimators=candidate.config,
                                 num_particles=candidate.particles, num_samples=draws, sites=False)
            fixed[candidate.label] = report.work_normalized_variance()
        pyro.clear_param_store()
        start = time.perf_counter()
        tuning = pg.tune(bench.program, *bench.arguments(), guide=bench.guide, num_particles=options.k,
                         num_samples=min(options.tune_draws, draws))
        seconds = time.perf_counter() - start
        pyro.clear_param_store()
        report = pg.diagnose(bench.program, *bench.arguments(), guide=bench.guide, estimators=tuning.config,
                             num_particles=options.k, num_samples=draws, sites=False, seed=1)
        tuned = report.work_normalized_variance()
        best = min(fixed, key=fixed.get)
        rows.append({
            "model": name, "best fixed": best, "its work-norm. variance": fixed[best],
            "tuned": described(tuning.config),
            "tuned work-norm. variance": tuned,
            # Zero variance (an exact estimator) against zero: as good.
            "ratio": tuned / fixed[best] if fixed[best] > 0 else (1.0 if tuned == 0 else math.inf),
            "tuning seconds": seconds,
        })
        print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    table = pd.DataFrame(rows)
    print()
    print(table.to_markdown(index=False, floatfmt=".3g"))
    print(f"\nmodels within 1.2x of the best fixed choice: {(table['ratio'] <= 1.2).sum()} of {len(table)}")


if __name__ == "__main__":
    main()
