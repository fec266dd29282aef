"""Every discrete test program under every estimator that applies: mean, variance, cost.

Run: ``.venv/bin/python benchmarks/discrete_table.py``. 20,000 draws each (fixed seed),
against the exact gradient; ``flagged`` marks a bias of at least 4 standard errors.
"""

import warnings

import pandas as pd

from pyro_grad.harness.models import discrete, seeds
from pyro_grad.harness.presentation.suite import diagnose_each

BENCHMARKS = [next(b for b in seeds.BENCHMARKS if b.name == "two_bernoullis"), *discrete.BENCHMARKS]


def main(num_samples: int = 20_000) -> pd.DataFrame:
    rows = []
    for bench in BENCHMARKS:
        for label, report in diagnose_each(bench, num_samples).items():
            row = report.params.iloc[0]
            rows.append({"program": bench.name, "estimator": label, "exact": row["reference"],
                         "mean": row["mean"], "variance": row["variance"], "cost": row["cost"],
                         "work-normalized variance": row["work-normalized variance"], "flagged": row["flagged"]})
    return pd.DataFrame(rows)


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        print(main().to_markdown(index=False, floatfmt=".4g"))
