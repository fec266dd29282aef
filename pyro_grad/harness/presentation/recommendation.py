"""The verdict a report opens with: which configuration to use, the runner-up and how
much worse it is, and the biased candidates named as such with their measured bias.

Every verdict rests on evidence and is deterministic: identical numbers give identical
recommendations, and where the data cannot tell the leaders apart the verdict says so
and names the cheaper one.

* Gradient draws (``E[f]``): the unbiased candidate (claimed, and not flagged against the
  exact reference) with the lowest work-normalized variance: Σ over parameters of the
  total gradient variance × program evaluations per draw. Two candidates whose ratio
  is within :data:`SEPARATION_Z` standard errors of 1 (on the log scale, for
  near-Gaussian draws: a variance from N draws has relative standard error √(2/(N−1)))
  are indistinguishable.
* SVI fits: the unbiased configuration that reaches the target ELBO (where the
  configurations separate: :meth:`~pyro_grad.harness.comparison.results.Comparison.target`)
  in the fewest program evaluations, the budget's unit, mean over seeds, among those
  that reach it in every seed. Seconds are shown, never ranked: they vary from run to
  run. A configuration with fewer than :data:`MIN_RACE_STEPS` steps in its budget is
  left out of the race with a note. Leaders whose mean evaluations differ by less
  than :data:`SEPARATION_Z` standard errors (over seeds), or by less than the curves'
  smoothing window resolves, are indistinguishable.
* A :class:`~pyro_grad.tuning.tune.Tuning`: its choice at each site, and each site's
  runner-up in the last round.
"""

import math
from dataclasses import dataclass, field
from typing import Any, List, Mapping, NamedTuple, Optional

import numpy as np
import pandas as pd

from pyro_grad.harness.comparison.results import TARGET_FRACTION, Comparison
from pyro_grad.diagnostics.report import EstimatorComparison, GradientReport
from pyro_grad.tuning.tune import Tuning


#: An SVI configuration needs this many steps for its curve to count in the race.
MIN_RACE_STEPS = 10
#: Leaders are told apart when their difference exceeds this many standard errors.
SEPARATION_Z = 2.0


@dataclass
class Recommendation:
    """``best`` (a label, or None when nothing qualifies), ``lines``: the verdict in
    sentences, first the recommendation, then the runner-up, then the biased ones;
    ``tied``: the labels the data cannot tell apart from ``best`` (``best`` first)."""

    best: Optional[str]
    lines: List[str] = field(default_factory=list)
    tied: List[str] = field(default_factory=list)


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
        draws = next(iter(report.samples.values())).shape[0] if report.samples else 0
        cost = float(params["cost"].iloc[0]) if len(params) else math.nan
        rows.append({"label": label, "claimed": claimed, "flagged": flagged, "draws": draws, "cost": cost,
                     "variance": report.work_normalized_variance(), "bias": measured_bias(report)})
    # Ties break by the candidates' order (the registry's: the simpler first), never by chance.
    table = pd.DataFrame(rows).assign(position=range(len(rows)))
    unbiased = table[table["claimed"] & ~table["flagged"]].sort_values(["variance", "cost", "position"],
                                                                         kind="stable")
    lines, tied = [], []
    best = None
    if len(unbiased):
        first = unbiased.iloc[0]
        tied = [r["label"] for _, r in unbiased.iterrows() if not _variances_differ(r, first)]
        leaders = unbiased[unbiased["label"].isin(tied)].sort_values(["cost", "variance", "position"], kind="stable")
        best = leaders.iloc[0]["label"]
        chosen = leaders.iloc[0]
        if len(tied) > 1:
            lines.append(f"Recommended: {best}, the cheapest ({_figure(chosen['cost'])} program evaluations per "
                         f"draw) of {_names(tied)}, whose work-normalized variances the {int(first['draws'])} draws "
                         f"cannot tell apart (ratios within {SEPARATION_Z:g} standard errors of 1); more draws "
                         "would separate them.")
        else:
            lines.append(f"Recommended: {best}, the lowest work-normalized variance "
                         f"({_figure(chosen['variance'])}: total gradient variance × program evaluations "
                         f"per draw) among the {len(unbiased)} unbiased candidates.")
        others = unbiased[~unbiased["label"].isin(tied)]
        if len(others):
            runner = others.iloc[0]
            if chosen["variance"] == 0:
                lines.append(f"Runner-up: {runner['label']}, work-normalized variance {_figure(runner['variance'])} "
                             "against the recommended's 0 (an exact gradient on every draw).")
            else:
                lines.append(f"Runner-up: {runner['label']}, {_ratio(runner['variance'], chosen['variance'])} "
                             f"the recommended work-normalized variance ({_log_ratio_z(runner, chosen):.1f} "
                             "standard errors apart).")
    else:
        lines.append("No candidate is unbiased (claimed and not flagged): nothing to recommend.")
    for _, row in table[table["claimed"] & table["flagged"]].iterrows():
        lines.append(f"Claims to be unbiased but measured biased: {row['label']} ({row['bias']}).")
    for _, row in table[~table["claimed"]].iterrows():
        bias = row["bias"] or "no exact reference to measure it against"
        lines.append(f"Biased (unbiased=False): {row['label']}: {bias}.")
    return Recommendation(best, lines, tied)


def _log_ratio_z(a: Any, b: Any) -> float:
    """How many standard errors apart two variance estimates are on the log scale
    (relative standard error √(2/(N−1)) each, as for near-Gaussian draws)."""
    if not (a["variance"] > 0 and b["variance"] > 0 and a["draws"] > 1 and b["draws"] > 1):
        return 0.0 if a["variance"] == b["variance"] else math.inf
    se = math.sqrt(2 / (a["draws"] - 1) + 2 / (b["draws"] - 1))
    return abs(math.log(a["variance"] / b["variance"])) / se


def _variances_differ(a: Any, b: Any) -> bool:
    return _log_ratio_z(a, b) >= SEPARATION_Z


def _names(labels: List[str]) -> str:
    return ", ".join(labels[:-1]) + f" and {labels[-1]}" if len(labels) > 1 else labels[0]


def _ratio(value: float, best: float) -> str:
    if not (math.isfinite(value) and math.isfinite(best)):
        return "nan×"
    if best > 0:
        return f"{value / best:.3g}×"
    return "equal to" if value == 0 else "infinitely many times"


class Racer(NamedTuple):
    """A configuration in the race to the target: its program evaluations to the target
    per seed (mean and standard error), evaluations per step, and mean seconds (shown,
    never ranked)."""

    label: str
    mean: float
    se: float
    seeds: int
    per_step: float
    seconds: float
    #: The evaluations of one smoothing window: the curves are smoothed over 5% of the
    #: steps, so a smaller difference in when they reach the target is not resolved.
    resolution: float = 0.0


def _differ(a: Racer, b: Racer) -> bool:
    """Whether two racers' mean evaluations differ by at least SEPARATION_Z standard
    errors; at one seed there is no standard error, and nothing tells them apart."""
    if a.seeds < 2 or b.seeds < 2 or abs(a.mean - b.mean) < max(a.resolution, b.resolution):
        return False
    spread = math.sqrt(a.se ** 2 + b.se ** 2)
    return abs(a.mean - b.mean) >= SEPARATION_Z * spread and a.mean != b.mean


def for_svi_fits(comparison: Comparison, bias: Optional[Mapping[str, str]] = None) -> Recommendation:
    """Recommend among SVI configurations (see the module's docstring). ``bias``: a
    measured bias in words per biased configuration."""
    target = comparison.target()
    hits = comparison.to_target(target)
    lines, notes, racers = [], [], []
    for label in comparison.labels:
        if not comparison.unbiased.get(label):
            continue
        fits = [r for (l, _), r in comparison.fits.items() if l == label]
        done = [r for r in fits if r["status"] == "finished" and r["elbo"]]
        if len(done) < len(fits):
            notes.append(f"Out of the race: {label}, {len(fits) - len(done)} of {len(fits)} fit(s) failed.")
            continue
        steps = min(len(r["elbo"]) for r in done)
        per_step = comparison.evaluations_per_step(label)
        if steps < MIN_RACE_STEPS:
            notes.append(f"Out of the race: {label}, only {steps} SVI step(s) in its budget ({_figure(per_step)} "
                         f"program evaluations per step), too few for its curve to mean anything; a larger "
                         "--steps gives it more.")
            continue
        reached = hits[hits["config"] == label]
        evaluations = reached["evaluations"].to_numpy(dtype=float)
        if len(evaluations) < len(fits) or not np.isfinite(evaluations).all():
            missed = len(fits) - int(np.isfinite(evaluations).sum())
            notes.append(f"Out of the race: {label}, did not reach the target in {missed} of {len(fits)} seed(s).")
            continue
        se = float(np.std(evaluations, ddof=1) / math.sqrt(len(evaluations))) if len(evaluations) > 1 else math.nan
        window = max(1, steps // 20)  # as Comparison.to_target smooths
        racers.append(Racer(label, float(evaluations.mean()), se, len(evaluations), per_step,
                            float(reached["seconds"].mean()), window * per_step))
    # Deterministic, never by seconds; last, the configurations' order (the simpler first).
    order = {label: i for i, label in enumerate(comparison.labels)}
    racers.sort(key=lambda r: (r.mean, r.per_step, order[r.label]))
    best, tied = None, []
    improvement = f"{TARGET_FRACTION:.0%} of the best configuration's improvement from the start"
    if racers:
        tied = [r.label for r in racers if not _differ(racers[0], r)]
        leaders = sorted((r for r in racers if r.label in tied), key=lambda r: (r.per_step, r.mean, order[r.label]))
        chosen = leaders[0]
        best = chosen.label
        spread = "" if math.isnan(chosen.se) else f" ± {_figure(chosen.se)} (standard error)"
        if len(tied) > 1:
            lines.append(f"Recommended: {best}, the cheapest per step ({_figure(chosen.per_step)} program "
                         f"evaluations) of {_names(tied)}, which {racers[0].seeds} seed(s) cannot tell apart in "
                         f"program evaluations to the target ELBO {_figure(target)} ({improvement}); more seeds "
                         "would separate them.")
        else:
            lines.append(f"Recommended: {best}, the fewest program evaluations to the target ELBO {_figure(target)} "
                         f"({improvement}): {_figure(chosen.mean)}{spread} over {chosen.seeds} seeds, "
                         f"{_figure(chosen.seconds)} s.")
        others = [r for r in racers if r.label not in tied]
        if others:
            runner = others[0]
            lines.append(f"Runner-up: {runner.label}, {_figure(runner.mean)} program evaluations, "
                         f"{_ratio(runner.mean, chosen.mean)} the recommended.")
    else:
        lines.append("No unbiased configuration reached the target ELBO in every seed with enough steps: nothing "
                     "to recommend.")
    lines += notes
    for label in comparison.labels:
        if comparison.unbiased.get(label) is False:
            measured = (bias or {}).get(label, "bias not measured")
            lines.append(f"Biased (unbiased=False): {label}: {measured}.")
        elif comparison.unbiased.get(label) is None:
            lines.append(f"Unknown whether unbiased (a callable config): {label}.")
    return Recommendation(best, lines, tied)


def label_of(comparison: Comparison, estimators: Mapping[str, Any]) -> Optional[str]:
    """The comparison's label whose config is ``estimators`` (site → estimator, as a
    :class:`~pyro_grad.Tuning` chooses), or None when no config is."""
    for label, config in comparison.configs.items():
        chosen = set(estimators.values())
        if config in (repr(estimators), *(repr(e) for e in chosen if len(chosen) == 1)):
            return label
    return None


def beside_tuning(comparison: Comparison, verdict: Recommendation, tuning: Tuning, draws: int) -> str:
    """How ``pg.tune``'s choice at the start (from ``draws`` gradient draws per
    candidate) compares with this page's verdict, in words: the same, one of the tied
    leaders, or different, with what became of the tuned configuration in training and
    why the two can differ."""
    chosen = ", ".join(f"{site}: {estimator!r}" for site, estimator in tuning.config.items())
    measured = (f"pg.tune, measuring the gradient's variance per program evaluation at the start ({draws} "
                f"draws per candidate), chooses {chosen}")
    label = label_of(comparison, tuning.config)
    if label is not None and label == verdict.best:
        return f"{measured}: the same as this page's verdict."
    if label is not None and label in verdict.tied:
        return f"{measured}: one of the leaders this page cannot tell apart ({_names(verdict.tied)})."
    fate = "which is not among this page's configurations" if label is None else next(
        (line.split(f"{label}, ", 1)[1].rstrip(".") for line in verdict.lines
         if line.startswith(f"Out of the race: {label},")),
        None) or f"configuration {label}"
    return (f"{measured}; this page's verdict, from training to the target at equal evaluations, is "
            f"{verdict.best or 'none'} ({label or 'the tuned choice'}: {fate}). They measure different things: "
            "the variance per evaluation at the starting point, and the progress of training to the target; a "
            "quiet gradient at the start does not always train fastest, nor does a costly one fit the budget.")


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
