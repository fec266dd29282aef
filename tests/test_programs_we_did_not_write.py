"""Programs from outside the suite that once gave silently wrong gradients or raw tracebacks.

Each test names the program and its exact gradient; tolerances are Z = 4 standard
errors of the draws' mean (or of the difference of two means), seeds fixed.
"""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import TraceGraph_ELBO

import pyro_grad as pg
from pyro_grad.objectives.expectation import expectation_estimates

from conftest import assert_mean, assert_variance
from draws import elbo_draws, expectation_draws


def theta(value: float) -> torch.Tensor:
    return torch.tensor(value, requires_grad=True)


def squared_normal(t):
    # z ~ N(θ, 1), f = z²: ∇θ E[f] = 2θ. Per-draw variance at θ = 1: Reparam (2z) 4;
    # Score (z²(z − θ)) θ⁴ + 18θ² + 15 − 4θ² = 30.
    z = pyro.sample("z", dist.Normal(t, 1.0))
    return z**2


# ----------------------------------------------------- 1. the context-manager form


@pytest.mark.parametrize("form", ["mapping", "config=callable"])
def test_an_outer_handler_wins_over_the_expectations_auto(form):
    handler = pg.estimators({"z": pg.Score()}) if form == "mapping" else pg.estimators(config=lambda msg: pg.Score())
    with handler:
        chosen = expectation_estimates(squared_normal, (theta(1.0),), {}, 4, 1, True).estimators
        g = expectation_draws(squared_normal, theta(1.0), num_samples=20_000)["t"]
    assert chosen == {"z": pg.Score()}
    assert_mean(g, 2.0)
    assert_variance(g, 30.0)  # Score's variance, not Reparam's 4


def test_an_outer_handler_wins_over_the_elbos_auto():
    # Model z ~ N(0, 1), x ~ N(z, 1) at x = 1; guide z ~ N(μ, 1) at μ = 0.
    # ELBO(μ) = −μ²/2 − (1 − μ)²/2 + const: ∂μ = 1 − 2μ = 1.
    def model():
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(1.0))

    def guide():
        pyro.sample("z", dist.Normal(pyro.param("mu", torch.tensor(0.0)), 1.0))

    with pg.estimators({"z": pg.Score()}):
        chosen = pg.ELBO(num_particles=2, vectorize_particles=True).estimates(model, guide).estimators
        g = elbo_draws(model, guide, num_samples=20_000)["mu"]
        loss = pg.ELBO().differentiable_loss(model, guide)
    assert chosen == {"z": pg.Score()}
    assert loss.requires_grad
    assert_mean(g, 1.0)
    # Score's per-draw variance here is far above Reparam's (which is exactly 1):
    # (ε)·(f) with f quadratic in ε.
    assert float(g.var()) > 2.0


def test_an_outer_handler_wins_in_diagnose_and_compare():
    with pg.estimators({"z": pg.Score()}):
        report = pg.diagnose(squared_normal, theta(1.0), num_samples=4000)
    assert list(report.sites["estimator"].unique()) == ["Score()"]
    assert_variance(report.samples["t"], 30.0)

    # compare's built-in "auto" would give this Bernoulli guide site Score; the outer
    # config's Reparam() is chosen instead, and refused by name.
    def model():
        pyro.sample("z", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))

    def guide():
        pyro.sample("z", dist.Bernoulli(pyro.param("q", torch.tensor(0.3), constraint=dist.constraints.unit_interval)))

    with pg.estimators({"z": pg.Reparam()}):
        with pytest.raises(pg.EstimatorError, match=r"Reparam\(\) does not apply to site 'z' \(Bernoulli\)"):
            pg.compare(model, guide, configs={"auto": None}, num_steps=2, seeds=(0,))


def test_the_objectives_auto_still_applies_without_a_handler():
    assert expectation_estimates(squared_normal, (theta(1.0),), {}, 4, 1, True).estimators == {"z": pg.Reparam()}


# ----------------------------------------------------------------- 2. masked sites


def masked_bernoullis(kind):
    def program(t):
        with pyro.plate("p", 3):
            fn = dist.Bernoulli(t)
            if kind == "mask tensor":
                fn = fn.mask(torch.tensor([True, False, True]))
            elif kind == "MaskedDistribution":
                fn = dist.MaskedDistribution(fn, torch.tensor([True, False, True]))
            elif kind == "mask(False)":
                fn = fn.mask(False)
            if kind == "poutine.mask(False)":
                with poutine.mask(mask=False):
                    a = pyro.sample("a", fn)
            else:
                a = pyro.sample("a", fn)
        return a.sum(-1)

    return program


@pytest.mark.parametrize("kind", ["mask tensor", "MaskedDistribution", "mask(False)", "poutine.mask(False)"])
@pytest.mark.parametrize("vectorize", [True, False])
def test_a_mask_never_changes_what_an_expectation_draws(kind, vectorize):
    # Three Bernoulli(θ) draws, f = their sum, whatever the mask: ∂θ E[f] = 3.
    program = pg.estimators(masked_bernoullis(kind), {"a": pg.Score()})
    draws = 20_000 if vectorize else 600
    g = expectation_draws(program, theta(0.3), num_samples=draws, vectorize=vectorize, mode="loop" if not vectorize else "vectorized")["t"]
    assert_mean(g, 3.0)


def test_a_masked_guide_site_gets_the_gradient_tracegraph_elbo_gives():
    # Guide z_i ~ Bernoulli(q_i) in a plate of 3, element 1 masked out of the ELBO
    # (`.mask`); model z_i ~ Bernoulli(0.8). The masked ELBO is
    # Σ_i E[log p(z_i)] − Σ_{i ≠ 1} E[log q(z_i)]: the mask removes log q(z_1) from what
    # is scored, and z_1 is still drawn, so its score still multiplies log p(z_1), in
    # TraceGraph_ELBO and in pg.ELBO alike. Gradient in the logits: ∂/∂q_i · q_i(1 − q_i).
    mask = torch.tensor([True, False, True])
    q0 = torch.tensor([0.3, 0.4, 0.5])

    def model():
        with pyro.plate("p", 3):
            pyro.sample("z", dist.Bernoulli(torch.full((3,), 0.8)))

    def guide():
        q = pyro.param("q", q0, constraint=dist.constraints.unit_interval)
        with pyro.plate("p", 3):
            pyro.sample("z", dist.Bernoulli(q).mask(mask))

    q = q0.double().requires_grad_()
    log_p = q * math.log(0.8) + (1 - q) * math.log(0.2)
    entropy = -(q * q.log() + (1 - q) * (1 - q).log())
    (exact,) = torch.autograd.grad((log_p + mask * entropy).sum(), q)
    exact = exact * q0 * (1 - q0)

    draws = 1500
    ours = elbo_draws(model, pg.estimators(guide, {"z": pg.Score("auto")}), num_samples=draws, num_particles=1)["q"]
    tracegraph = []
    for _ in range(draws):
        pyro.clear_param_store()
        TraceGraph_ELBO().loss_and_grads(model, guide)
        tracegraph.append(-pyro.param("q").unconstrained().grad.clone())
    tracegraph = torch.stack(tracegraph)
    for i in range(3):
        assert_mean(ours[:, i], float(exact[i]))
        assert_mean(tracegraph[:, i], float(exact[i]))
    # "auto" sums z out (as TraceEnum_ELBO would, the mask applied to log q): the exact
    # gradient, with no variance (forward mode does not pass Pyro's Dice: drawn in a loop).
    summed = elbo_draws(model, guide, num_samples=3, num_particles=1, mode="loop")["q"]
    assert torch.allclose(summed, exact.float().expand(3, 3), atol=1e-5)


# ---------------------------------------------------- 3. control flow on drawn values


def successes_before_a_failure(p) -> int:
    n = 0
    while True:
        b = pyro.sample(f"b{n}", dist.Bernoulli(p))
        if b.item() == 0:
            break
        n += 1
    return n


def stop_on_zero(t):
    # Count Bernoulli(θ) successes before the first failure: E[n] = θ/(1−θ),
    # ∂θ E[n] = 1/(1−θ)² = 4 at θ = 0.5.
    return torch.tensor(float(successes_before_a_failure(t)))


@pytest.mark.parametrize(
    "estimator, num_particles",
    [(pg.Score(), 1), (pg.Score("loo"), 2), (None, 1), (pg.MeasureValued(), 1), (pg.Enumerate(), 1), (pg.DisARM(), 1)],
)
def test_a_loop_that_stops_on_a_draw_has_the_exact_gradient_looped(estimator, num_particles):
    program = pg.estimators(stop_on_zero, (lambda msg: estimator) if estimator is not None else None)
    g = expectation_draws(
        program, theta(0.5), num_samples=600, num_particles=num_particles, vectorize=False, mode="loop"
    )["t"]
    assert_mean(g, 4.0)


def test_a_loop_that_stops_on_a_draw_is_refused_vectorized():
    with pytest.raises(pg.EstimatorError, match=r"site 'b0' \(Bernoulli\).*vectorize=False"):
        pg.expectation(stop_on_zero, theta(0.5), num_particles=10)


def test_a_guide_that_loops_on_its_draws_has_the_exact_elbo_gradient():
    # Guide: b_n ~ Bernoulli(q) until the first 0; model: the same sites under
    # Bernoulli(0.5). With N = n + 1 sites, E[N] = 1/(1 − q):
    # ELBO(q) = log(½)/(1 − q) − q log q/(1 − q) − log(1 − q). At q = 0.4 (the param,
    # unconstrained in logit space) the gradient is dELBO/dq · q(1 − q).
    def model():
        successes_before_a_failure(torch.tensor(0.5))

    def guide():
        successes_before_a_failure(pyro.param("q", torch.tensor(0.4), constraint=dist.constraints.unit_interval))

    q = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    elbo = math.log(0.5) / (1 - q) - q * q.log() / (1 - q) - (1 - q).log()
    (exact,) = torch.autograd.grad(elbo, q)
    exact = float(exact * 0.4 * 0.6)  # q = σ(logit): dq/dlogit = q(1 − q)
    g = elbo_draws(model, guide, num_samples=1000, num_particles=2, mode="loop")["q"]
    assert_mean(g, exact)
    with pytest.raises(pg.EstimatorError, match="vectorize_particles=False"):
        pg.ELBO(num_particles=4, vectorize_particles=True).loss(model, guide)


# ------------------------------------- 4. discrete sites whose parameters depend on a draw


def geometric_after_bernoulli(t):
    a = pyro.sample("a", dist.Bernoulli(torch.sigmoid(t)))
    y = pyro.sample("y", dist.Geometric(0.3 + 0.4 * torch.sigmoid(t + a)))
    return y + a


def exact_geometric_after_bernoulli(t: float) -> float:
    # E[y | a] = (1 − p_a)/p_a, p_a = 0.3 + 0.4σ(θ + a); E[f] = Σ_a P(a)(E[y | a] + a).
    t = torch.tensor(t, dtype=torch.float64, requires_grad=True)
    s = torch.sigmoid(t)
    mean = 0.0
    for a, p_a in ((0.0, 1 - s), (1.0, s)):
        p = 0.3 + 0.4 * torch.sigmoid(t + a)
        mean = mean + p_a * ((1 - p) / p + a)
    (g,) = torch.autograd.grad(mean, t)
    return float(g)


@pytest.mark.parametrize("estimator", [pg.Score("loo"), pg.MeasureValued()])
@pytest.mark.parametrize("vectorize", [True, False])
def test_a_geometric_whose_probability_depends_on_a_bernoulli(estimator, vectorize):
    exact = exact_geometric_after_bernoulli(0.0)  # −0.140…
    assert exact == pytest.approx(-0.140, abs=1e-3)
    program = pg.estimators(geometric_after_bernoulli, default=estimator)
    draws = 20_000 if vectorize else 300
    g = expectation_draws(
        program, theta(0.0), num_samples=draws, num_particles=2, vectorize=vectorize, mode="vectorized" if vectorize else "loop"
    )["t"]
    assert_mean(g, exact)


def multinomial_after_categorical(t):
    c = pyro.sample("c", dist.Categorical(logits=torch.stack([t, -t, 0 * t], -1)))
    p = torch.sigmoid(t + c)
    m = pyro.sample("m", dist.Multinomial(4, torch.stack([p, 1 - p], -1)))
    return m[..., 0]


@pytest.mark.parametrize("vectorize", [True, False])
def test_a_multinomial_whose_probabilities_depend_on_a_categorical(vectorize):
    # E[m_0 | c] = 4σ(θ + c): E[f] = Σ_c softmax(θ, −θ, 0)_c · 4σ(θ + c).
    t = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    probs = torch.stack([t, -t, 0 * t]).softmax(0)
    mean = sum(probs[c] * 4 * torch.sigmoid(t + c) for c in range(3))
    (exact,) = torch.autograd.grad(mean, t)
    program = pg.estimators(multinomial_after_categorical, default=pg.Score("loo"))
    draws = 20_000 if vectorize else 300
    g = expectation_draws(
        program, theta(0.2), num_samples=draws, num_particles=2, vectorize=vectorize, mode="vectorized" if vectorize else "loop"
    )["t"]
    assert_mean(g, float(exact))


# ------------------------------------------------------- 5. baseline state is not a param


def test_the_decaying_baseline_leaves_no_parameter_in_the_param_store():
    def model():
        pyro.sample("z", dist.Bernoulli(0.5))

    def guide():  # the score function at z ("auto" would sum z out: no baseline at all)
        pyro.sample("z", dist.Bernoulli(pyro.param("p", torch.tensor(0.3), constraint=dist.constraints.unit_interval)),
                    infer={"estimator": pg.Score("auto")})

    elbo = pg.ELBO(num_particles=1)
    for _ in range(3):
        elbo.loss_and_grads(model, guide)
    store = pyro.get_param_store()
    assert list(store.keys()) == ["p"]
    assert all(param.grad is not None for _, param in store.named_parameters())
    assert "z#pooled" in elbo.estimators.averages  # the ELBO keeps the running average itself


# ----------------------------------------------------------- 6. one clear error each


def point_mass(t):
    return pyro.sample("z", dist.Delta(t)) ** 2


def test_delta_under_score_names_the_site_and_what_applies():
    with pytest.raises(pg.EstimatorError, match=r"Score\(\) does not apply to site 'z' \(Delta\).*Reparam\(\)"):
        pg.expectation(pg.estimators(point_mass, default=pg.Score()), theta(1.0))
    t = theta(1.5)
    pg.expectation(point_mass, t).backward()  # auto: Reparam, ∂θ θ² = 2θ = 3 exactly
    assert float(t.grad) == pytest.approx(3.0)


@pytest.mark.parametrize(
    "argument, program, says",
    [
        (theta(1.0), lambda t: pyro.sample("z", dist.Normal(0.0, 1.0)), "tensor with requires_grad=True"),
        (1.0, lambda t: pyro.sample("z", dist.Normal(t, 1.0)), "a float"),
        (torch.tensor(1.0), lambda t: pyro.sample("z", dist.Normal(t, 1.0)), "without requires_grad"),
    ],
    ids=["f independent of θ", "float argument", "tensor without requires_grad"],
)
def test_nothing_to_differentiate_is_one_clear_error(argument, program, says):
    with pytest.raises(pg.EstimatorError, match=f"depends on no tensor that requires grad.*{says}"):
        pg.expectation(program, argument, num_particles=4)
    with torch.no_grad():  # the value alone is fine
        pg.expectation(program, argument, num_particles=4)


def shifted_square(t):
    # z ~ N(θ, 1), f = (z − θ)² + z.
    z = pyro.sample("z", dist.Normal(t, 1.0))
    return (z - t) ** 2 + z


def test_a_fully_conditioned_program_vectorizes():
    # Conditioned on z = 2: f = (2 − θ)² + 2, ∂θ = −2(2 − θ) = −2 at θ = 1, for every particle.
    t = theta(1.0)
    value = pg.expectation(poutine.condition(shifted_square, {"z": torch.tensor(2.0)}), t, num_particles=5)
    value.backward()
    assert float(value) == pytest.approx(3.0)
    assert float(t.grad) == pytest.approx(-2.0)


def test_randomness_hidden_by_block_is_refused_vectorized():
    with pytest.raises(pg.EstimatorError, match="poutine.block.*vectorize=False"):
        pg.expectation(poutine.block(shifted_square), theta(1.0), num_particles=5)
    # Looped, a hidden Normal takes its own rsample: ∂θ E[f] = 1.
    g = expectation_draws(poutine.block(shifted_square), theta(1.0), num_samples=1000, vectorize=False, mode="loop")["t"]
    assert_mean(g, 1.0)


def soft_categorical(t):
    return pyro.sample("c", dist.Categorical(logits=torch.stack([t, -t], -1))).float()


def test_soft_gumbel_softmax_on_a_categorical_is_refused_and_not_listed():
    fn = dist.Categorical(logits=torch.zeros(2))
    assert pg.GumbelSoftmax(hard=True) in pg.applicable(fn)
    assert pg.GumbelSoftmax() not in pg.applicable(fn)
    with pytest.raises(pg.EstimatorError, match=r"site 'c' \(Categorical\).*hard=True"):
        pg.expectation(pg.estimators(soft_categorical, {"c": pg.GumbelSoftmax()}), theta(1.0), num_particles=4)


def empirical(t):
    # e ∈ {1, 2, 3} with weights softmax(θ, −θ, 0); f = e².
    return pyro.sample("e", dist.Empirical(torch.tensor([1.0, 2.0, 3.0]), torch.stack([t, -t, 0 * t]))) ** 2


def test_empirical_is_exact_looped_and_refused_vectorized():
    t = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    mean = (torch.stack([t, -t, 0 * t]).softmax(0) * torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64)).sum()
    (exact,) = torch.autograd.grad(mean, t)
    g = expectation_draws(empirical, theta(0.5), num_samples=600, num_particles=2, vectorize=False, mode="loop")["t"]
    assert_mean(g, float(exact))
    with pytest.raises(pg.EstimatorError, match=r"site 'e' .*Empirical.*vectorize=False"):
        pg.expectation(empirical, theta(0.5), num_particles=4)
