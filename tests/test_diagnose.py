"""diagnose and compare_estimators: known variances, bias flags, per-site tables, both paths."""

import math

import matplotlib.figure
import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import Z, assert_mean, assert_variance, standard_error_of_variance
from test_elbo import DATA, coin_guide, coin_model, exact_coin_elbo_gradient
from test_tutorial_gradients import score_function_moments

import pyro_grad as pg
from pyro_grad.harness.models.seeds import (
    fixed_noise,
    fixed_noise_gradient,
    parameterized_noise,
    parameterized_noise_gradient,
    two_bernoullis,
)


def theta(value):
    return torch.tensor(value, requires_grad=True)


def test_two_bernoullis_score_function_variance_is_146_6_per_sample():
    report = pg.diagnose(two_bernoullis, theta(0.1), estimators=pg.Score(), num_samples=20_000)
    assert report.mode == "vectorized"
    draws = report.samples["theta"]
    assert_variance(draws, score_function_moments(0.1)[1])  # 146.619, by enumeration
    row = report.params.iloc[0]
    assert row["variance"] == pytest.approx(float(draws.double().var()), rel=1e-6)
    assert row["std. error"] == pytest.approx(math.sqrt(row["variance"] / 20_000), rel=1e-6)
    assert row["SNR"] == pytest.approx(abs(row["mean"]) / math.sqrt(row["variance"]), rel=1e-6)


@pytest.mark.parametrize("estimator, variance", [(pg.Reparam(), 64.0), (pg.Score(), 432.0)])
def test_parameterized_noise_variances_pathwise_64_score_432(estimator, variance):
    report = pg.diagnose(parameterized_noise, theta(2.0), estimators={"z": estimator}, num_samples=20_000)
    assert_mean(report.samples["theta"], 28.0)
    assert_variance(report.samples["theta"], variance)


def test_bias_is_flagged_against_a_wrong_reference_and_not_a_right_one():
    right = pg.diagnose(parameterized_noise, theta(2.0), num_samples=5000,
                        reference=parameterized_noise_gradient)
    wrong = pg.diagnose(parameterized_noise, theta(2.0), num_samples=5000, reference={"theta": 30.0})
    assert not right.params["flagged"].any()
    assert abs(right.params.iloc[0]["z"]) < Z
    assert wrong.params["flagged"].all()
    assert wrong.params.iloc[0]["bias"] == pytest.approx(-2.0, abs=4 * wrong.params.iloc[0]["std. error"])


def test_a_confidently_wrong_sign_is_flagged():
    # Mean 28 with a tiny standard error against a reference of −28: flagged for both reasons.
    report = pg.diagnose(parameterized_noise, theta(2.0), num_samples=2000, reference={"theta": -28.0})
    assert report.params["flagged"].all()


def test_a_zero_gradient_met_exactly_up_to_rounding_is_not_a_wrong_sign():
    # A zero-variance estimator at an exact gradient of 0: mean and reference are both
    # float rounding (±1e-7), whose signs mean nothing.
    from pyro_grad.diagnostics.statistics import element_table

    table = element_table("q", torch.full((100, 1), 2.9e-8), torch.tensor([-6e-8]))
    assert not table["flagged"].any()
    assert element_table("q", torch.full((100, 1), 2.9e-3), torch.tensor([-6e-3]))["flagged"].all()


def test_per_site_table_of_two_sites_under_two_estimators():
    # f = z·w with z ~ N(θ, 1) pathwise and w ~ Bernoulli(σ(θ)) by the score function.
    # ∂/∂loc_z E[f] = E[w] = σ(θ); ∂/∂probs_w E[f] = E[z] = θ.
    def program(t):
        z = pyro.sample("z", dist.Normal(t, 1.0))
        w = pyro.sample("w", dist.Bernoulli(torch.sigmoid(t)))
        return z * w

    report = pg.diagnose(
        program, theta(0.5), estimators={"z": pg.Reparam(), "w": pg.Score("loo")},
        num_particles=4, num_samples=20_000,
    )
    sites = report.sites.set_index(["site", "parameter"])
    assert set(sites.index) == {("z", "loc"), ("z", "scale"), ("w", "probs")}
    assert sites.loc[("z", "loc"), "estimator"] == "Reparam()"
    assert sites.loc[("w", "probs"), "estimator"] == "Score(baseline='loo')"
    assert sites.loc[("z", "loc"), "distribution"] == "Normal"
    assert_mean(report.samples["z.loc"], float(torch.sigmoid(torch.tensor(0.5))))
    assert_mean(report.samples["w.probs"], 0.5)
    # The score site's variance share is its covariance with the total over the total
    # variance; the pathwise site's cannot be separated.
    share = sites.loc[("w", "probs"), "variance share"]
    assert 0.0 < share < 1.0
    assert math.isnan(sites.loc[("z", "loc"), "variance share"])


def test_vectorized_and_loop_paths_give_the_same_statistics():
    config = {"a": pg.Score("loo"), "b": pg.Score()}
    fast = pg.diagnose(two_bernoullis, theta(0.1), estimators=config, num_particles=2, num_samples=8000)
    slow = pg.diagnose(two_bernoullis, theta(0.1), estimators=config, num_particles=2,
                       num_samples=1000, vectorize=False)
    assert (fast.mode, slow.mode) == ("vectorized", "loop")
    for name in ("theta", "a.probs", "b.probs"):
        a, b = fast.samples[name], slow.samples[name]
        se_mean = math.sqrt(float(a.var()) / a.numel() + float(b.var()) / b.numel())
        assert abs(float(a.mean() - b.mean())) <= Z * se_mean, name
        se_var = math.hypot(standard_error_of_variance(a), standard_error_of_variance(b))
        assert abs(float(a.var() - b.var())) <= Z * se_var, name


def test_enumerate_reference_is_exact_for_parameters_and_sites():
    report = pg.diagnose(two_bernoullis, theta(0.1), num_particles=2, num_samples=200, reference="enumerate")
    assert report.references["theta"] == pytest.approx(7.0, abs=1e-5)
    assert report.references["a.probs"] == pytest.approx(2.0, abs=1e-5)
    assert report.references["b.probs"] == pytest.approx(1.0, abs=1e-5)


def test_enumerate_reference_refuses_continuous_sites():
    with pytest.raises(pg.EstimatorError, match="'z'.*not finite"):
        pg.diagnose(parameterized_noise, theta(2.0), num_samples=10, reference="enumerate")


def test_reparam_reference_is_close_to_exact():
    report = pg.diagnose(parameterized_noise, theta(2.0), num_samples=1000, reference="reparam")
    # 100 particles per draw: 100,000 pathwise particles, per-particle sd 8.
    assert float(report.references["theta"]) == pytest.approx(28.0, abs=Z * 8 / math.sqrt(100_000))
    assert float(report.references["z.loc"]) == pytest.approx(4.0, abs=1e-5)


def test_elbo_diagnosis_of_the_coin_matches_the_closed_form():
    report = pg.diagnose(coin_model, DATA, guide=coin_guide, estimators={"f": pg.Score("loo")},
                         num_particles=4, num_samples=20_000, reference=lambda data: exact_coin_elbo_gradient())
    assert set(report.params["param"]) == {"alpha_q", "beta_q"}
    assert not report.params["flagged"].any()
    assert set(report.sites["parameter"]) == {"concentration1", "concentration0"}


def test_finite_differences_variance_grows_as_epsilon_shrinks():
    # Independent noise: Var = Var(f(θ+ε) − f(θ−ε)) / 4ε², unbounded as ε → 0. With
    # common random numbers on fixed noise, the difference quotient is 2θ(z+4) exactly:
    # the same draws as autograd.
    comparison = pg.compare_estimators(
        fixed_noise, theta(2.0),
        candidates={
            "ε=1": pg.FiniteDifferences(1.0),
            "ε=0.5": pg.FiniteDifferences(0.5),
            "ε=0.1": pg.FiniteDifferences(0.1),
            "ε=0.1, common random numbers": pg.FiniteDifferences(0.1, common_random_numbers=True),
            "autograd": None,
        },
        num_samples=10_000, reference=fixed_noise_gradient,
    )
    variances = comparison.params.set_index("candidate")["variance"]
    assert variances["ε=1"] < variances["ε=0.5"] < variances["ε=0.1"]
    # Var f(θ±ε) = (θ±ε)⁴·4, independent: Var = 4((θ+ε)⁴ + (θ−ε)⁴) / 4ε².
    for label, eps in (("ε=1", 1.0), ("ε=0.5", 0.5), ("ε=0.1", 0.1)):
        exact = 4 * ((2 + eps) ** 4 + (2 - eps) ** 4) / (4 * eps**2)
        assert_variance(comparison.samples[label]["theta"], exact)
    crn = comparison.samples["ε=0.1, common random numbers"]["theta"]
    assert torch.allclose(crn, comparison.samples["autograd"]["theta"], rtol=1e-3, atol=1e-3)
    assert not comparison.params["flagged"].any()
    claimed = comparison.params.set_index("candidate")["unbiased (claimed)"].to_dict()
    assert claimed == {"ε=1": False, "ε=0.5": False, "ε=0.1": False,
                       "ε=0.1, common random numbers": False, "autograd": True}


def test_reports_render_markdown_and_figures():
    comparison = pg.compare_estimators(
        parameterized_noise, theta(2.0),
        candidates={"No reparametrization": {"z": pg.Score()}, "Reparametrization": {"z": pg.Reparam()}},
        num_samples=500, reference=parameterized_noise_gradient,
    )
    assert "| No reparametrization" in comparison.to_markdown()
    assert isinstance(comparison.plot(), matplotlib.figure.Figure)
    report = comparison.reports["Reparametrization"]
    assert "## Sample sites" in report.to_markdown()
    assert isinstance(report.plot(), matplotlib.figure.Figure)


def test_bad_inputs_get_one_clear_message():
    with pytest.raises(pg.EstimatorError, match="num_samples"):
        pg.diagnose(fixed_noise, theta(2.0), num_samples=1)
    with pytest.raises(pg.EstimatorError, match="not targets"):
        pg.diagnose(fixed_noise, theta(2.0), num_samples=10, reference={"phi": 1.0})
    with pytest.raises(pg.EstimatorError, match="reference must be"):
        pg.diagnose(fixed_noise, theta(2.0), num_samples=10, reference="exact")
    with pytest.raises(pg.EstimatorError, match="compare_estimators"):
        pg.diagnose(fixed_noise, theta(2.0), num_samples=10, estimators=pg.FiniteDifferences(0.1))
    with pytest.raises(pg.EstimatorError, match="nothing to differentiate"):
        pg.diagnose(fixed_noise, torch.tensor(2.0), num_samples=10)
    with pytest.raises(pg.EstimatorError, match="epsilon"):
        pg.FiniteDifferences(0.0)


def test_cost_counts_each_estimators_program_runs():
    # Enumerate on a Categorical(5): the first run plus one per category, 6 evaluations.
    def five_way(theta):
        z = pyro.sample("z", dist.Categorical(logits=theta * torch.arange(5.0)))
        return z.float() ** 2

    report = pg.diagnose(five_way, torch.tensor(0.3, requires_grad=True), estimators=pg.Enumerate(), num_samples=20)
    assert set(report.sites["evaluations per particle"]) == {6} and set(report.params["cost"]) == {6}
    # Finite differences run the program twice per parameter element for one draw: 2 × 2.
    two_params = pg.compare_estimators(
        lambda a, b: (a * b) ** 2 + pyro.sample("z", dist.Normal(0.0, 1.0)),
        torch.tensor(0.3, requires_grad=True), torch.tensor(0.5, requires_grad=True),
        candidates={"fd": pg.FiniteDifferences(0.1)}, num_samples=20,
    )
    assert set(two_params.params["cost"]) == {4}


def test_bias_flags_are_holm_corrected_across_the_elements_of_a_report():
    # z = 4.2 alone: p = 2.7e-5 < 1e-3, flagged. The same z among 2,048 elements (an
    # unbiased estimator's chance extreme): Holm's first threshold is 1e-3 / 2048 =
    # 4.9e-7 (z ≈ 5.03), so it is not; a z of 6 there (p = 2e-9) still is.
    import pandas as pd
    from pyro_grad.diagnostics.statistics import with_flags

    def table(z):
        return pd.DataFrame({"z": z, "wrong sign": [False] * len(z)})

    assert with_flags(table([4.2]))["flagged"].all()
    many = with_flags(table([4.2] + [0.5] * 2047))
    assert not many["flagged"].any()
    assert with_flags(table([6.0] + [0.5] * 2047))["flagged"].tolist() == [True] + [False] * 2047
    # Below 4 standard errors nothing is flagged, however few the elements.
    assert not with_flags(table([3.9]))["flagged"].any()


def test_holms_test_steps_down_and_stops_at_the_first_acceptance():
    # α = 0.05, m = 3: thresholds 0.05/3, 0.05/2, 0.05. Sorted p: 0.001 ≤ 0.0167 is
    # rejected; 0.03 > 0.025 is accepted, and so is 0.035 although it is below 0.05.
    import numpy as np
    from pyro_grad.diagnostics.statistics import holm_rejects

    assert holm_rejects(np.array([0.035, 0.001, 0.03]), 0.05).tolist() == [False, True, False]
    assert holm_rejects(np.array([0.04, 0.02, 0.01]), 0.05).tolist() == [True, True, True]
    assert holm_rejects(np.array([]), 0.05).tolist() == []
