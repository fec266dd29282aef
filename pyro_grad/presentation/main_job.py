"""The main job: every built-in model compared under the estimators that apply to it,
one HTML page per model, and ``index.html`` linking them."""

import html
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import pandas as pd
import pyro

from pyro_grad.comparison import compare
from pyro_grad.comparison.svi_runs import CHECKPOINT_DRAWS, ConfigFailed
from pyro_grad.diagnostics import EstimatorComparison
from pyro_grad.presentation.html_report import STYLE, machine, report, write_file
from pyro_grad.presentation.suite import diagnose_each, svi_configs

#: Gradient draws per estimator for the expectation programs (fewer for the costly ones).
DRAWS = {"conv_net": 100, "sir": 500}
#: SVI steps and variance checkpoints per run for the costly SVI models: the mnist_vae
#: page at a short budget (``benchmarks/bench_vae.py`` trains it for longer). Its
#: checkpoint is the costly part: a diagnosis over 314,000 parameter elements. The
#: mixture page trains 8 configs (RODEO's network among them) for 100 steps.
STEPS = {"mnist_vae": 40, "sbn": 100, "mixture": 100}
CHECKPOINTS = {"mnist_vae": 1, "sbn": 1}


def build_reports(out: str = "reports", num_steps: int = 200, num_samples: int = 2000, seeds=(0, 1),
                  checkpoints: int = 2, log: Optional[Callable[[str], None]] = None) -> Path:
    """Write ``out/<model>.html`` for every built-in model and ``out/index.html``; each
    SVI run's gradient variance is measured at ``checkpoints`` evenly spaced steps.
    ``log`` receives one line per model as it finishes (the CLI writes them to stderr,
    so long work shows in logs and CI).
    Warnings the runs raise (Pyro's NaN-loss warnings from failing configs) are silenced
    while the job runs, and only then."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _build_reports(out, num_steps, num_samples, seeds, checkpoints, log)


def _build_reports(out: str, num_steps: int, num_samples: int, seeds: Any, checkpoints: int,
                   log: Optional[Callable[[str], None]]) -> Path:
    from pyro_grad.models import registry

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, bench in registry().items():
        start = time.perf_counter()
        pyro.clear_param_store()
        if bench.guide is None:
            counts = {name: min(DRAWS.get(name, num_samples), num_samples)}
            result = EstimatorComparison(diagnose_each(bench, num_samples, counts))
            kind = "gradient estimators"
        else:
            try:
                steps = min(STEPS.get(name, num_steps), num_steps)
                every = max(1, steps // min(CHECKPOINTS.get(name, checkpoints), checkpoints))
                result = compare(
                    bench.program, bench.guide, *bench.arguments(), configs=svi_configs(bench),
                    num_steps=steps, seeds=seeds, diagnose_every=every,
                    out=str(out_dir / "runs" / name), reset=bench.reset,
                    checkpoint_samples=min(num_samples, CHECKPOINT_DRAWS),
                )
            except ConfigFailed as failure:
                # The page shows the failed runs and their reasons beside the others.
                result = failure.comparison
            kind = "SVI"
        page = report(result, out_dir / f"{name}.html", title=f"{name}: {kind}")
        seconds = time.perf_counter() - start
        if log is not None:
            log(f"{name}: {kind}, {seconds:.1f} s, {page.name}")
        rows.append({"model": name, "comparison": kind, "seconds": seconds,
                     "description": bench.description, "page": page.name})
    table = pd.DataFrame(rows)
    links = table.assign(model=[f'<a href="{html.escape(p)}">{html.escape(m)}</a>' for m, p in zip(table.model, table.page)])
    body = (
        "<h1>pyro_grad: built-in models</h1>"
        "<p>Each page compares the estimators that apply to one model: gradient draws "
        "against the exact reference for an expectation, SVI runs for an ELBO.</p>"
        + links.drop(columns="page").to_html(index=False, escape=False, float_format=lambda v: f"{v:.1f}")
        + "<h2>Machine and versions</h2>" + machine().to_html(index=False)
    )
    index = out_dir / "index.html"
    write_file(index, (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>pyro_grad reports</title>"
        f"<style>{STYLE}</style></head><body>{body}</body></html>"
    ).encode("utf-8"))
    markdown = table.assign(model=[f"[{m}]({p.replace('.html', '.md')})" for m, p in zip(table.model, table.page)])
    write_file(out_dir / "index.md", (
        "# pyro_grad: built-in models\n\n" + markdown.drop(columns="page").to_markdown(index=False, floatfmt=".1f") + "\n"
    ).encode("utf-8"))
    return index
