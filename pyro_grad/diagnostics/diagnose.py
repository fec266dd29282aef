"""``diagnose`` and ``compare_estimators``: how right and how noisy is a gradient estimator?"""

import math
import time
from collections.abc import Mapping
from typing import Any, Callable, Dict, Optional, Union

import pandas as pd
import torch

from pyro_grad.diagnostics.finite_differences import FiniteDifferences
from pyro_grad.diagnostics.references import Reference, resolve_reference
from pyro_grad.diagnostics.report import EstimatorComparison, GradientReport
from pyro_grad.diagnostics.statistics import covariance_share, element_table, with_flags
from pyro_grad.errors import EstimatorError
from pyro_grad.diagnostics.gradient_samples import Draws, GradientTask, find_targets, gradient_draws
from pyro_grad.handler import Config, with_config
from pyro_grad.engine.particles import guess_max_plate_nesting
from pyro_grad.engine.surrogate import check_num_particles
from pyro_grad.objectives.objective import Objective, objective_type
from pyro_grad.gradient_estimators import Estimator

CandidateConfig = Union[None, Config, Estimator, FiniteDifferences]


def _model_and_guide(objective: Objective, fn: Callable, program: Callable) -> tuple:
    """``(model, guide)`` with ``program`` in place of the program whose sites the
    estimators choose: ``fn`` itself for ``E[f]``, the guide of model ``fn`` for a bound."""
    return (fn, program) if objective.takes_guide else (program, None)


def _plate_nesting(programs, args, kwargs):
    """Guessed once per comparison, so that no draw pays for the guess again."""
    return max(guess_max_plate_nesting(program, args, kwargs) for program in programs)


def _build_report(
    draws: Draws,
    targets,
    references: Dict[str, torch.Tensor],
    cost: int,
    seconds: float,
    label: str,
    unbiased: bool,
    num_particles: int = 1,
    seed: int = 0,
) -> GradientReport:
    num_samples = next(iter(draws.samples.values())).shape[0]
    shares = {site: _site_share(draws, targets, site) for site in draws.estimators}
    param_tables, site_tables = [], []
    for target in targets:
        if target.name not in draws.samples:
            continue
        x = draws.samples[target.name]
        table = element_table(target.name, x, references.get(target.name))
        if target.kind == "site":
            estimator = draws.estimators.get(target.site)
            described = pd.DataFrame({
                "site": target.site,
                "distribution": target.distribution,
                "estimator": repr(estimator),
                "why": draws.reasons.get(target.site, ""),
                "unbiased": getattr(estimator, "unbiased", None),
                "evaluations per particle": draws.site_evaluations.get(target.site),
                "parameter": target.param,
            }, index=table.index)
            site_tables.append(pd.concat([described, table.drop(columns=["param", "element"])], axis=1)
                               .assign(**{"variance share": shares.get(target.site, math.nan)}))
        else:
            total = float(x.double().reshape(num_samples, -1).var(0).sum()) if num_samples > 1 else 0.0
            param_tables.append(table.assign(**{
                "unbiased (claimed)": unbiased,
                "total variance": total,
                "cost": cost,
                "seconds per draw": seconds / num_samples,
                "work-normalized variance": total * cost,
            }))
    return GradientReport(
        # One family for the bias flags: every parameter element of the report.
        params=with_flags(pd.concat(param_tables, ignore_index=True)) if param_tables else pd.DataFrame(),
        sites=pd.concat(site_tables, ignore_index=True) if site_tables else pd.DataFrame(),
        samples=draws.samples,
        mode=draws.mode,
        references=references,
        label=label,
        shares=shares,
        site_evaluations=dict(draws.site_evaluations),
        estimators=dict(draws.estimators),
        reasons=dict(draws.reasons),
        num_particles=num_particles,
        seed=seed,
    )


def _site_share(draws: Draws, targets, site: str) -> float:
    """Share of the total parameter-gradient variance carried by ``site``'s score term:
    ``Σ Cov(part_site, g) / Σ Var(g)`` over every parameter element. The shares of all
    score-path sites and the pathwise remainder sum to 1; a pathwise site's draws are
    inseparable from the others', so its share is NaN."""
    parts, totals = [], []
    for t in targets:
        if t.kind == "site" or t.name not in draws.samples:
            continue
        part = draws.score_parts.get((t.name, site))
        if part is None:
            return math.nan
        parts.append(part.reshape(part.shape[0], -1))
        totals.append(draws.samples[t.name].reshape(part.shape[0], -1))
    if not parts:
        return math.nan
    return covariance_share(torch.cat(parts, 1), torch.cat(totals, 1))


def diagnose(fn: Callable, *args: Any, estimators: CandidateConfig = None, **settings: Any) -> GradientReport:
    """Draw ``num_samples`` independent gradient estimates and summarize them.

    ``estimators`` is an estimators config (site → estimator, a callable, or one
    estimator for every site) applied to the guide, or to ``fn`` when there is no guide.
    Every other keyword is :func:`compare_estimators`' (``guide``, ``objective``,
    ``num_samples=1000``, ``reference``, ``num_particles=1``, ``vectorize=True``,
    ``seed=0``, ``sites=True``) or, beyond those, the program's own:

    * ``objective`` is :func:`~pyro_grad.expectation` (the gradient of
      ``E[fn(*args, **kwargs)]``, the default without ``guide``) or an ELBO class such
      as :class:`~pyro_grad.ELBO` (the ELBO gradient of model ``fn`` and ``guide``, the
      default with one).
    * Each draw uses ``num_particles`` particles. The draws are made in one vectorized
      pass per parameter element (forward-mode AD) and fall back to a loop where that
      cannot run (``report.mode`` says which); ``vectorize=False`` forces the loop.
    * ``reference`` is None, a dict or callable of exact gradients, ``"enumerate"``
      (exact, by summing every discrete site over its support) or ``"reparam"`` (a
      high-sample pathwise estimate).
    * Draws replay a fixed ``seed`` and leave decaying baselines untouched; with
      ``sites``, each latent site's own distribution parameters are targets too.
    """
    if isinstance(estimators, FiniteDifferences):
        raise EstimatorError("FiniteDifferences is a candidate for compare_estimators, not a site estimator")
    label = "default" if estimators is None else repr(estimators)
    comparison = compare_estimators(fn, *args, candidates={label: estimators}, **settings)
    return next(iter(comparison.reports.values()))


def compare_estimators(
    fn: Callable,
    *args: Any,
    candidates: Mapping,
    guide: Optional[Callable] = None,
    objective: Any = None,
    num_samples: int = 1000,
    reference: Reference = None,
    num_particles: int = 1,
    vectorize: bool = True,
    seed: int = 0,
    sites: bool = True,
    **kwargs: Any,
) -> EstimatorComparison:
    """:func:`diagnose` each candidate with the same seed and reference, side by side
    (the settings are explained there; ``**kwargs`` are the program's).

    ``candidates`` maps a label to an estimators config (as ``diagnose``'s
    ``estimators``; None for the default), or to :class:`FiniteDifferences` (central
    differences with step ε, with independent or common random numbers). The
    tutorial's figures are one call each, e.g. ``candidates={"ε=1":
    FiniteDifferences(1.0), "ε=0.1": FiniteDifferences(0.1), "autograd": None}``.
    """
    check_num_particles(num_particles)
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 2:
        raise EstimatorError(f"num_samples must be an integer >= 2, got {num_samples!r}")
    if not isinstance(candidates, Mapping) or not candidates:
        raise EstimatorError("candidates must be a non-empty dict of label -> estimators config")
    kind = objective_type(objective, guide)
    base = kind.configured(num_particles, vectorize, None).chosen_program(fn, guide)
    programs = kind.configured(num_particles, vectorize, None).programs(fn, guide)
    targets, params = find_targets(programs, args, kwargs, sites=sites)
    references = resolve_reference(reference, kind, fn, guide, args, kwargs, targets, params, num_samples,
                                   num_particles)
    nesting = _plate_nesting(programs, args, kwargs)

    def samples(program: Callable):
        """``samples(args, G)``: ``G`` independent surrogates of a fresh objective (so
        that no state, a decaying baseline's say, carries from one candidate to the next)."""
        measured = kind.configured(num_particles, vectorize, nesting)
        model, chosen = _model_and_guide(measured, fn, program)
        return lambda a, g: measured.estimates(model, chosen, a, kwargs, num_samples=g)

    reports = {}
    for label, candidate in candidates.items():
        if isinstance(candidate, FiniteDifferences):
            start = time.perf_counter()
            draws = candidate.draws(GradientTask(samples(base), args, targets, params), num_samples, seed)
            seconds = time.perf_counter() - start
            cost, unbiased = num_particles * draws.evaluations, candidate.unbiased
        else:
            program = with_config(base, candidate)
            start = time.perf_counter()
            draws = gradient_draws(
                samples(program), [p for p in _model_and_guide(kind, fn, program) if p is not None], args, kwargs,
                num_samples, seed=seed, mode="auto" if vectorize else "loop", sites=sites,
                targets=(targets, params),
            )
            seconds = time.perf_counter() - start
            cost = num_particles * draws.evaluations
            unbiased = all(e.unbiased for e in draws.estimators.values())
        reports[label] = _build_report(draws, targets, references, cost, seconds, str(label), unbiased,
                                       num_particles, seed)
    return EstimatorComparison(reports)
