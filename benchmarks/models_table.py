"""Every benchmark in models/ under every estimator that applies: the exact reference
and the measured gradient mean and variance, per parameter.

Run: ``.venv/bin/python benchmarks/models_table.py``. Scalar parameters show mean,
variance and reference; tensor parameters show their total variance (summed over
elements), the norm of the reference and the largest |z| over their elements.
"""

import warnings

import pandas as pd

from pyro_grad.harness.models import registry
from pyro_grad.harness.presentation.suite import diagnose_each

DRAWS = {"conv_net": 300, "mixture": 600, "sbn": 400, "sir": 3000}


def main() -> pd.DataFrame:
    rows = []
    for name, bench in registry().items():
        for label, report in diagnose_each(bench, 10_000, DRAWS).items():
            for param, table in report.params.groupby("param", sort=False):
                scalar = len(table) == 1
                rows.append({
                    "benchmark": name,
                    "estimator": label,
                    "param": param if scalar else f"{param} ({len(table)} elements)",
                    "reference": table["reference"].iloc[0] if scalar else float((table["reference"] ** 2).sum() ** 0.5),
                    "mean": table["mean"].iloc[0] if scalar else float("nan"),
                    "variance": table["total variance"].iloc[0],
                    "max |z|": float(table["z"].abs().max()),
                    "cost": table["cost"].iloc[0],
                    "flagged": int(table["flagged"].sum()),
                    "mode": report.mode,
                })
    return pd.DataFrame(rows)


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        print(main().to_markdown(index=False, floatfmt=".4g"))
