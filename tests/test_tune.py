"""``pg.tune``: each site gets the quietest unbiased estimator per unit of work.

Programs with known answers (the choice), exact gradients after tuning (the tuned
gradient is an unbiased estimator's: within ``Z`` standard errors of the exact
value), ``pg.Retuned`` around every objective, retuning in SVI,
and one clear error for every bad input.
"""

import logging
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from pyro.optim import Adam

import pyro_grad as pg

from conftest import Z, assert_mean
from draws import elbo_draws, expectation_draws

RATE = 2.0


def poisson_cost(rate):
    # E[(z − 3)²] = λ + (λ − 3)², so d/dλ = 1 + 2(λ − 3) = −1 at λ = 2.
    z = pyro.sample("z", dist.Poisson(rate))
    return (z - 3.0) ** 2


def normal_cost(theta):
    # E[z²] = θ² + 1, so d/dθ = 2θ.
    z = pyro.sample("z", dist.Normal(theta, 1.0))
    return z**2


def bernoulli_linear_cost(theta):
    # E[3b] = 3σ(θ), so d/dθ = 3σ(θ)(1 − σ(θ)).
    b = pyro.sample("b", dist.Bernoulli(logits=theta))
    return 3.0 * b


def bernoulli_square_cost(theta):
    # E[(b − 0.45)²] = σ(θ)(0.55² − 0.45²) + 0.45², so d/dθ = 0.1 σ'(θ).
    b = pyro.sample("b", dist.Bernoulli(logits=theta))
    return (b - 0.45) ** 2


def chosen_rows(tuning: pg.Tuning):
    return tuning.choices.set_index("site")


def test_a_poisson_site_with_a_smooth_cost_picks_the_coupled_difference():
    tuning = pg.tune(poisson_cost, torch.tensor(RATE, requires_grad=True))
    assert tuning.config == {"z": pg.MeasureValued()}
    rows = tuning.table.set_index("estimator")
    # Score's variance is the cost's spread times the score's, the coupled difference's
    # only the spread of f(z + 1) − f(z) = 2z − 5: measured, not assumed.
    assert rows.loc["MeasureValued()", "work-normalized variance"] < rows.loc["Score()", "work-normalized variance"]


def test_a_normal_site_picks_the_quietest_per_evaluation_by_the_textbook_variances():
    # f = z², z ~ N(θ, 1), θ = 0.5. Pathwise: 2z, variance 4 at 1 evaluation. Measure-valued
    # in the loc (the scale does not move): (f(θ + R) − f(θ − R))/√(2π) = 4θR/√(2π), R ~
    # Rayleigh(1), variance 16θ²(2 − π/2)/(2π) = 0.273 at 3 evaluations: 0.82 < 4.
    tuning = pg.tune(normal_cost, torch.tensor(0.5, requires_grad=True))
    assert tuning.config == {"z": pg.MeasureValued()}
    rows = tuning.table.set_index("estimator")
    # A sample variance of n = 200 draws has relative standard error sqrt((κ − 1)/n), κ the
    # kurtosis: 3 for the Normal 2z, 3.245 for a Rayleigh.
    assert rows.loc["Reparam()", "variance"] == pytest.approx(4.0, rel=Z * math.sqrt(2 / 200))
    textbook = 16 * 0.25 * (2 - math.pi / 2) / (2 * math.pi)
    assert rows.loc["MeasureValued()", "variance"] == pytest.approx(textbook, rel=Z * math.sqrt(2.245 / 200))
    assert rows.loc["MeasureValued()", "cost"] == 3


def test_a_bernoulli_with_a_linear_cost_picks_a_zero_variance_estimator_and_its_gradient_is_exact():
    theta = torch.tensor(0.3, requires_grad=True)
    tuning = pg.tune(bernoulli_linear_cost, theta)
    chosen = chosen_rows(tuning).loc["b"]
    # Enumeration, the measure-valued difference and IndeCateR all give 3σ'(θ) exactly:
    # the cheapest of them (2 evaluations) wins.
    assert chosen["variance"] < 1e-10 and chosen["cost"] == 2
    draws = expectation_draws(pg.estimators(bernoulli_linear_cost, tuning.config), theta, num_samples=50)["theta"]
    s = torch.sigmoid(theta.detach())
    assert torch.allclose(draws, 3 * s * (1 - s), atol=1e-6)


def test_biased_candidates_are_measured_but_never_chosen_unless_allowed():
    theta = torch.tensor(0.2, requires_grad=True)
    candidates = [pg.Score(), pg.StraightThrough(), pg.GumbelSoftmax()]
    strict = pg.tune(bernoulli_square_cost, theta, candidates=candidates)
    assert strict.config == {"b": pg.Score()}
    biased = strict.table[~strict.table["unbiased"]]
    assert len(biased) == 2 and not biased["eligible"].any() and not biased["chosen"].any()
    loose = pg.tune(bernoulli_square_cost, theta, candidates=candidates, allow_biased=True)
    best = loose.table.loc[loose.table["work-normalized variance"].idxmin(), "estimator"]
    assert repr(loose.config["b"]) == best
    assert not loose.config["b"].unbiased  # straight-through is quieter here, and biased
    # Without allow_biased, the default candidates hold no biased estimator at all.
    assert pg.tune(bernoulli_square_cost, theta).table["unbiased"].all()


def two_sites(theta):
    # E[z² + 3b + zb] with z ~ N(θ, 1), b ~ Bernoulli(σ(θ)) independent:
    # θ² + 1 + 3σ(θ) + θσ(θ), so d/dθ = 2θ + 3σ' + σ + θσ'.
    z = pyro.sample("z", dist.Normal(theta, 1.0))
    b = pyro.sample("b", dist.Bernoulli(logits=theta))
    return z**2 + 3.0 * b + z * b


def test_each_site_is_chosen_with_the_others_at_their_choice_until_nothing_changes():
    theta = torch.tensor(0.3, requires_grad=True)
    tuning = pg.tune(two_sites, theta)
    assert tuning.config["z"] == pg.Reparam()
    assert 2 <= tuning.rounds <= 3
    table = tuning.table
    for (_, _), rows in table.groupby(["round", "site"]):
        ranked = rows[rows["eligible"] & (rows["refused"] == "")]
        assert rows["chosen"].sum() == 1
        assert rows[rows["chosen"]].index[0] == ranked["work-normalized variance"].idxmin()
    # The last round changed nothing.
    last = table[table["round"] == tuning.rounds]
    before = table[table["round"] == tuning.rounds - 1]
    assert list(last[last["chosen"]]["estimator"]) == list(before[before["chosen"]]["estimator"])
    # The tuned gradient is unbiased: against the closed form.
    t, s = 0.3, torch.sigmoid(torch.tensor(0.3)).item()
    exact = 2 * t + 3 * s * (1 - s) + s + t * s * (1 - s)
    draws = expectation_draws(pg.estimators(two_sites, tuning.config), theta, num_samples=4000)["theta"]
    assert_mean(draws, exact)


def test_a_seconds_metric_ranks_by_variance_times_seconds():
    tuning = pg.tune(poisson_cost, torch.tensor(RATE, requires_grad=True), metric="seconds")
    rows = tuning.table
    assert rows.loc[rows["chosen"]].index[0] == rows["time-normalized variance"].idxmin()


def test_sites_the_program_fixes_itself_are_left_alone():
    def fixed_on_site(theta):
        z = pyro.sample("z", dist.Normal(theta, 1.0), infer={"estimator": pg.Score()})
        b = pyro.sample("b", dist.Bernoulli(logits=theta))
        return z**2 + b

    theta = torch.tensor(0.3, requires_grad=True)
    tuning = pg.tune(fixed_on_site, theta)
    assert tuning.fixed == {"z": pg.Score()} and tuning.config["z"] == pg.Score()
    assert set(tuning.table["site"]) == {"b"}
    wrapped = pg.estimators(two_sites, {"b": pg.DisARM()})
    tuning = pg.tune(wrapped, theta)
    assert tuning.fixed == {"b": pg.DisARM()} and set(tuning.table["site"]) == {"z"}


def test_candidates_may_be_a_list_or_per_site():
    theta = torch.tensor(0.3, requires_grad=True)
    tuning = pg.tune(two_sites, theta, candidates={"b": [pg.Score(), pg.DisARM()]})
    assert set(tuning.table[tuning.table["site"] == "b"]["estimator"]) == {"Score()", "DisARM()"}
    tuning = pg.tune(two_sites, theta, candidates=[pg.Reparam(), pg.Score()])
    assert set(tuning.table[tuning.table["site"] == "b"]["estimator"]) == {"Score()"}


def test_bad_input_gets_one_clear_error():
    theta = torch.tensor(0.3, requires_grad=True)
    with pytest.raises(pg.EstimatorError, match="metric must be one of"):
        pg.tune(two_sites, theta, metric="flops")
    with pytest.raises(pg.EstimatorError, match=r"site\(s\) \['w'\] that the program does not have.*\['z', 'b'\]"):
        pg.tune(two_sites, theta, candidates={"w": [pg.Score()]})
    with pytest.raises(pg.EstimatorError, match=r"no candidate to measure at site 'b' \(Bernoulli\).*DisARM\(\)"):
        pg.tune(two_sites, theta, candidates=[pg.Reparam()])
    with pytest.raises(pg.EstimatorError, match=r"\[DReG\(\)\] apply to none of the sites"):
        pg.tune(two_sites, theta, candidates=[pg.Reparam(), pg.Score(), pg.DReG()])
    with pytest.raises(pg.EstimatorError, match=r"Reparam\(\) does not apply to site 'b' \(Bernoulli\)"):
        pg.tune(two_sites, theta, candidates={"b": [pg.Score(), pg.Reparam()]})
    with pytest.raises(pg.EstimatorError, match="candidates name site 'z', which the program fixes to Score"):
        pg.tune(pg.estimators(two_sites, {"z": pg.Score()}), theta, candidates={"z": [pg.Reparam()]})
    with pytest.raises(pg.EstimatorError, match="candidates must be None, a list"):
        pg.tune(two_sites, theta, candidates=pg.Score())
    with pytest.raises(pg.EstimatorError, match="max_rounds must be"):
        pg.tune(two_sites, theta, max_rounds=0)
    with pytest.raises(pg.EstimatorError, match="no latent sample site"):
        pg.tune(lambda t: t**2, theta)
    with pytest.raises(pg.EstimatorError, match="default must be 'auto', None or an estimator"):
        pg.estimators(two_sites, default="tuned")
    # The shorthands that moved say where to.
    with pytest.raises(pg.EstimatorError, match=r"default='tune' moved .* pg.Retuned\(pg.ELBO"):
        pg.estimators(two_sites, default="tune")
    with pytest.raises(pg.EstimatorError, match=r"retune_every= moved .* pg.Retuned\(pg.ELBO\(...\), every=N"):
        pg.ELBO(retune_every=2)
    with pytest.raises(pg.EstimatorError, match="every must be a positive integer or None"):
        pg.Retuned(pg.ELBO(), every=0)
    with pytest.raises(pg.EstimatorError, match=r"passes .* to pg.tune, not \['bogus'\]"):
        pg.Retuned(pg.ELBO(), every=2, bogus=1)
    with pytest.raises(pg.EstimatorError, match=r"wraps an objective instance, e.g. pg.Retuned\(ELBO\(num_particles"):
        pg.Retuned(pg.ELBO)
    with pytest.raises(pg.EstimatorError, match="wraps pg.expectation or an ELBO"):
        pg.Retuned(two_sites)
    with pytest.raises(pg.EstimatorError, match="wraps pg.expectation: call it as pg.expectation"):
        pg.Retuned(pg.expectation).loss(model, guide, torch.tensor(DATA))
    # A site no candidate can run at: every reason, by candidate.
    with pytest.raises(pg.EstimatorError, match=r"no candidate could be measured at site 'z' \(Normal\)"):
        pg.tune(poisson_normal_read, theta, candidates={"z": [pg.Score("loo")]})


def poisson_normal_read(theta):
    z = pyro.sample("z", dist.Normal(theta, 1.0))
    return z**2


# ---- pg.Retuned around every objective ------------------------------------------------


def test_retuned_expectation_tunes_before_its_first_call_and_not_again():
    rate = torch.tensor(RATE, requires_grad=True)
    expectation = pg.Retuned(pg.expectation)
    assert expectation.tuning is None
    expectation(poisson_cost, rate, num_particles=2).backward()
    first = expectation.tuning
    assert first.config == {"z": pg.MeasureValued()} and expectation.switches == [
        pg.Switch(0, "z", None, pg.MeasureValued())]
    expectation(poisson_cost, rate)  # tuned once, not again
    assert expectation.tuning is first and list(expectation.tunings) == [0]


def test_retuned_expectation_every_call_gradient_is_the_tuned_estimators():
    # d/dλ E[(z − 3)²] = −1 at λ = 2 (z ~ Poisson(λ): E = λ + (λ − 3)²), from the tuned
    # MeasureValued: the mean of 400 calls of 10 particles, Z standard errors.
    rate = torch.tensor(RATE, requires_grad=True)
    expectation = pg.Retuned(pg.expectation, num_samples=100)
    grads = []
    for _ in range(400):
        (grad,) = torch.autograd.grad(expectation(poisson_cost, rate, num_particles=10), rate)
        grads.append(grad)
    assert expectation.tuning.config == {"z": pg.MeasureValued()}
    assert_mean(torch.stack(grads), -1.0)


# A latent Bernoulli with a Normal observation; q(b) = Bernoulli(σ(φ)).
PRIOR, DATA = 0.3, 1.5


def model(x):
    b = pyro.sample("b", dist.Bernoulli(PRIOR))
    pyro.sample("x", dist.Normal(2.0 * b, 1.0), obs=x)


def guide(x):
    phi = pyro.param("phi", torch.tensor(0.2))
    pyro.sample("b", dist.Bernoulli(logits=phi))


def exact_elbo_gradient(phi: float) -> float:
    """d/dφ Σ_b q(b) (log p(x, b) − log q(b)), by enumeration."""
    phi = torch.tensor(phi, dtype=torch.float64, requires_grad=True)
    q = torch.sigmoid(phi)
    elbo = 0.0
    for b, qb in ((1.0, q), (0.0, 1 - q)):
        log_p = dist.Bernoulli(torch.tensor(PRIOR, dtype=torch.float64)).log_prob(torch.tensor(b, dtype=torch.float64))
        log_p = log_p + dist.Normal(torch.tensor(2.0 * b, dtype=torch.float64), 1.0).log_prob(
            torch.tensor(DATA, dtype=torch.float64))
        elbo = elbo + qb * (log_p - qb.log())
    return float(torch.autograd.grad(elbo, phi)[0])


def exact_bound_gradient(phi: float, k: int) -> float:
    """d/dφ E[log (1/K) Σ_k w_k], by summing over all 2^K tuples of particles."""
    import itertools

    phi = torch.tensor(phi, dtype=torch.float64, requires_grad=True)
    q = torch.sigmoid(phi)
    x = torch.tensor(DATA, dtype=torch.float64)

    def log_w(b):
        b = torch.tensor(b, dtype=torch.float64)
        log_p = dist.Bernoulli(torch.tensor(PRIOR, dtype=torch.float64)).log_prob(b)
        return log_p + dist.Normal(2.0 * b, 1.0).log_prob(x) - dist.Bernoulli(q).log_prob(b)

    total = 0.0
    for bs in itertools.product((0.0, 1.0), repeat=k):
        weight = torch.stack([q if b else 1 - q for b in bs]).prod()
        total = total + weight * (torch.logsumexp(torch.stack([log_w(b) for b in bs]), 0) - math.log(k))
    return float(torch.autograd.grad(total, phi)[0])


def gradients_over_steps(elbo, program, steps: int) -> torch.Tensor:
    """dELBO/dφ of ``steps`` successive calls at the same φ (retuning where it is due)."""
    data = torch.tensor(DATA)
    grads = []
    for _ in range(steps):
        loss = elbo.differentiable_loss(model, program, data)
        phi = pyro.param("phi").unconstrained()
        grads.append(-torch.autograd.grad(loss, phi)[0])
    return torch.stack(grads)


@pytest.mark.parametrize("objective", [pg.ELBO, pg.IWAE])
def test_retune_every_measures_before_a_step_and_every_step_stays_unbiased(objective, caplog):
    k = 2
    elbo = pg.Retuned(objective(num_particles=k, vectorize_particles=True), every=100, num_samples=100)
    with caplog.at_level(logging.INFO, logger="pyro_grad.tuning"):
        grads = gradients_over_steps(elbo, guide, 300)
    assert elbo.steps == 300 and sorted(elbo.tunings) == [0, 100, 200]
    tuned = elbo.tuning.config["b"]
    assert tuned.unbiased and tuned != pg.Score("auto")
    # The choice before step 0, logged and readable; later retunes at 100 and 200.
    assert elbo.switches[0] == pg.Switch(0, "b", None, tuned)
    assert "step 0: site 'b' now uses" in caplog.text
    exact = exact_elbo_gradient(0.2) if objective is pg.ELBO else exact_bound_gradient(0.2, k)
    assert_mean(grads, exact)


@pytest.mark.parametrize("objective", [pg.ELBO, pg.IWAE])
def test_retuned_as_svis_loss_tunes_once_before_the_first_step(objective):
    elbo = pg.Retuned(objective(num_particles=2, vectorize_particles=True), num_samples=50)
    data = torch.tensor(DATA)
    svi = SVI(model, guide, Adam({"lr": 0.01}), loss=elbo)
    svi.step(data)
    svi.step(data)
    assert math.isfinite(svi.evaluate_loss(data))  # a value alone: nothing measured
    tuned = elbo.tuning.config
    assert set(tuned) == {"b"} and [s.step for s in elbo.switches] == [0] and list(elbo.tunings) == [0]
    # The tuned path is the one the ELBO uses: its gradient is exact in mean. (An
    # Enumerate() measured for pg.ELBO sums b out, and forward mode does not pass
    # Pyro's Dice, whose SafeLog has no jvp: those draws are made one at a time.)
    summed_out = objective is pg.ELBO and any(isinstance(e, pg.Enumerate) for e in tuned.values())
    draws = elbo_draws(model, pg.estimators(guide, tuned), data, num_samples=200 if summed_out else 2000,
                       num_particles=2, objective=objective, mode="loop" if summed_out else "vectorized")["phi"]
    exact = exact_elbo_gradient(float(pyro.param("phi"))) if objective is pg.ELBO else exact_bound_gradient(
        float(pyro.param("phi")), 2)
    assert_mean(draws, exact)


def test_a_users_own_choice_wins_over_retuning():
    elbo = pg.Retuned(pg.ELBO(num_particles=2, vectorize_particles=True), every=1, num_samples=50)
    program = pg.estimators(guide, {"b": pg.DisARM()})
    elbo.differentiable_loss(model, program, torch.tensor(DATA))
    assert elbo.tuning.fixed == {"b": pg.DisARM()} and elbo.switches == []


def test_a_users_own_choice_around_the_call_wins_over_retuning_and_is_not_logged_as_a_switch():
    elbo = pg.Retuned(pg.ELBO(num_particles=2, vectorize_particles=True), every=1, num_samples=50)
    with pg.estimators({"b": pg.Score()}):
        elbo.differentiable_loss(model, guide, torch.tensor(DATA))
    assert elbo.tuning.fixed == {"b": pg.Score()} and elbo.switches == []


def random_start_guide(x):
    # A param whose initial value is drawn: created by the first run, inside the tuning.
    loc = pyro.param("loc", lambda: torch.randn(()))
    pyro.sample("b", dist.Bernoulli(logits=loc))


def test_the_tuning_draws_from_its_own_stream_so_the_step_is_the_untuned_steps():
    # From an empty param store: the tuning creates "loc" from its own stream, the step
    # then draws what an ELBO with the tuned estimator fixed by hand draws from the same
    # state, so its loss and gradient are equal to that ELBO's to the last bit.
    data = torch.tensor(DATA)
    torch.manual_seed(1)
    elbo = pg.Retuned(pg.ELBO(num_particles=2, vectorize_particles=True), every=5, num_samples=20)
    state = torch.get_rng_state()
    loss = elbo.differentiable_loss(model, random_start_guide, data)  # step 0: tuned, then drawn
    grad = torch.autograd.grad(loss, pyro.param("loc").unconstrained())[0]
    tuned = elbo.tuning.config["b"]
    torch.set_rng_state(state)
    assert float(pyro.param("loc")) != float(torch.randn(()))  # created from the tuning's own stream
    torch.set_rng_state(state)
    by_hand = pg.ELBO(num_particles=2, vectorize_particles=True)
    loss_by_hand = by_hand.differentiable_loss(model, pg.estimators(random_start_guide, {"b": tuned}), data)
    grad_by_hand = torch.autograd.grad(loss_by_hand, pyro.param("loc").unconstrained())[0]
    assert torch.equal(loss, loss_by_hand) and torch.equal(grad, grad_by_hand)


def test_a_measurement_is_read_for_the_site_it_is_shown_at():
    # Round 2 re-reads round 1's measurements: z's Reparam rows keep z's share (NaN, a
    # pathwise site's part cannot be separated), never b's.
    tuning = pg.tune(two_sites, torch.tensor(0.3, requires_grad=True))
    z_rows = tuning.table[(tuning.table["site"] == "z") & (tuning.table["estimator"] == "Reparam()")]
    assert len(z_rows) == tuning.rounds and z_rows["variance share"].isna().all()
    score_at_b = tuning.table[(tuning.table["site"] == "b") & (tuning.table["estimator"] == "Score()")]
    assert score_at_b["variance share"].notna().all()


def test_the_programs_own_keywords_stay_the_programs():
    def with_keywords(rate, shift=0.0, metric=1.0):
        z = pyro.sample("z", dist.Poisson(rate))
        return (z - 3.0 - shift) ** 2 * metric

    rate = torch.tensor(RATE, requires_grad=True)
    expectation = pg.Retuned(pg.expectation)
    expectation(with_keywords, rate, shift=0.0, metric=2.0)  # tune's own "metric" is not the program's
    assert expectation.tuning.config == {"z": pg.MeasureValued()}
    with pytest.raises(pg.EstimatorError, match=r"keyword\(s\) \['seed'\] have the names of pg.diagnose's"):
        pg.Retuned(pg.expectation)(lambda rate, seed=0.0: with_keywords(rate, seed), rate, seed=1.0)
    # Under no_grad (a value alone) nothing is measured.
    untouched = pg.Retuned(pg.expectation)
    with torch.no_grad():
        untouched(poisson_cost, rate)
    assert untouched.tuning is None


# ---- random programs ----------------------------------------------------------------

import os  # noqa: E402

from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from scipy.stats import norm  # noqa: E402

from random_programs import MAX_GRID, Program, exact_gradient, grid_size  # noqa: E402
from test_random_programs import THETA, cost_coefficient, sites  # noqa: E402

#: Random programs per run (``PYRO_GRAD_DEEP=1``: 40), and the Bonferroni-corrected
#: z over them for a family-wise false-alarm rate of 1e-3 (at least Z).
RANDOM_EXAMPLES = 40 if os.environ.get("PYRO_GRAD_DEEP", "") not in ("", "0") else 5
Z_RANDOM = max(Z, float(norm.isf(1e-3 / (2 * RANDOM_EXAMPLES))))


@st.composite
def small_programs(draw) -> Program:
    """One or two sites of any family and placement, no loop: tuning measures every
    candidate at every site, so the programs stay small."""
    count = draw(st.integers(1, 2))
    program = Program(tuple(draw(sites(i)) for i in range(count)), None, cross=draw(cost_coefficient),
                      pathwise=draw(st.sampled_from([0.0, 1.0])))
    assume(grid_size(program) <= MAX_GRID)
    return program


@settings(max_examples=RANDOM_EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(program=small_programs(), k=st.integers(1, 2))
def test_on_random_programs_the_tuned_config_is_unbiased_and_its_gradient_exact(program, k):
    # Reference: the exact dE[f]/dθ by summing every site's support (Gauss–Hermite for
    # Normals), as in test_random_programs; tolerance Z_RANDOM standard errors.
    pyro.clear_param_store()
    theta = torch.tensor(THETA, requires_grad=True)
    tuning = pg.tune(program, theta, num_particles=k, num_samples=50)
    assert set(tuning.config) == {f"s{i}" for i in range(len(program.sites))}
    assert all(estimator.unbiased for estimator in tuning.config.values())
    _, exact = exact_gradient(program, THETA)
    draws = expectation_draws(pg.estimators(program, tuning.config), theta, num_samples=4000,
                              num_particles=k)["theta"]
    mean = float(draws.double().mean())
    se = float(draws.double().std()) / math.sqrt(draws.numel())
    assert abs(mean - exact) <= Z_RANDOM * se + 1e-4 * max(1.0, abs(exact)), (
        f"{program.describe()} tuned to {tuning.config}, K={k}: mean {mean:.5g} vs exact {exact:.5g} (se {se:.3g})")
