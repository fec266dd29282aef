"""The main job: every built-in model compared under the estimators that apply to it,
one HTML page per model, and ``index.html`` linking them."""

import concurrent.futures as cf
import html
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

import pandas as pd
import pyro

from pyro_grad.harness.comparison import compare
from pyro_grad.harness.comparison.executor import local_pool
from pyro_grad.harness.comparison.svi_compare import ConfigFailed, claims_unbiased
from pyro_grad.harness.comparison.svi_fit import CHECKPOINT_DRAWS
from pyro_grad.diagnostics import EstimatorComparison, diagnose
from pyro_grad.errors import EstimatorError, first_line
from pyro_grad.harness.presentation.html_report import machine, report, table_html, templates, write_file
from pyro_grad.harness.presentation.recommendation import beside_tuning, measured_bias, recommend
from pyro_grad.tuning.tune import tune
from pyro_grad.harness.presentation.suite import diagnose_each, svi_configs

#: The default budgets: SVI steps per fit and gradient draws per estimator.
DEFAULT_STEPS, DEFAULT_SAMPLES, DEFAULT_CHECKPOINTS = 200, 2000, 2
#: Caps on the *default* budgets that keep the main job within 5 minutes on 2 cores; a
#: budget the user gives is used for every page. Gradient draws per estimator for the
#: costly expectation programs:
DRAWS = {"conv_net": 100, "sir": 500}
#: SVI steps and variance checkpoints per fit for the costly SVI models: the mnist_vae
#: page at a short budget (``benchmarks/bench_vae.py`` trains it for longer). Its
#: checkpoint is the costly part: a diagnosis over 314,000 parameter elements. The
#: mixture page trains 8 configs (RODEO's network among them) for 100 steps.
STEPS = {"mnist_vae": 40, "sbn": 100, "mixture": 100}
CHECKPOINTS = {"mnist_vae": 1, "sbn": 1}
#: The pages that take longest, longest first (measured on 2 cores: about 190 s, 110 s
#: and 100 s; every other page under 30 s): with ``workers``, they start first.
COSTLIEST = ("mnist_vae", "sbn", "mixture")
#: Gradient draws measuring a biased SVI configuration's bias at the start (fewer for
#: the VAE, whose 314,000 parameter elements take the one-draw-at-a-time loop).
BIAS_DRAWS = {"mnist_vae": 50}
DEFAULT_BIAS_DRAWS = 500


class PageBudget(NamedTuple):
    """What one page runs: SVI ``steps`` per fit (the cheapest config's, under equal
    evaluations), gradient ``draws`` per estimator, variance ``checkpoints`` per fit,
    and the draws measuring a biased config's bias (``bias_draws``)."""

    steps: int
    draws: int
    checkpoints: int
    bias_draws: int


def page_budget(name: str, num_steps: Optional[int] = None, num_samples: Optional[int] = None,
                checkpoints: Optional[int] = None) -> PageBudget:
    """The budget of model ``name``'s page: what the user gave, for every page; where
    they gave nothing, the defaults, capped for the costly models (:data:`STEPS`,
    :data:`DRAWS`, :data:`CHECKPOINTS`, :data:`BIAS_DRAWS`)."""
    steps = num_steps if num_steps is not None else min(STEPS.get(name, DEFAULT_STEPS), DEFAULT_STEPS)
    draws = num_samples if num_samples is not None else min(DRAWS.get(name, DEFAULT_SAMPLES), DEFAULT_SAMPLES)
    given = checkpoints if checkpoints is not None else min(CHECKPOINTS.get(name, DEFAULT_CHECKPOINTS),
                                                            DEFAULT_CHECKPOINTS)
    bias = num_samples if num_samples is not None else min(BIAS_DRAWS.get(name, DEFAULT_BIAS_DRAWS), DEFAULT_SAMPLES)
    return PageBudget(steps, draws, given, bias)


def build_reports(out: str = "reports", num_steps: Optional[int] = None, num_samples: Optional[int] = None,
                  seeds=(0, 1), checkpoints: Optional[int] = None, log: Optional[Callable[[str], None]] = None,
                  models: Optional[Sequence[str]] = None, workers: Optional[int] = None,
                  compile: Any = False) -> Path:
    """Write ``out/<model>.html`` for every built-in model and ``out/index.html``; each
    SVI fit's gradient variance is measured at ``checkpoints`` evenly spaced steps.
    ``num_steps`` (SVI steps), ``num_samples`` (gradient draws) and ``checkpoints``
    given are used for every page; left None, each page takes the defaults, capped
    for the costly models (:func:`page_budget`).
    ``log`` receives one line per model as it finishes (the CLI writes them to stderr,
    so long work shows in logs and CI). ``models``: only these (by name), else every one.
    ``workers``: build that many pages at a time, each in its own local process.
    SVI pages compare their configs at equal program evaluations (``budget="evaluations"``),
    their losses taking ``compile=`` (:func:`~pyro_grad.compare`'s; by default uncompiled,
    which measured faster on these fits of a few hundred steps).
    Warnings the runs raise (Pyro's NaN-loss warnings from failing configs) are silenced
    while the job runs, and only then."""
    from pyro_grad.harness.models import registry

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    benchmarks = registry()
    unknown = sorted(set(models or ()) - set(benchmarks))
    if unknown:
        raise EstimatorError(f"no built-in model named {unknown}; the models are {sorted(benchmarks)}")
    names = [name for name in benchmarks if models is None or name in models]
    settings = dict(out=str(out_dir), num_steps=num_steps, num_samples=num_samples, seeds=seeds,
                    checkpoints=checkpoints, compile=compile)
    rows: Dict[str, Dict[str, Any]] = {}

    def finished(row: Dict[str, Any]) -> None:
        rows[row["model"]] = row
        if log is not None:
            log(f"{row['model']}: {row['comparison']}, {row['seconds']:.1f} s, {row['page']}")

    if workers is None:
        for name in names:
            finished(build_page(name, **settings))
    else:
        # The costliest pages first, so that none of them starts last.
        costly_first = sorted(names, key=lambda name: COSTLIEST.index(name) if name in COSTLIEST else len(COSTLIEST))
        with local_pool(workers) as pool:
            for future in cf.as_completed([pool.submit(build_page, name, **settings) for name in costly_first]):
                finished(future.result())
    return _write_index(out_dir, [rows[name] for name in names])


def build_page(name: str, out: str, num_steps: Optional[int], num_samples: Optional[int], seeds: Any,
               checkpoints: Optional[int], compile: Any = False) -> Dict[str, Any]:
    """One built-in model's page, ``out/<name>.html``, and its row of the index."""
    from pyro_grad.harness.models import registry

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        budget = page_budget(name, num_steps, num_samples, checkpoints)
        return _build_page(registry()[name], name, Path(out), budget, seeds, compile)


def _build_page(bench: Any, name: str, out_dir: Path, budget: PageBudget, seeds: Any,
                compile: Any = False) -> Dict[str, Any]:
    start = time.perf_counter()
    pyro.clear_param_store()
    bias, beside = None, None
    if bench.guide is None:
        result = EstimatorComparison(diagnose_each(bench, budget.draws, {name: budget.draws}))
        kind = "gradient estimators"
    else:
        configs = svi_configs(bench)
        try:
            every = max(1, budget.steps // budget.checkpoints)
            result = compare(
                bench.program, bench.guide, *bench.arguments(), configs=configs,
                num_steps=budget.steps, seeds=seeds, diagnose_every=every,
                out=str(out_dir / "fits" / name), reset=bench.reset,
                checkpoint_samples=min(budget.draws, CHECKPOINT_DRAWS), budget="evaluations", compile=compile,
            )
        except ConfigFailed as failure:
            # The page shows the failed fits and their reasons beside the others.
            result = failure.comparison
        if bench.log_evidence is not None:
            result.log_evidence = bench.log_evidence()
        bias = biased_configs_bias(bench, configs, max(2, budget.bias_draws))
        beside = tuned_beside(bench, result, bias)
        kind = "SVI"
    page = report(result, out_dir / f"{name}.html", title=f"{name}: {kind}", bias=bias, beside=beside)
    return {"model": name, "comparison": kind, "recommended": recommend(result, bias).best or "none",
            "seconds": time.perf_counter() - start, "description": bench.description, "page": page.name}


def _write_index(out_dir: Path, rows: List[Dict[str, Any]]) -> Path:
    """``index.html`` and ``index.md``: a row per page, linking it."""
    table = pd.DataFrame(rows)
    environment = templates()
    # The page escapes every cell itself, since the model's is a link.
    links = table.assign(model=[f'<a href="{html.escape(p)}">{html.escape(m)}</a>'
                                for m, p in zip(table.model, table.page)],
                         recommended=table.recommended.map(html.escape),
                         description=table.description.map(html.escape),
                         comparison=table.comparison.map(html.escape))
    index = out_dir / "index.html"
    write_file(index, environment.get_template("index.html").render(
        title="pyro_grad: built-in models", machine=table_html(machine()),
        table=links.drop(columns="page").to_html(index=False, escape=False, border=0,
                                                 float_format=lambda v: f"{v:.1f}"),
    ).encode("utf-8"))
    markdown = table.assign(model=[f"[{m}]({p.replace('.html', '.md')})" for m, p in zip(table.model, table.page)])
    write_file(out_dir / "index.md", environment.get_template("index.md").render(
        title="pyro_grad: built-in models",
        table=markdown.drop(columns="page").to_markdown(index=False, floatfmt=".1f"),
    ).encode("utf-8"))
    return index


#: Gradient draws per candidate of the pg.tune run beside an SVI page's verdict.
TUNE_DRAWS = 50


def tuned_beside(bench: Any, result: Any, bias: Dict[str, str]) -> str:
    """What ``pg.tune`` chooses for the page's program at the start (one round of
    :data:`TUNE_DRAWS` draws per candidate, the page's particles), beside its verdict."""
    pyro.clear_param_store()
    if bench.reset is not None:
        bench.reset()
    try:
        tuning = tune(bench.program, *bench.arguments(), guide=bench.guide,
                      num_particles=result.settings.get("num_particles", 4), num_samples=TUNE_DRAWS, max_rounds=1)
    except EstimatorError as error:
        return f"pg.tune could not measure this program: {first_line(error)}"
    finally:
        pyro.clear_param_store()
    return beside_tuning(result, recommend(result, bias), tuning, TUNE_DRAWS)


def biased_configs_bias(bench: Any, configs: Dict[str, Any], num_samples: int) -> Dict[str, str]:
    """The measured bias of each biased SVI configuration's gradient at the starting
    point, against the exact gradient by enumeration; where enumeration is refused (too
    many latent values), why it was not measured."""
    measured = {}
    for label, config in configs.items():
        if claims_unbiased(config) is not False:
            continue
        pyro.clear_param_store()
        try:
            report = diagnose(bench.program, *bench.arguments(), guide=bench.guide, estimators=config,
                              num_samples=num_samples, reference="enumerate", sites=False)
        except EstimatorError as error:
            measured[label] = f"bias not measured ({first_line(error)})"
            continue
        measured[label] = f"at the start, {measured_bias(report)}"
    pyro.clear_param_store()
    return measured
