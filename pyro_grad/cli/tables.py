"""The tables ``pyro-grad table`` and ``pyro-grad models`` print."""

import pandas as pd


def gradient_table(num_samples: int = 10_000, seed: int = 0) -> pd.DataFrame:
    """Each seed program under each applicable estimator: mean, exact, variance."""
    from pyro_grad.harness.models import seeds
    from pyro_grad.harness.presentation.suite import diagnose_each

    tables = []
    for bench in seeds.BENCHMARKS:
        for label, report in diagnose_each(bench, num_samples, seed=seed).items():
            table = report.params[
                ["param", "unbiased (claimed)", "reference", "mean", "std. error", "variance", "cost", "flagged"]
            ]
            tables.append(table.assign(program=bench.name, estimator=label))
    table = pd.concat(tables, ignore_index=True)
    return table[["program", "estimator"] + [c for c in table.columns if c not in ("program", "estimator")]]


def models_table() -> pd.DataFrame:
    """One row per built-in benchmark: its name, objective, arguments and description."""
    from pyro_grad.harness.models import registry

    return pd.DataFrame(
        [
            {
                "name": b.name,
                "objective": "ELBO" if b.guide is not None else "E[f]",
                "arguments": ", ".join(b.arg_names),
                "exact reference": b.reference_gradient is not None,
                "description": b.description,
            }
            for b in registry().values()
        ]
    )
