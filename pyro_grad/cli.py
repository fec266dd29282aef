"""The ``pyro-grad`` command line."""

import argparse
import sys
from typing import List, Optional

import pandas as pd
import pyro
import pyro.poutine as poutine
import torch

from pyro_grad.gradient_samples import gradient_draws
from pyro_grad.handler import estimators
from pyro_grad.objectives.expectation import expectation_estimates
from pyro_grad.paths import Estimator, Reparam, Score


def candidate_configs(program, args) -> List[tuple]:
    """(label, estimator, particles) for every estimator that applies to all latent sites."""
    with poutine.block():
        tr = poutine.trace(program).get_trace(*args)
    fns = [s["fn"] for s in tr.nodes.values() if s["type"] == "sample" and not s["is_observed"]]
    candidates = [("Reparam", Reparam(), 1), ("Score", Score(), 1), ("Score(loo), K=4", Score("loo"), 4)]
    return [c for c in candidates if all(type(c[1]).applies_to(fn) for fn in fns)]


def gradient_table(num_draws: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """Each seed program under each applicable estimator: mean, exact, per-draw variance."""
    from models import registry

    rows = []
    for bench in registry().values():
        args = tuple(torch.tensor(float(a), requires_grad=True) for a in bench.default_args)
        exact = bench.reference_gradient(*bench.default_args)
        for label, estimator, k in candidate_configs(bench.program, args):
            program = estimators(bench.program, default=estimator)

            def estimates(a, g, program=program, k=k):
                return expectation_estimates(program, a, {}, k, g, True)

            pyro.set_rng_seed(seed)
            draws = gradient_draws(estimates, [program], args, {}, num_draws, seed=seed, sites=False)
            for name, draws in draws.samples.items():
                rows.append(
                    {
                        "program": bench.name,
                        "estimator": label,
                        "param": name,
                        "exact": float(exact[name]),
                        "mean": float(draws.mean()),
                        "std. error": float(draws.std() / num_draws**0.5),
                        "variance per draw": float(draws.var()),
                    }
                )
    return pd.DataFrame(rows)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="pyro-grad", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="gradient table of the seed programs under each estimator")
    report.add_argument("--draws", type=int, default=10_000, help="gradient draws per cell")
    args = parser.parse_args(argv)
    if args.command == "report":
        table = gradient_table(args.draws)
        print(table.to_markdown(index=False, floatfmt=".4g"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
