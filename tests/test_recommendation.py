"""The verdict a page opens with rests on evidence: comparisons built by construction
(ELBO curves written by hand, so the right answer is known) and the verdict they get.

Curves rise linearly from −100 to −10 over their steps, then stay: a configuration
reaches the target (the start plus 80% of the best improvement, −28) at 80% of its
rise. Program evaluations per step are set per configuration, so evaluations to the
target are known exactly.
"""

import math

import numpy as np
import pytest

from pyro_grad.harness.comparison.results import Comparison
from pyro_grad.harness.presentation.recommendation import MIN_RACE_STEPS, recommend

STEPS = 100


def curve(rise: int, steps: int = STEPS, top: float = -10.0) -> list:
    """−100 rising linearly to ``top`` over ``rise`` steps, then flat."""
    return [float(v) for v in np.concatenate([np.linspace(-100.0, top, rise), np.full(steps - rise, top)])]


def fit(elbo: list, per_step: float, seconds: float = 1.0) -> dict:
    return {"status": "finished", "reason": "", "step": len(elbo), "elbo": elbo, "checkpoints": [],
            "seconds": seconds, "cpu seconds": seconds, "evaluations": per_step * len(elbo), "posterior": {},
            "notes": []}


def comparison(fits: dict, unbiased=None) -> Comparison:
    labels = list(dict.fromkeys(label for label, _ in fits))
    return Comparison(fits, {label: label for label in labels},
                      unbiased=unbiased or {label: True for label in labels},
                      settings={"num_steps": STEPS, "num_particles": 4, "seeds": (0, 1), "budget": "evaluations"})


def test_a_configuration_better_by_construction_is_recommended():
    # Fast reaches the target in ~half the evaluations of Slow, in both seeds (with a
    # little spread, so there is a standard error).
    result = comparison({
        ("fast", 0): fit(curve(40), 4), ("fast", 1): fit(curve(42), 4),
        ("slow", 0): fit(curve(80), 4), ("slow", 1): fit(curve(84), 4),
    })
    verdict = recommend(result)
    assert verdict.best == "fast" and verdict.tied == ["fast"]
    assert verdict.lines[0].startswith("Recommended: fast, the fewest program evaluations to the target ELBO")
    assert verdict.lines[1].startswith("Runner-up: slow")


def test_two_configurations_equal_by_construction_are_a_tie_and_the_cheaper_per_step_is_named():
    # The same curves in evaluations: B costs twice as much per step and rises in half
    # the steps. No seed tells them apart; A is cheaper per step.
    result = comparison({
        ("A", 0): fit(curve(80), 2), ("A", 1): fit(curve(82), 2),
        ("B", 0): fit(curve(40, 50), 4), ("B", 1): fit(curve(41, 50), 4),
    })
    verdict = recommend(result)
    assert sorted(verdict.tied) == ["A", "B"] and verdict.best == "A"
    assert "cannot tell apart" in verdict.lines[0] and "more seeds" in verdict.lines[0]


def test_the_verdict_depends_on_the_curves_not_on_the_seconds_they_took():
    # Two runs of one page: bit-identical ELBOs, different timings.
    def run(seconds: float) -> Comparison:
        return comparison({
            ("fast", 0): fit(curve(40), 4, seconds), ("fast", 1): fit(curve(43), 4, seconds),
            ("slow", 0): fit(curve(80), 4, 1.0), ("slow", 1): fit(curve(85), 4, 1.0),
        })

    assert recommend(run(0.5)).best == recommend(run(50.0)).best == "fast"
    assert recommend(run(0.5)).tied == recommend(run(50.0)).tied


def test_a_configuration_with_too_few_steps_is_left_out_of_the_race_with_a_note():
    # Under equal evaluations a costly config got 3 steps: its curve means nothing.
    result = comparison({
        ("cheap", 0): fit(curve(40), 4), ("cheap", 1): fit(curve(44), 4),
        ("costly", 0): fit(curve(2, 3), 400), ("costly", 1): fit(curve(2, 3), 400),
    })
    verdict = recommend(result)
    assert verdict.best == "cheap"
    assert any(line.startswith("Out of the race: costly, only 3 SVI step(s)") for line in verdict.lines)
    assert MIN_RACE_STEPS > 3


def test_the_target_is_where_the_configurations_separate_not_the_start():
    # Best final −10; the start is the mean first value of the curves smoothed over 5%
    # of their steps (5 steps): a's −100 + 2 · 90/39, b's −100 + 2 · 50/79. The target
    # is the start plus 80% of the way to −10.
    result = comparison({("a", 0): fit(curve(40), 1), ("b", 0): fit(curve(80, top=-50.0), 1)})
    start = np.mean([-100 + 2 * 90 / 39, -100 + 2 * 50 / 79])
    assert result.target() == pytest.approx(start + 0.8 * (-10 - start), abs=1e-6)
    verdict = recommend(result)
    assert verdict.best == "a"  # b never reaches −28
    assert any("did not reach the target in 1 of 1" in line for line in verdict.lines)


def test_a_biased_configuration_is_never_recommended_and_is_named():
    result = comparison({("biased", 0): fit(curve(10), 1), ("unbiased", 0): fit(curve(60), 1)},
                        unbiased={"biased": False, "unbiased": True})
    verdict = recommend(result, {"biased": "flagged on 2 of 2 elements"})
    assert verdict.best == "unbiased"
    assert "Biased (unbiased=False): biased: flagged on 2 of 2 elements." in verdict.lines
    assert math.isfinite(result.target())


def test_a_difference_the_smoothing_cannot_resolve_is_a_tie_even_with_no_spread_over_seeds():
    # Both seeds alike (standard error 0), the two configs 2 steps apart: less than the
    # 5-step window the curves are smoothed over, so nothing tells them apart.
    result = comparison({
        ("A", 0): fit(curve(60), 4), ("A", 1): fit(curve(60), 4),
        ("B", 0): fit(curve(62), 4), ("B", 1): fit(curve(62), 4),
    })
    assert sorted(recommend(result).tied) == ["A", "B"]


def test_gradient_draw_verdicts_name_ties_and_exact_estimators():
    # f = 2·Bern(3θ) + Bern(θ): MeasureValued's gradient is 7 on every draw (variance 0);
    # Score's is not. And z ~ N(1, 2), f = θ²(z + 4): the noise does not depend on θ, so
    # Reparam and Score draw the same gradient: a tie, the candidates' order breaks it.
    import pyro
    import pyro.distributions as dist
    import torch

    import pyro_grad as pg

    def two_bernoullis(theta):
        return 2 * pyro.sample("a", dist.Bernoulli(3 * theta)) + pyro.sample("b", dist.Bernoulli(theta))

    def fixed_noise(theta):
        return theta ** 2 * (pyro.sample("z", dist.Normal(1.0, 2.0)) + 4)

    theta = torch.tensor(0.1, requires_grad=True)
    exact = recommend(pg.compare_estimators(two_bernoullis, theta, num_samples=200,
                                            candidates={"MeasureValued": pg.MeasureValued(), "Score": pg.Score()}))
    assert exact.best == "MeasureValued" and exact.tied == ["MeasureValued"]
    assert exact.lines[1].startswith("Runner-up: Score, work-normalized variance") and "exact gradient" in exact.lines[1]
    theta = torch.tensor(2.0, requires_grad=True)
    tie = recommend(pg.compare_estimators(fixed_noise, theta, num_samples=200,
                                          candidates={"Reparam": pg.Reparam(), "Score": pg.Score()}))
    assert tie.tied == ["Reparam", "Score"] and tie.best == "Reparam" and "cannot tell apart" in tie.lines[0]


def test_the_page_says_how_pg_tune_compares_with_its_verdict():
    # pg.tune's choice is the verdict, one of its tied leaders, or out of the race: each
    # said as such, and a difference explained.
    import pandas as pd

    import pyro_grad as pg
    from pyro_grad.harness.presentation.recommendation import beside_tuning

    result = comparison({
        ("Reparam()", 0): fit(curve(40), 4), ("Reparam()", 1): fit(curve(42), 4),
        ("Score()", 0): fit(curve(80), 4), ("Score()", 1): fit(curve(84), 4),
        ("MeasureValued()", 0): fit(curve(2, 3), 400), ("MeasureValued()", 1): fit(curve(2, 3), 400),
    })
    verdict = recommend(result)

    def tuned(estimator):
        return beside_tuning(result, verdict, pg.Tuning({"z": estimator}, pd.DataFrame()), 50)

    assert tuned(pg.Reparam()).endswith("chooses z: Reparam(): the same as this page's verdict.")
    different = tuned(pg.MeasureValued())
    assert "verdict, from training to the target at equal evaluations, is Reparam()" in different
    assert "(MeasureValued(): only 3 SVI step(s) in its budget" in different and "measure different things" in different
    assert "which is not among this page's configurations" in tuned(pg.DisARM())
