"""The seed tutorial's programs, differentiated under each estimator, against exact answers."""

import itertools

import pyro
import pytest
import torch
from conftest import Z, assert_mean, assert_variance, standard_error_of_variance
from draws import expectation_draws

import pyro_grad as pg
from pyro_grad.harness.models.seeds import fixed_noise, parameterized_noise, two_bernoullis

N = 20_000  # draws per check: enough for 4-standard-error bands that still catch errors


def theta(value: float) -> torch.Tensor:
    return torch.tensor(value, requires_grad=True)


@pytest.mark.parametrize("estimator", [pg.Reparam(), pg.Score()])
def test_fixed_noise_gradient_is_10_theta_with_variance_64(estimator):
    # z ~ N(1, 2), f = θ²(z+4): per sample ∇ = 2θ(z+4), mean 10θ = 20, variance 16θ² = 64
    # (the score term vanishes: log N(z; 1, 2) does not depend on θ).
    program = pg.estimators(fixed_noise, {"z": estimator})
    g = expectation_draws(program, theta(2.0), num_samples=N)["theta"]
    assert_mean(g, 20.0)
    assert_variance(g, 64.0)


def test_parameterized_noise_reparam_is_8_theta_plus_3_theta_squared_with_variance_64():
    # z = θ + 2ε: ∇ = 8θ + 3θ² + 4θε, mean 28 and variance 16θ² = 64 at θ = 2.
    program = pg.estimators(parameterized_noise, {"z": pg.Reparam()})
    g = expectation_draws(program, theta(2.0), num_samples=N)["theta"]
    assert_mean(g, 28.0)
    assert_variance(g, 64.0)


def test_parameterized_noise_score_function_has_variance_432():
    # ∇ = 2θ(z+4) + θ²(z+4)(z−θ)/4 = 24 + 20ε + 4ε² at θ = 2: mean 28,
    # variance 400 + 16·Var(ε²) = 400 + 32 = 432.
    program = pg.estimators(parameterized_noise, {"z": pg.Score()})
    g = expectation_draws(program, theta(2.0), num_samples=N)["theta"]
    assert_mean(g, 28.0)
    assert_variance(g, 432.0)


def score_function_moments(t: float):
    """Exact mean and variance of the plain score-function draw for 2·Bern(3θ)+Bern(θ),
    by enumerating the four outcomes: ĝ = f(a, b)·(∂θ log p(a) + ∂θ log p(b))."""
    mean = second = 0.0
    for a, b in itertools.product([0, 1], [0, 1]):
        p = (3 * t if a else 1 - 3 * t) * (t if b else 1 - t)
        score = 3 * (a / (3 * t) - (1 - a) / (1 - 3 * t)) + (b / t - (1 - b) / (1 - t))
        g = (2 * a + b) * score
        mean, second = mean + p * g, second + p * g * g
    return mean, second - mean**2


def test_two_bernoullis_score_function_is_7_with_enumerated_variance():
    mean, variance = score_function_moments(0.1)
    assert mean == pytest.approx(7.0) and variance == pytest.approx(146.619, abs=1e-3)
    program = pg.estimators(two_bernoullis, {"a": pg.Score(), "b": pg.Score()})
    g = expectation_draws(program, theta(0.1), num_samples=N)["theta"]
    assert_mean(g, 7.0)
    assert_variance(g, variance)


class ConstantBaseline(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor(1.5))

    def forward(self, *args):
        return self.value


@pytest.mark.parametrize(
    "baseline, num_particles",
    [(None, 1), ("loo", 2), ("loo", 10), ("decay", 1), ("pooled", 1), (1.0, 1), ("learned", 1), ("auto", 3)],
)
def test_two_bernoullis_every_baseline_is_unbiased(baseline, num_particles):
    # ∇θ E[2·Bern(3θ) + Bern(θ)] = 7 whatever the baseline.
    if baseline == "learned":
        baseline = ConstantBaseline()
    estimator = pg.Score(baseline=baseline)
    handler = pg.EstimatorMessenger({"a": estimator, "b": estimator})
    program = handler(two_bernoullis)
    if baseline in ("decay", "pooled"):
        for _ in range(30):  # warm the running average so the baseline is not zero
            pg.expectation(program, theta(0.1))
        average = handler.averages.get("a") if baseline == "decay" else handler.averages.get("a#pooled")[0]
        assert float(average) > 0.5
    g = expectation_draws(program, theta(0.1), num_samples=N, num_particles=num_particles)["theta"]
    assert_mean(g, 7.0)


def test_the_pooled_baseline_is_the_bias_corrected_mean_of_earlier_steps():
    # f = 2, then 4, then anything: b_1 = 0 (no history), b_2 = m_1 / (1 − β) = 2,
    # b_3 = m_2 / (1 − β²) = (0.9·0.2 + 0.4) / 0.19 = 0.58 / 0.19, the weighted mean of 2 and 4.
    from pyro_grad.baselines import RunningAverages, pooled_average

    averages = RunningAverages()
    first = pooled_average(averages, "z", torch.full((1, 1, 3), 2.0), 0.9)
    second = pooled_average(averages, "z", torch.tensor([[[3.0, 4.0, 5.0]]]), 0.9)
    third = pooled_average(averages, "z", torch.zeros(1, 2, 5), 0.9)
    assert torch.equal(first, torch.zeros(1, 1, 3))
    assert torch.allclose(second, torch.full((1, 1, 3), 2.0))
    assert third.shape == (1, 2, 5)  # one number for the site, whatever the plate's size
    assert torch.allclose(third, torch.full((1, 2, 5), 0.58 / 0.19))


def test_leave_one_out_variance_is_measurably_below_no_baseline():
    # With K = 10 particles: no baseline ≈ 146.6/10; leave-one-out about half of that.
    draws = {}
    for baseline in (None, "loo"):
        estimator = pg.Score(baseline=baseline)
        program = pg.estimators(two_bernoullis, {"a": estimator, "b": estimator})
        draws[baseline] = expectation_draws(program, theta(0.1), num_samples=N, num_particles=10)["theta"]
    assert_variance(draws[None], score_function_moments(0.1)[1] / 10)
    gap = float(draws[None].var() - draws["loo"].var())
    se = (standard_error_of_variance(draws[None]) ** 2 + standard_error_of_variance(draws["loo"]) ** 2) ** 0.5
    assert gap > Z * se, f"variance drop {gap:.3g} is not {Z} standard errors ({se:.3g})"


def test_learned_baseline_is_fitted_by_gradient_descent():
    # The added squared-error term pulls the constant towards E[f] = 2·0.3 + 0.1 = 0.7.
    baseline = ConstantBaseline()
    program = pg.estimators(two_bernoullis, {"a": pg.Score(baseline=baseline)})
    optimizer = torch.optim.SGD(baseline.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        pg.expectation(program, theta(0.1), num_particles=16).backward()
        optimizer.step()
    assert float(baseline.value) == pytest.approx(0.7, abs=0.15)


@pytest.mark.parametrize("vectorize", [True, False])
def test_expectation_value_is_the_monte_carlo_mean(vectorize):
    # E[θ²(z+4)] with z ~ N(θ, 2) is θ²(θ+4) = 24 at θ = 2; per-particle sd is θ²·2 = 8.
    K = 4000 if vectorize else 400
    program = pg.estimators(parameterized_noise, {"z": pg.Score("loo")})
    value = pg.expectation(program, theta(2.0), num_particles=K, vectorize=vectorize)
    assert value.dim() == 0
    assert abs(float(value) - 24.0) <= Z * 8.0 / K**0.5


def test_expectation_is_value_preserving():
    # The surrogate's value is exactly the mean cost of the particles drawn.
    program = pg.estimators(two_bernoullis, {"a": pg.Score("loo"), "b": pg.Score(0.3)})
    pyro.set_rng_seed(1)
    value = pg.expectation(program, theta(0.1), num_particles=50)
    pyro.set_rng_seed(1)
    with pyro.plate("_pyro_grad_particles", 50, dim=-1):
        pyro.poutine.block(two_bernoullis)(torch.tensor(0.1))  # the guess run draws first
        costs = two_bernoullis(torch.tensor(0.1))
    assert float(value) == pytest.approx(float(costs.mean()), abs=1e-6)


def test_vectorized_and_looped_particles_give_the_same_distribution():
    # Same estimator, two execution paths: their means and variances agree within Z
    # standard errors of the difference.
    program = pg.estimators(two_bernoullis, {"a": pg.Score("loo"), "b": pg.Score("loo")})
    fast = expectation_draws(program, theta(0.1), num_samples=4000, num_particles=3)["theta"]
    slow = expectation_draws(
        program, theta(0.1), num_samples=800, num_particles=3, mode="loop", vectorize=False
    )["theta"]
    se_mean = (fast.var() / fast.numel() + slow.var() / slow.numel()).sqrt()
    assert abs(float(fast.mean() - slow.mean())) <= Z * float(se_mean)
    se_var = (standard_error_of_variance(fast) ** 2 + standard_error_of_variance(slow) ** 2) ** 0.5
    assert abs(float(fast.var() - slow.var())) <= Z * se_var
