"""The verdict a report opens with: which configuration to use, the runner-up and how
much worse it is, and the biased candidates named as such with their measured bias.

* Gradient draws (``E[f]``): the unbiased candidate (claimed, and not flagged against the
  exact reference) with the lowest work-normalized variance: Σ over parameters of the
  total gradient variance × program evaluations per draw.
* SVI fits: the unbiased configuration that reaches the target ELBO fastest, in mean
  seconds over seeds (with their spread), among those that reach it in every seed.
* A :class:`~pyro_grad.tuning.tune.Tuning`: its choice at each site, and each site's
  runner-up in the last round.
"""

import math
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional

import pandas as pd

from pyro_grad.harness.comparison.results import Comparison
from pyro_grad.diagnostics.report import EstimatorComparison, GradientReport
from pyro_grad.tuning.tune import Tuning


@dataclass
class Recommendation:
    """``best`` (a label, or None when nothing qualifies), ``lines``: the verdict in
    sentences, first the recommendation, then the runner-up, then the biased ones."""

    best: Optional[str]
    lines: List[str] = field(default_factory=list)


def _figure(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.3g}"


def measured_bias(report: GradientReport) -> Optional[str]:
    """The bias a report measured against its reference, in words; None without one."""
    params = report.params
    if "flagged" not in params:
        return None
    flagged = int(params["flagged"].sum())
    largest_z = float(params["z"].abs().max())
    largest = float(params["bias"].abs().max())
    return (f"flagged on {flagged} of {len(params)} elements (Holm-corrected), largest |z| {_figure(largest_z)}, "
            f"largest |bias| {_figure(largest)}")


def for_gradient_draws(reports: Mapping[str, GradientReport]) -> Recommendation:
    """Recommend among candidates diagnosed side by side (an ``EstimatorComparison``'s reports)."""
    rows = []
    for label, report in reports.items():
        params = report.params
        claimed = bool(params["unbiased (claimed)"].all()) if len(params) else False
        flagged = bool(params["flagged"].any()) if "flagged" in params else False
        rows.append({"label": label, "claimed": claimed, "flagged": flagged,
                     "variance": report.work_normalized_variance(), "bias": measured_bias(report)})
    table = pd.DataFrame(rows)
    unbiased = table[table["claimed"] & ~table["flagged"]].sort_values("variance", kind="stable")
    lines = []
    best = None
    if len(unbiased):
        best = unbiased.iloc[0]["label"]
        lines.append(f"Recommended: {best}, the lowest work-normalized variance "
                     f"({_figure(unbiased.iloc[0]['variance'])}: total gradient variance × program evaluations "
                     f"per draw) among the {len(unbiased)} unbiased candidates.")
        if len(unbiased) > 1:
            runner = unbiased.iloc[1]
            lines.append(f"Runner-up: {runner['label']}, {_ratio(runner['variance'], unbiased.iloc[0]['variance'])} "
                         "the recommended work-normalized variance.")
    else:
        lines.append("No candidate is unbiased (claimed and not flagged): nothing to recommend.")
    for _, row in table[table["claimed"] & table["flagged"]].iterrows():
        lines.append(f"Claims to be unbiased but measured biased: {row['label']} ({row['bias']}).")
    for _, row in table[~table["claimed"]].iterrows():
        bias = row["bias"] or "no exact reference to measure it against"
        lines.append(f"Biased (unbiased=False): {row['label']}: {bias}.")
    return Recommendation(best, lines)


def _ratio(value: float, best: float) -> str:
    if not (math.isfinite(value) and math.isfinite(best)):
        return "nan×"
    if best > 0:
        return f"{value / best:.3g}×"
    return "equal to" if value == 0 else "infinitely many times"


def for_svi_fits(comparison: Comparison, bias: Optional[Mapping[str, str]] = None) -> Recommendation:
    """Recommend among SVI configurations: the fastest to the target ELBO, in seconds
    (mean ± sd over seeds), of those that claim to be unbiased and reach it in every
    seed. ``bias``: a measured bias in words per biased configuration."""
    target = comparison.target()
    hits = comparison.to_target(target)
    lines, candidates = [], []
    for label in comparison.labels:
        claimed = comparison.unbiased.get(label)
        fits = hits[hits["config"] == label]
        seeds = sum(1 for key in comparison.fits if key[0] == label)
        # A failed fit never reached the target: only configs that reached it in every seed.
        if claimed and len(fits) == seeds and fits["seconds"].notna().all():
            candidates.append((float(fits["seconds"].mean()), float(fits["seconds"].std(ddof=0)),
                               float(fits["evaluations"].mean()), label, len(fits)))
    candidates.sort()
    best = None
    if candidates:
        seconds, spread, evaluations, best, seeds = candidates[0]
        lines.append(f"Recommended: {best}, the fastest unbiased configuration to the target ELBO "
                     f"{_figure(target)} (the lowest final ELBO of any configuration): {_figure(seconds)} ± "
                     f"{_figure(spread)} s over {seeds} seed(s), {_figure(evaluations)} program evaluations.")
        if len(candidates) > 1:
            runner_seconds, runner_spread, _, runner, _ = candidates[1]
            lines.append(f"Runner-up: {runner}, {_figure(runner_seconds)} ± {_figure(runner_spread)} s, "
                         f"{_ratio(runner_seconds, seconds)} the recommended time.")
    else:
        lines.append("No unbiased configuration reached the target ELBO in every seed: nothing to recommend.")
    for label in comparison.labels:
        if comparison.unbiased.get(label) is False:
            measured = (bias or {}).get(label, "bias not measured")
            lines.append(f"Biased (unbiased=False): {label}: {measured}.")
        elif comparison.unbiased.get(label) is None:
            lines.append(f"Unknown whether unbiased (a callable config): {label}.")
    return Recommendation(best, lines)


def for_tuning(tuning: Tuning) -> Recommendation:
    """The tuned config, and at each site the runner-up of the last round."""
    metric = "work-normalized variance" if tuning.metric == "evaluations" else "time-normalized variance"
    chosen = ", ".join(f"{site}: {estimator!r}" for site, estimator in tuning.config.items())
    lines = [f"Recommended: {chosen} (lowest {metric} per site, after {tuning.rounds} round(s))."]
    table = tuning.table
    for site in dict.fromkeys(table["site"]) if len(table) else []:
        rows = table[(table["site"] == site) & (table["round"] == table[table["site"] == site]["round"].max())]
        ranked = rows[rows["eligible"] & (rows["refused"] == "")].sort_values(metric, kind="stable")
        if len(ranked) > 1:
            first, second = ranked.iloc[0], ranked.iloc[1]
            lines.append(f"Runner-up at {site}: {second['estimator']}, {_ratio(second[metric], first[metric])} "
                         f"the {metric}.")
        for _, row in rows[~rows["unbiased"]].iterrows():
            lines.append(f"Biased (unbiased=False) at {site}: {row['estimator']}, {metric} "
                         f"{_figure(row[metric])}{'' if row['eligible'] else ', not eligible'}.")
    for site, estimator in tuning.fixed.items():
        lines.append(f"Fixed by the program at {site}: {estimator!r}.")
    return Recommendation(", ".join(f"{s}: {e!r}" for s, e in tuning.config.items()), lines)


def recommend(obj: Any, bias: Optional[Mapping[str, str]] = None) -> Recommendation:
    """The recommendation for whatever a report shows (see the module's docstring)."""
    if isinstance(obj, Comparison):
        return for_svi_fits(obj, bias)
    if isinstance(obj, EstimatorComparison):
        return for_gradient_draws(obj.reports)
    if isinstance(obj, GradientReport):
        return for_gradient_draws({obj.label: obj})
    if isinstance(obj, Tuning):
        return for_tuning(obj)
    raise TypeError(f"nothing to recommend from a {type(obj).__name__}")
