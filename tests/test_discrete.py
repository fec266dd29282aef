"""Discrete estimators against exact gradients: unbiased where they claim to be, flagged where not."""

import itertools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import Z, assert_mean, assert_variance
from pyro.distributions import constraints
from scipy import integrate

import pyro_grad as pg
from pyro_grad.harness.models.discrete import (
    bernoulli_target,
    bernoulli_target_gradient,
    binomial_square,
    binomial_square_gradient,
    categorical_square,
    categorical_square_gradient,
    geometric_failures,
    geometric_failures_gradient,
    poisson_square,
    poisson_square_gradient,
)
from pyro_grad.harness.models.seeds import two_bernoullis


def theta(value):
    return torch.tensor(value, requires_grad=True)


UNBIASED = [
    (pg.Score(), 1),
    (pg.Score("loo"), 2),
    (pg.Enumerate(), 1),
    (pg.MeasureValued(), 1),
    (pg.ARM(), 1),
    (pg.DisARM(), 1),
]


@pytest.mark.parametrize("estimator, num_particles", UNBIASED, ids=repr)
def test_two_bernoullis_every_unbiased_estimator_gives_7(estimator, num_particles):
    report = pg.diagnose(two_bernoullis, theta(0.1), estimators=estimator,
                         num_particles=num_particles, num_samples=20_000, reference={"theta": 7.0})
    assert_mean(report.samples["theta"], 7.0)
    assert not report.params["flagged"].any()
    # Evaluations per particle: one run, plus each of the two sites' extra runs.
    runs = estimator.evaluations(pg.gradient_estimators.Site.of_distribution(dist.Bernoulli(0.5)))
    assert report.params.iloc[0]["cost"] == num_particles * (1 + 2 * (runs - 1))


@pytest.mark.parametrize("estimator", [pg.MeasureValued(), pg.Enumerate()], ids=repr)
def test_two_bernoullis_measure_valued_and_enumerate_have_zero_variance(estimator):
    # f(1) − f(0) is exactly 2 at a and 1 at b: every draw is exactly 3·2 + 1 = 7.
    report = pg.diagnose(two_bernoullis, theta(0.1), estimators=estimator, num_samples=2000)
    draws = report.samples["theta"]
    assert torch.allclose(draws, torch.full_like(draws, 7.0), atol=1e-4)
    assert report.params.iloc[0]["variance"] < 1e-8


def expected_hard_gumbel_gradient(tau: float) -> float:
    """E of the straight-through Gumbel draw for 2·Bern(3θ) + Bern(θ) at θ = 0.1, by
    quadrature: ∂p E[σ((logit p + L)/τ)] with L ~ Logistic(0, 1), chained through p."""
    def sigmoid(x):
        return 1 / (1 + np.exp(-x))

    def d_relaxed_d_p(p):
        phi = np.log(p / (1 - p))
        value, _ = integrate.quad(
            lambda l: sigmoid((phi + l) / tau) * (1 - sigmoid((phi + l) / tau)) / tau
            * sigmoid(l) * (1 - sigmoid(l)),
            -60, 60, limit=500, points=[-phi],
        )
        return value / (p * (1 - p))

    return 2 * 3 * d_relaxed_d_p(0.3) + d_relaxed_d_p(0.1)


# The bias shrinks with τ (−0.018 at τ = 0.1, against a per-draw sd of 16), so the
# number of draws that measures it at Z standard errors grows as τ falls.
@pytest.mark.parametrize("tau, num_samples", [(0.1, 32_000_000), (0.5, 200_000), (0.9, 50_000)])
def test_hard_gumbel_softmax_is_measurably_biased_and_flagged(tau, num_samples):
    estimator = pg.GumbelSoftmax(temperature=tau, hard=True)
    assert estimator.unbiased is False
    report = pg.diagnose(two_bernoullis, theta(0.1), estimators=estimator,
                         num_samples=num_samples, reference={"theta": 7.0}, sites=False)
    row = report.params.iloc[0]
    assert row["flagged"] and row["z"] < -Z
    assert not row["unbiased (claimed)"]
    # ... and its mean is the relaxation's own expectation, so the bias is the method's.
    assert_mean(report.samples["theta"], expected_hard_gumbel_gradient(tau))


def exact_variances_at_phi_0():
    """Per-draw variances for f = (b − 0.49)² at φ = 0 (σ = ½), by enumeration:
    score function ĝ = f(b)(b − ½); leave-one-out with K = 2,
    ĝ = ½ Σ_k (f_k − f_other)(b_k − ½); ARM (f(1) − f(0))·|u − ½| has variance
    (f(1) − f(0))²·Var|u − ½| = (0.02)²/48; DisARM is constant."""
    f = {b: (b - 0.49) ** 2 for b in (0, 1)}
    score = [f[b] * (b - 0.5) for b in (0, 1)]
    loo = [0.5 * sum((f[bs[k]] - f[bs[1 - k]]) * (bs[k] - 0.5) for k in (0, 1))
           for bs in itertools.product((0, 1), repeat=2)]
    return {
        "score": float(np.var(score)),
        "loo": float(np.var(loo)),
        "arm": (f[1] - f[0]) ** 2 / 48,
        "disarm": 0.0,
    }


# ARM and DisARM on the one-run engine too: with one element its twin is the one jump,
# kept with probability 1 on every path, so the estimate is the papers' formula draw by draw.
@pytest.mark.parametrize("name, estimator, num_particles", [
    ("score", pg.Score(), 1), ("loo", pg.Score("loo"), 2), ("arm", pg.ARM(), 1), ("disarm", pg.DisARM(), 1),
    ("arm", pg.ARM(engine="one-run"), 1), ("disarm", pg.DisARM(engine="one-run"), 1),
], ids=repr)
def test_target_0_49_variances_score_loo_arm_disarm(name, estimator, num_particles):
    exact = exact_variances_at_phi_0()
    assert exact["score"] == pytest.approx(0.0156, abs=1e-4)
    assert exact["loo"] == pytest.approx(2.5e-5, rel=0.01)
    assert exact["arm"] == pytest.approx(8.3e-6, rel=0.01)
    report = pg.diagnose(bernoulli_target, theta(0.0), estimators=estimator, num_particles=num_particles,
                         num_samples=20_000, reference=bernoulli_target_gradient)
    draws = report.samples["phi"]
    assert_mean(draws, float(bernoulli_target_gradient(0.0)["phi"]))
    if exact[name] == 0.0:
        assert float(draws.var()) < 1e-12
    else:
        assert_variance(draws, exact[name])


def test_gumbel_softmax_has_the_wrong_sign_at_phi_minus_2_and_is_flagged():
    # True gradient σ'(−2)·0.02 ≈ +0.0021; the soft relaxation at τ = 0.5 gives ≈ −0.03.
    exact = float(bernoulli_target_gradient(-2.0)["phi"])
    assert exact == pytest.approx(0.0021, abs=1e-4)
    report = pg.diagnose(bernoulli_target, theta(-2.0), estimators=pg.GumbelSoftmax(), num_samples=20_000,
                         reference="enumerate")
    row = report.params.iloc[0]
    assert row["reference"] == pytest.approx(exact, rel=1e-4)
    assert row["mean"] < -Z * row["std. error"]
    assert row["flagged"]


PROGRAMS = [
    (poisson_square, 2.0, poisson_square_gradient, "lam"),
    (binomial_square, 0.3, binomial_square_gradient, "p"),
    (geometric_failures, 0.4, geometric_failures_gradient, "p"),
    (categorical_square, 0.6, categorical_square_gradient, "p"),
    (two_bernoullis, 0.1, lambda t: {"theta": torch.tensor(7.0)}, "theta"),
    (bernoulli_target, 0.0, bernoulli_target_gradient, "phi"),
]


@pytest.mark.parametrize("program, value, exact, name", PROGRAMS, ids=lambda p: getattr(p, "__name__", ""))
def test_measure_valued_and_leave_one_out_match_exact_gradients(program, value, exact, name):
    truth = float(exact(value)[name])
    for estimator, k in ((pg.MeasureValued(), 1), (pg.Score("loo"), 2)):
        report = pg.diagnose(program, theta(value), estimators=estimator, num_particles=k,
                             num_samples=20_000, reference=exact)
        assert_mean(report.samples[name], truth)
        assert not report.params["flagged"].any(), (estimator, report.params)


@pytest.mark.parametrize("program, value, exact, name", PROGRAMS, ids=lambda p: getattr(p, "__name__", ""))
def test_measure_valued_work_normalized_variance_is_at_most_leave_one_out(program, value, exact, name):
    rows = {}
    for label, estimator, k in (("mv", pg.MeasureValued(), 1), ("loo", pg.Score("loo"), 2)):
        report = pg.diagnose(program, theta(value), estimators=estimator, num_particles=k, num_samples=20_000)
        rows[label] = report.params.iloc[0]
    assert rows["mv"]["work-normalized variance"] <= rows["loo"]["work-normalized variance"]


@pytest.mark.parametrize("program, value, exact, name", [PROGRAMS[1], PROGRAMS[3]], ids=["binomial", "categorical"])
def test_enumerate_is_exact_on_finite_supports(program, value, exact, name):
    report = pg.diagnose(program, theta(value), estimators=pg.Enumerate(), num_samples=500)
    draws = report.samples[name]
    assert torch.allclose(draws, torch.full_like(draws, float(exact(value)[name])), rtol=1e-4, atol=1e-4)


def test_enumerate_on_an_infinite_support_names_what_applies():
    with pytest.raises(pg.EstimatorError) as info:
        pg.expectation(pg.estimators(poisson_square, {"x": pg.Enumerate()}), theta(2.0))
    message = str(info.value)
    assert "'x'" in message and "Poisson" in message and "MeasureValued()" in message and "Score()" in message


def test_enumerate_refuses_a_site_inside_a_plate():
    def plated(t):
        with pyro.plate("agents", 3):
            return pyro.sample("x", dist.Bernoulli(t)).sum(-1)

    with pytest.raises(pg.EstimatorError, match="'x': 3 elements per particle"):
        pg.expectation(pg.estimators(plated, {"x": pg.Enumerate()}), theta(0.3), num_particles=2)


def test_plated_sites_stay_unbiased_under_measure_valued_arm_and_disarm():
    # f = (Σ_k k·x_k)² with x_k ~ Bernoulli(θk/10), k = 1..5: E[f] = Σk²p_k(1 − p_k) + (Σk·p_k)²,
    # so ∂θ E[f] = Σk³/10 − 2Σk⁴θ/100 + 2(Σk²θ/10)(Σk²/10) = 42.96 at θ = 0.5.
    k = torch.arange(1.0, 6.0)

    def plated(rate):
        with pyro.plate("agents", 5):
            x = pyro.sample("x", dist.Bernoulli(rate * k / 10))
        return ((x * k).sum(-1)) ** 2

    exact = float((k**3).sum() / 10 - 2 * (k**4).sum() * 0.5 / 100 + 2 * ((k**2).sum() * 0.05) * (k**2).sum() / 10)
    assert exact == pytest.approx(42.96)
    for estimator in (pg.MeasureValued(), pg.ARM(), pg.DisARM()):
        report = pg.diagnose(plated, theta(0.5), estimators=estimator, num_samples=20_000)
        assert_mean(report.samples["rate"], exact)


DATA = torch.tensor([1.0, 0.0, 1.0, 1.0])


def latent_model(x):
    z = pyro.sample("z", dist.Bernoulli(0.4))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(2 * z - 1, 1.0), obs=x)


def latent_guide(x):
    q = pyro.param("q", torch.tensor(0.3), constraint=constraints.unit_interval)
    pyro.sample("z", dist.Bernoulli(q))


@pytest.mark.parametrize("estimator, num_particles", UNBIASED, ids=repr)
def test_elbo_of_a_discrete_latent_matches_the_enumerated_gradient(estimator, num_particles):
    # In an ELBO, Enumerate() sums z out (TraceEnum's way): every draw is the exact
    # gradient, so 200 draws test it as well as 20,000 (drawn one run at a time).
    num_samples = 200 if isinstance(estimator, pg.Enumerate) else 20_000
    report = pg.diagnose(latent_model, DATA, guide=latent_guide, estimators=estimator,
                         num_particles=num_particles, num_samples=num_samples, reference="enumerate")
    if isinstance(estimator, pg.Enumerate):
        assert float(report.samples["q"].var()) < 1e-10
    assert not report.params["flagged"].any(), report.params


# ReinMax at τ = 0.5: at τ = 1 it is exact on an f quadratic in the draw, and this
# ELBO's terms are (log N(x; 2z − 1, 1) is quadratic in z, the rest linear).
@pytest.mark.parametrize("estimator", [pg.GumbelSoftmax(hard=True), pg.StraightThrough(), pg.ReinMax(0.5)], ids=repr)
def test_elbo_relaxations_are_biased_and_flagged(estimator):
    report = pg.diagnose(latent_model, DATA, guide=latent_guide, estimators=estimator,
                         num_samples=20_000, reference="enumerate")
    assert report.params["flagged"].all()


def test_elbo_refuses_a_soft_relaxation():
    with pytest.raises(pg.EstimatorError, match="soft relaxed sample"):
        pg.ELBO().loss(latent_model, pg.estimators(latent_guide, {"z": pg.GumbelSoftmax()}), DATA)
    with pytest.raises(pg.EstimatorError, match="soft relaxed sample"):
        pg.ELBO().differentiable_loss(latent_model, pg.estimators(latent_guide, {"z": pg.GumbelSoftmax()}), DATA)


def test_svi_trains_a_discrete_guide_with_disarm():
    # Posterior q* = P(z=1 | x) ∝ 0.4·Π N(x; 1, 1) against 0.6·Π N(x; −1, 1).
    log_w1 = math.log(0.4) + dist.Normal(1.0, 1.0).log_prob(DATA).sum()
    log_w0 = math.log(0.6) + dist.Normal(-1.0, 1.0).log_prob(DATA).sum()
    posterior = float(torch.sigmoid(log_w1 - log_w0))
    guide = pg.estimators(latent_guide, {"z": pg.DisARM()})
    svi = pyro.infer.SVI(latent_model, guide, pyro.optim.Adam({"lr": 0.05}),
                         loss=pg.ELBO(num_particles=8, vectorize_particles=True))
    for _ in range(400):
        svi.step(DATA)
    assert float(pyro.param("q")) == pytest.approx(posterior, abs=0.03)


def test_torch_poisson_gradient_is_zero_but_measure_valued_is_right():
    # The first forum thread: torch.poisson's grad is silently zero.
    rate = torch.tensor(2.0, requires_grad=True)
    ((torch.poisson(rate) + 1) ** 2).backward()
    assert float(rate.grad) == 0.0
    program = pg.estimators(poisson_square, {"x": pg.MeasureValued()})
    rate = torch.tensor(2.0, requires_grad=True)
    pyro.set_rng_seed(0)
    pg.expectation(program, rate, num_particles=20_000).backward()
    # Per-particle sd of f(X+1) − f(X) = 2X + 3 is 2·sqrt(λ).
    assert float(rate.grad) == pytest.approx(7.0, abs=Z * 2 * math.sqrt(2.0) / math.sqrt(20_000))


def test_estimator_names_parse_for_the_command_line():
    assert pg.gradient_estimators.parse_estimator("measurevalued") == pg.MeasureValued()
    assert pg.gradient_estimators.parse_estimator("gumbelsoftmax:0.1") == pg.GumbelSoftmax(0.1)
    assert pg.gradient_estimators.parse_estimator("disarm") == pg.DisARM()
    assert pg.gradient_estimators.parse_estimator("reinmax:0.5") == pg.ReinMax(0.5)
    with pytest.raises(pg.EstimatorError, match=r"ReinMax\(temperature=0\): temperature must be a positive number"):
        pg.ReinMax(0)


def reinmax_expected_gradient(phi: float, tau: float, f_prime) -> float:
    """ReinMax's own expectation for b ~ Bernoulli(σ(φ)), every draw D ∈ {0, 1}
    enumerated: Σ_D p(D) f'(D) ∂π₂[1]/∂φ, with Liu et al.'s Algorithm 2 on the two
    categories with logits (0, φ): π₀ = softmax(θ), π₁ = ½(D + softmax(θ/τ)) pushed
    through softmax(sg(log π₁ − θ) + θ), π₂ = 2π₁ − ½π₀."""
    total = 0.0
    for d in (0.0, 1.0):
        phi_t = torch.tensor(phi, requires_grad=True)
        logits = torch.stack([torch.zeros(()), phi_t])
        pi0 = logits.softmax(-1)
        pi1 = (torch.tensor([1 - d, d]) + (logits / tau).softmax(-1)) / 2
        pi1 = ((pi1.log() - logits).detach() + logits).softmax(-1)
        (grad,) = torch.autograd.grad((2 * pi1 - 0.5 * pi0)[1], phi_t)
        p = torch.sigmoid(torch.tensor(phi)).item()
        total += (p if d else 1 - p) * f_prime(d) * float(grad)
    return total


def bernoulli_quadratic(phi):
    """f = (b − 0.45)², b ~ Bernoulli(σ(φ)): ∇φ E[f] = σ'(φ)(0.55² − 0.45²) = 0.1 σ'(φ)."""
    b = pyro.sample("b", dist.Bernoulli(logits=phi))
    return (b - 0.45) ** 2


def bernoulli_exponential(phi):
    """f = exp(2b): ∇φ E[f] = σ'(φ)(e² − 1)."""
    b = pyro.sample("b", dist.Bernoulli(logits=phi))
    return torch.exp(2 * b)


def sigmoid_slope(phi: float) -> float:
    s = 1 / (1 + math.exp(-phi))
    return s * (1 - s)


def test_reinmax_is_exact_on_a_quadratic_at_temperature_1_and_biased_elsewhere():
    # Second-order accuracy (Liu et al. 2023): at τ = 1 its expectation on a quadratic
    # f is the exact gradient (0.0244 at φ = 0.3); at τ = 0.5 it is −0.0136, and on
    # f = exp(2b) at τ = 1 it is 1.971 against the exact 1.501. 20,000 draws each:
    # every mean within Z standard errors of ReinMax's enumerated expectation, and the
    # biased ones flagged.
    assert pg.ReinMax().unbiased is False
    quadratic_exact = 0.1 * sigmoid_slope(0.3)
    assert reinmax_expected_gradient(0.3, 1.0, lambda b: 2 * (b - 0.45)) == pytest.approx(quadratic_exact, rel=1e-4)
    cases = [
        (bernoulli_quadratic, 1.0, lambda b: 2 * (b - 0.45), quadratic_exact, False),
        (bernoulli_quadratic, 0.5, lambda b: 2 * (b - 0.45), quadratic_exact, True),
        (bernoulli_exponential, 1.0, lambda b: 2 * math.exp(2 * b), sigmoid_slope(0.3) * (math.e ** 2 - 1), True),
    ]
    for program, tau, f_prime, exact, biased in cases:
        report = pg.diagnose(program, theta(0.3), estimators=pg.ReinMax(tau), num_samples=20_000,
                             reference={"phi": exact}, sites=False)
        assert_mean(report.samples["phi"], reinmax_expected_gradient(0.3, tau, f_prime))
        assert bool(report.params.iloc[0]["flagged"]) is biased, (program.__name__, tau, report.params)


def test_reinmax_draws_exact_categories_of_a_categorical():
    # The value forward is the drawn category itself (an ELBO scores it); the gradient
    # reaches every logit.
    logits = torch.tensor([0.1, -0.3, 0.5, 0.2, 0.0], requires_grad=True)

    def program(t):
        k = pyro.sample("k", dist.Categorical(logits=t))
        assert bool(((k == k.round()) & (k >= 0) & (k <= 4)).all())
        return (k - 1.3) ** 2

    pg.expectation(pg.estimators(program, {"k": pg.ReinMax()}), logits, num_particles=1_000).backward()
    assert torch.isfinite(logits.grad).all() and bool((logits.grad != 0).all())
