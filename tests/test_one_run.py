"""``MeasureValued(engine="one-run")``: one alternative run for every discrete site, the
sites' perturbations pruned to one per particle (:mod:`pyro_grad.engine.one_run`).

Each program's exact gradient comes from a closed form or a dynamic program; the
one-run engine's mean over independent draws must lie within Z = 4 standard errors of
it (``assert_mean``), and its cost must not grow with the number of sites.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_grad as pg
from pyro_grad.harness.models import discrete
from pyro_grad.harness.models.discrete import state_walk as walk
from pyro_grad.harness.models.discrete import state_walk_derivative as walk_derivative
from pyro_grad.harness.models.discrete import state_walk_pruned_by_hand
from pyro_grad.harness.models import sir
from pyro_grad.engine.one_run import LAZY_PATHS
from pyro_grad.objectives.expectation import expectation_estimates

from conftest import Z, assert_mean, assert_variance, standard_error_of_variance
from draws import elbo_draws, expectation_draws

ONE_RUN = pg.MeasureValued(engine="one-run")


def test_the_state_dependent_walk_has_the_dynamic_programs_derivative():
    # Every step's probability depends on the state the earlier steps left: a perturbed
    # step moves every later probability, whose draws follow on common random numbers.
    n, p = 30, 15.0
    exact = walk_derivative(p, n)
    draws = expectation_draws(pg.estimators(lambda q: walk(q, n), default=ONE_RUN), torch.tensor(p, requires_grad=True),
                              num_samples=4000)
    assert_mean(draws["q"], exact)


@pytest.mark.parametrize("paths", [1, None])
def test_the_walks_variance_is_the_hand_written_lazy_estimators(paths):
    # The same estimator written by hand in vectorized torch (down steps flip, c = 1/(1 − q),
    # weighed by the defensive mixture 0.1|c|/Σ|c| + 0.9|c|·∂p q/Σ|c|·∂p q, made on the
    # steps' uniforms, a carried flip dropped once its path rejoins the first), with one
    # alternative path per sample and with the engine's default of LAZY_PATHS (each on
    # uniforms of its own given the first path's steps, averaged): 200,000 of its draws
    # give the variance, ours must match it within Z standard errors of our sample
    # variance (n = 30, p = 60).
    n, p = 30, 60.0
    estimator = pg.MeasureValued(engine="one-run", paths=paths)
    torch.manual_seed(1)
    reference = state_walk_pruned_by_hand(p, n, 200_000, lazy=True, paths=paths or LAZY_PATHS)
    estimates = expectation_estimates(pg.estimators(lambda q: walk(q, n), default=estimator),
                                      (torch.tensor(p),), {}, 1, 1, True, 0)
    assert "pruned at once" not in estimates.reasons["step_0"]
    draws = expectation_draws(pg.estimators(lambda q: walk(q, n), default=estimator),
                              torch.tensor(p, requires_grad=True), num_samples=6000)["q"]
    assert_mean(reference, walk_derivative(p, n))
    assert_mean(draws, walk_derivative(p, n))
    assert_variance(draws, float(reference.var()))


@pytest.mark.parametrize("paths", [None, 4])
def test_pruned_at_once_the_walks_variance_is_the_hand_written_at_once_estimators(monkeypatch, paths):
    # Where the alternative path cannot be carried beside the run, the jump is chosen
    # after the first run (the same weights, nothing dropped), one alternative run per
    # path (one by default; paths=4 asks for four): its variance is the hand-written
    # at-once estimator's with as many paths (200,000 draws), and the reasons say why.
    import importlib

    from pyro_grad.engine.lazy_pruning import Unsupported

    expectation_module = importlib.import_module("pyro_grad.objectives.expectation")

    def cannot(*args, **kwargs):
        raise Unsupported("a test stops it")

    monkeypatch.setattr(expectation_module, "lazily_pruned", cannot)
    n, p = 30, 60.0
    torch.manual_seed(1)
    reference = state_walk_pruned_by_hand(p, n, 200_000, lazy=False, paths=paths or 1)
    program = pg.estimators(lambda q: walk(q, n), default=pg.MeasureValued(engine="one-run", paths=paths))
    estimates = expectation_estimates(program, (torch.tensor(p, requires_grad=True),), {}, 2, 1, True, 0)
    assert "pruned at once, not lazily, as the alternative path could not be carried beside the run: a test stops it" \
        in estimates.reasons["step_0"]
    draws = expectation_draws(program, torch.tensor(p, requires_grad=True), num_samples=6000)["q"]
    assert_mean(reference, walk_derivative(p, n))
    assert_mean(draws, walk_derivative(p, n))
    assert_variance(draws, float(reference.var()))


def standard_error_of_std(x: torch.Tensor) -> float:
    """The delta method's standard error of a sample standard deviation: the variance's,
    divided by 2σ."""
    return standard_error_of_variance(x) / (2 * float(x.double().std()))


def test_lazy_pruning_lowers_the_walks_variance_as_stochastic_ad_does():
    # Hand-written, 100,000 draws each (n = 100, p = 200, StochasticAD.jl's setup): lazy
    # pruning drops flips whose paths rejoined, so one sample's standard deviation falls
    # from about 8.8 (the engine's weights, at once) to 6.7 (lazily), 6.55 with the
    # one-sided jumps (one_sided=True) and 6.5 with StochasticAD's weights (their docs:
    # about 6.5). Each is unbiased; tolerances are Z standard errors of the std.
    n, p = 100, 200.0
    exact = walk_derivative(p, n)
    torch.manual_seed(2)
    runs = {(False, "engine")} | {(True, w) for w in ("engine", "one-sided", "stochastic-ad")}
    spread = {}
    for lazy, weights in sorted(runs):
        draws = state_walk_pruned_by_hand(p, n, 100_000, lazy=lazy, weights=weights)
        assert_mean(draws, exact)
        spread[lazy, weights] = (float(draws.std()), standard_error_of_std(draws))
    (at_once, se_once), (lazy, se_lazy) = spread[False, "engine"], spread[True, "engine"]
    assert at_once - lazy > 1.5 + Z * math.hypot(se_once, se_lazy)
    theirs, se_theirs = spread[True, "stochastic-ad"]
    assert abs(theirs - 6.5) < Z * se_theirs + 0.05  # their figure is given to one decimal
    one_sided, se_one_sided = spread[True, "one-sided"]
    assert abs(one_sided - theirs) < Z * math.hypot(se_one_sided, se_theirs)


def test_sixteen_paths_per_particle_halve_the_walks_spread():
    # Hand-written, 50,000 draws each (n = 100, p = 200): one alternative path's estimate
    # varies with the pruning's choices and the path's own redraws, which the paths
    # average away, sharing one first path. One sample's standard deviation falls from
    # about 6.7 (one path) to 3.0 (LAZY_PATHS = 16; one-sided, 2.4), below the re-run
    # engine's 2.9 in the one-sided form. Each is unbiased; tolerances are Z standard
    # errors of the std.
    n, p = 100, 200.0
    exact = walk_derivative(p, n)
    torch.manual_seed(4)
    spread = {}
    for paths, weights in ((1, "engine"), (LAZY_PATHS, "engine"), (LAZY_PATHS, "one-sided")):
        draws = state_walk_pruned_by_hand(p, n, 50_000, lazy=True, weights=weights, paths=paths)
        assert_mean(draws, exact)
        spread[paths, weights] = (float(draws.std()), standard_error_of_std(draws))
    (one, se_one), (many, se_many) = spread[1, "engine"], spread[LAZY_PATHS, "engine"]
    assert many < one / 2 - Z * math.hypot(se_one / 2, se_many)
    assert abs(many - 3.0) < Z * se_many + 0.05  # the figure measured by the benchmark, to one decimal
    one_sided, se_one_sided = spread[LAZY_PATHS, "one-sided"]
    assert one_sided < many - Z * math.hypot(se_one_sided, se_many)


@pytest.mark.parametrize("width, paths", [(1, 16), (4096, 4), (20_000, 1)])
def test_the_default_paths_shrink_as_the_sites_widen(width, paths):
    # LAZY_PATHS = 16 paths while a site's elements per particle × paths stay within
    # LAZY_ELEMENTS = 2**14 (4096 elements: 4 paths; 20,000: 1), whatever the particles;
    # the reasons say how many were carried, and the mean is E[Σ b] = width·θ's
    # derivative, width, within Z standard errors.
    def plated(theta):
        with pyro.plate("elements", width):
            b = pyro.sample("b", dist.Bernoulli(theta))
        return b.sum(-1)

    program = pg.estimators(plated, default=ONE_RUN)
    for particles in (2, 50):
        reasons = expectation_estimates(program, (torch.tensor(0.3, requires_grad=True),), {}, particles, 1, True).reasons
        carried = "1 alternative path" if paths == 1 else f"{paths} alternative paths"
        assert reasons["b"].endswith(f"pruned lazily on {carried} per particle"), reasons["b"]
    draws = expectation_draws(program, torch.tensor(0.3, requires_grad=True), num_samples=200)["theta"]
    assert_mean(draws, float(width))


def test_the_one_sided_one_run_walk_matches_its_hand_written_variance():
    # MeasureValued(engine="one-run", one_sided=True) against the hand-written one-sided
    # estimator with the default LAZY_PATHS paths (200,000 draws), on the walk n = 30,
    # p = 60: the same mean (the exact derivative) and variance within Z standard errors.
    n, p = 30, 60.0
    torch.manual_seed(3)
    reference = state_walk_pruned_by_hand(p, n, 200_000, lazy=True, weights="one-sided", paths=LAZY_PATHS)
    estimator = pg.MeasureValued(engine="one-run", one_sided=True)
    draws = expectation_draws(pg.estimators(lambda q: walk(q, n), default=estimator),
                              torch.tensor(p, requires_grad=True), num_samples=6000)["q"]
    assert_mean(draws, walk_derivative(p, n))
    assert_variance(draws, float(reference.var()))


def test_paths_is_a_positive_setting_of_the_one_run_engine_that_its_sites_share():
    # Set where it would not take effect, or set two ways for one shared run, it is
    # refused, naming what applies.
    with pytest.raises(pg.EstimatorError, match="paths is a setting of the one-run engine"):
        pg.MeasureValued(paths=4)
    with pytest.raises(pg.EstimatorError, match="paths must be a positive int"):
        pg.MeasureValued(engine="one-run", paths=0)
    with pytest.raises(pg.EstimatorError, match="paths must be a positive int"):
        pg.DisARM(engine="one-run", paths=2.5)

    def two(p):
        a = pyro.sample("a", dist.Bernoulli(p), infer={"estimator": pg.MeasureValued(engine="one-run", paths=4)})
        b = pyro.sample("b", dist.Bernoulli(p), infer={"estimator": pg.MeasureValued(engine="one-run", paths=8)})
        return a * b

    with pytest.raises(pg.EstimatorError, match=r"different numbers of paths \('a' paths=4, 'b' paths=8\)"):
        pg.expectation(two, torch.tensor(0.3, requires_grad=True), num_particles=4)


def test_one_sided_applies_to_the_one_run_engines_bernoulli_jumps_only():
    # Set where it would not take effect, it is refused, naming what applies.
    with pytest.raises(pg.EstimatorError, match="one_sided=True is a form of the one-run engine"):
        pg.MeasureValued(one_sided=True)

    def poisson(rate):
        return pyro.sample("k", dist.Poisson(rate)) ** 2

    with pytest.raises(pg.EstimatorError, match=r"site 'k' \(Poisson.*one_sided=True is a form of a Bernoulli"):
        pg.expectation(pg.estimators(poisson, default=pg.MeasureValued(engine="one-run", one_sided=True)),
                       torch.tensor(2.0, requires_grad=True), num_particles=4)


def test_the_agent_based_sir_has_the_dynamic_programs_derivative():
    # 20 agents, 10 days, 2 Bernoulli sites a day in the agents' plate: 400 elements offer
    # a jump, one per particle is kept. Exact ∂ E[Σ_t w_t·new_t] by the DP over (S, I),
    # in β alone (the proposal weighs each jump by its sensitivity to β) and in β and γ
    # together (by |c| alone). 800 draws: 16 paths per particle make each about a tenth
    # as variable as one path's, so their standard error is smaller than 3,000 of those.
    beta, gamma = 0.6, 0.2
    exact = sir.weighted_infections_gradient(beta, gamma)
    program = pg.estimators(lambda b: sir.weighted_infections(b, torch.tensor(gamma)), default=ONE_RUN)
    draws = expectation_draws(program, torch.tensor(beta, requires_grad=True), num_samples=800)
    assert_mean(draws["b"], float(exact["beta"]))
    both = expectation_draws(pg.estimators(sir.weighted_infections, default=ONE_RUN), torch.tensor(beta, requires_grad=True),
                             torch.tensor(gamma, requires_grad=True), num_samples=800)
    assert_mean(both["beta"], float(exact["beta"]))
    assert_mean(both["gamma"], float(exact["gamma"]))


def test_one_alternative_run_serves_every_site():
    # Program evaluations per particle: the first run and one alternative run, at 30 sites
    # as at 3 (the re-run engine: 1 + one per site).
    for n in (3, 30):
        pyro.set_rng_seed(0)
        p = torch.tensor(15.0, requires_grad=True)
        ours = expectation_estimates(pg.estimators(lambda q: walk(q, n), default=ONE_RUN), (p,), {}, 8, 1, True)
        rerun = expectation_estimates(pg.estimators(lambda q: walk(q, n), default=pg.MeasureValued()), (p,), {}, 8, 1,
                                      True)
        assert ours.evaluations == 2
        assert rerun.evaluations == 1 + n


def chain(theta: torch.Tensor) -> torch.Tensor:
    """z ~ Categorical(softmax(θ)), x | z ~ Poisson(1 + z + θ_0²), y | x ~ Bernoulli(σ(x − 2)); f = (x + y)²."""
    z = pyro.sample("z", dist.Categorical(logits=theta))
    x = pyro.sample("x", dist.Poisson(1.0 + z.to(theta.dtype) + theta[0] ** 2))
    y = pyro.sample("y", dist.Bernoulli(torch.sigmoid(x - 2)))
    return (x + y) ** 2


def chain_gradient(theta: torch.Tensor) -> torch.Tensor:
    """∇θ E[f] summed over z, x ∈ {0, ..., 60} and y exactly, in float64."""
    theta = theta.double().detach().requires_grad_()
    x = torch.arange(61, dtype=torch.float64)
    total = 0.0
    for z, weight in enumerate(torch.softmax(theta, -1)):
        px = dist.Poisson(1.0 + z + theta[0] ** 2).log_prob(x).exp()
        py = torch.sigmoid(x - 2)
        total = total + weight * (px * (py * (x + 1) ** 2 + (1 - py) * x**2)).sum()
    (gradient,) = torch.autograd.grad(total, theta)
    return gradient


def test_a_categorical_poisson_bernoulli_chain_is_unbiased():
    # A perturbed category moves the Poisson's rate (redrawn, no common uniform there)
    # and through it the Bernoulli's probability (coupled by its uniform).
    theta = torch.tensor([0.3, -0.2, 0.5], requires_grad=True)
    exact = chain_gradient(theta)
    samples = expectation_draws(pg.estimators(chain, default=ONE_RUN), theta, num_samples=6000)["theta"]
    for i in range(3):
        assert_mean(samples[:, i], float(exact[i]))


@pytest.mark.parametrize("benchmark", discrete.BENCHMARKS, ids=[b.name for b in discrete.BENCHMARKS])
def test_each_held_out_discrete_program_has_its_exact_gradient(benchmark):
    # One site: the pruned perturbation is that site's, with its whole weight.
    args = benchmark.arguments()
    draws = expectation_draws(pg.estimators(benchmark.program, default=ONE_RUN), *args, num_samples=4000)
    exact = benchmark.reference_gradient(*args)
    for name, gradient in exact.items():
        assert_mean(draws[name], float(gradient))


def test_where_the_one_run_engine_does_not_apply_it_says_what_does():
    with pytest.raises(pg.EstimatorError, match="engine must be one of"):
        pg.MeasureValued(engine="once")

    def gamma(theta):  # its concentration has no weak derivative here
        return pyro.sample("z", dist.Gamma(theta, 1.0)) ** 2

    with pytest.raises(pg.EstimatorError, match="concentration"):
        pg.expectation(pg.estimators(gamma, default=ONE_RUN), torch.tensor(0.5, requires_grad=True))

    with pytest.raises(pg.EstimatorError, match="derived for pg.ELBO and pg.expectation, not pg.IWAE"):
        pg.IWAE(num_particles=2).differentiable_loss(sequential_model, pg.estimators(sequential_guide, default=ONE_RUN),
                                                     1.2)


def test_a_threshold_on_a_normal_whose_loc_and_scale_move_has_the_closed_form_gradient():
    # x ~ Normal(θ, s), s = 1 + θ²/2; f = 1[x > ½] + x². E[f] = Φ((θ − ½)/s) + θ² + s², so
    # ∂θ E[f] = φ((θ − ½)/s)·∂θ((θ − ½)/s) + 2θ + 2sθ. The pathwise gradient misses the
    # threshold; the weak derivatives' jumps (loc: X ± sR; scale: X → θ + sM) do not.
    def program(theta):
        x = pyro.sample("x", dist.Normal(theta, 1 + theta**2 / 2))
        return (x > 0.5).to(x.dtype) + x**2

    theta = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    s = 1 + theta**2 / 2
    expected = torch.distributions.Normal(0.0, 1.0).cdf((theta - 0.5) / s) + theta**2 + s**2
    (exact,) = torch.autograd.grad(expected, theta)
    draws = expectation_draws(pg.estimators(program, default=ONE_RUN), torch.tensor(0.3, requires_grad=True),
                              num_samples=6000)["theta"]
    assert_mean(draws, float(exact))


def test_a_continuous_draw_feeding_a_discrete_one_shares_the_one_run():
    # x ~ Exponential(θ), k | x ~ Poisson(x); f = k² + 1[x > 1]. E[k²] = E[x + x²] = 1/θ + 2/θ²
    # and P(x > 1) = e^{−θ}: ∂θ E[f] = −1/θ² − 4/θ³ − e^{−θ}. x's jump (X → X + E/θ) moves the
    # Poisson's rate, whose draw follows on common random numbers; k's jump is k + 1.
    def program(theta):
        x = pyro.sample("x", dist.Exponential(theta))
        k = pyro.sample("k", dist.Poisson(x))
        return k**2 + (x > 1).to(x.dtype)

    theta = 1.5
    exact = -1 / theta**2 - 4 / theta**3 - math.exp(-theta)
    draws = expectation_draws(pg.estimators(program, default=ONE_RUN), torch.tensor(theta, requires_grad=True),
                              num_samples=6000)["theta"]
    assert_mean(draws, exact)


def test_independent_steps_give_the_exact_gradient_on_every_draw():
    # Ten independent ±1 steps, +1 with probability θ: f = Σ_t (2u_t − 1), ∇θ E[f] = 20.
    # Every step can move (|c| = 1 each, W = 10); whichever is kept, its flip changes f
    # by 2(1 − 2u) and its coefficient is (1 − 2u): W·(1 − 2u)·2(1 − 2u) = 20 exactly.
    def steps(theta):
        with pyro.plate("steps", 10):
            up = pyro.sample("up", dist.Bernoulli(theta))
        return (2 * up - 1).sum(-1)

    samples = expectation_draws(pg.estimators(steps, default=ONE_RUN), torch.tensor(0.3, requires_grad=True),
                                num_samples=200)["theta"]
    assert torch.allclose(samples, torch.full_like(samples, 20.0))


def test_per_particle_changes_redraw_only_the_elements_they_reach():
    # b_i ~ Bernoulli(½), x_i ~ Poisson(1 + b_i) in a plate of 8; b flipped at the picked
    # elements only: x keeps its first value wherever its rate did not change.
    from pyro_grad.engine.alternative_run import AlternativeRun

    def program():
        with pyro.plate("n", 8):
            b = pyro.sample("b", dist.Bernoulli(0.5))
            return pyro.sample("x", dist.Poisson(1.0 + b))

    pyro.set_rng_seed(1)
    first = pyro.poutine.trace(program).get_trace()
    b, x = first.nodes["b"]["value"], first.nodes["x"]["value"]
    picked = torch.tensor([True, False] * 4)
    with AlternativeRun(first, {"b": 1 - b}, picked={"b": picked}):
        again = pyro.poutine.trace(program).get_trace()
    assert torch.equal(again.nodes["b"]["value"], torch.where(picked, 1 - b, b))
    assert torch.equal(again.nodes["x"]["value"][~picked], x[~picked])


def test_a_program_that_branches_on_a_draw_follows_its_own_branch_in_the_alternative_run():
    # b ~ Bernoulli(p); only when b = 1 is c ~ Bernoulli(p) drawn, and f = 3c + 1 (else 0):
    # E[f] = p(3p + 1), ∂p E[f] = 6p + 1 = 3.4 at p = 0.4. A particle that keeps b's jump
    # runs the other branch (drawing c anew, or not at all); looped, one particle per run.
    def branchy(p):
        b = pyro.sample("b", dist.Bernoulli(p))
        if b.item() == 1:
            return 3 * pyro.sample("c", dist.Bernoulli(p)) + 1
        return torch.tensor(0.0)

    samples = expectation_draws(pg.estimators(branchy, default=ONE_RUN), torch.tensor(0.4, requires_grad=True),
                                num_samples=1500, mode="loop", vectorize=False)["p"]
    assert_mean(samples, 3.4)
    # Where b's jump is kept, b.item() differs on the alternative path: that run cannot be
    # carried beside the first, so the jump is chosen at once, and the reasons say so.
    pyro.set_rng_seed(0)
    reasons = expectation_estimates(pg.estimators(branchy, default=ONE_RUN), (torch.tensor(0.4, requires_grad=True),),
                                    {}, 40, 1, False).reasons
    assert "pruned at once, not lazily" in reasons["b"] and "Python reads a value (item)" in reasons["b"]


def plain_buffer_walk(p, n=6):
    # The walk's state summed in place into a plain tensor, which cannot carry an
    # alternative.
    x, total = torch.zeros(()), None
    for t in range(n):
        up = pyro.sample(f"step_{t}", dist.Bernoulli(torch.exp(-x / p).clamp(max=1.0)))
        if total is None:
            total = torch.zeros(up.shape)
        total += 2 * up - 1
        x = total.clone()
    return x**2


def transposed_walk(p, n=6):
    # The same walk, its steps stacked on a new leading dim (the particles' dim moves).
    x, steps = torch.zeros(()), []
    for t in range(n):
        up = pyro.sample(f"step_{t}", dist.Bernoulli(torch.exp(-x / p).clamp(max=1.0)))
        steps.append(2 * up - 1)
        x = x + steps[-1]
    return torch.stack(steps).sum(0) ** 2


def test_whether_the_run_can_be_carried_does_not_depend_on_its_own_choices():
    # b1 ~ Bernoulli(p), b2 ~ Bernoulli(0.5 + 0.02(p − 0.4)), f = 3·b1 + 200·b2, b2 summed
    # in place into a plain buffer: ∂p E[f] = 3 + 200·0.02 = 7. The write is refused
    # wherever a jump reaches b2, whatever the paths' choices, so the jumps are chosen at
    # once on every draw; were it refused only where some path moved b2, the lazy
    # estimate would be kept only where none did, biased (5.8 when this was so). The
    # mean of 20,000 draws is within Z standard errors of 7.
    def buffered(p):
        b1 = pyro.sample("b1", dist.Bernoulli(p))
        b2 = pyro.sample("b2", dist.Bernoulli(0.5 + 0.02 * (p - 0.4)))
        total = torch.zeros(b2.shape)
        total += 200 * b2
        return 3 * b1 + total

    program = pg.estimators(buffered, default=ONE_RUN)
    reasons = expectation_estimates(program, (torch.tensor(0.4, requires_grad=True),), {}, 2, 1, True).reasons
    assert "writes a value a jump reaches into a tensor that does not carry one" in reasons["b2"]
    draws = expectation_draws(program, torch.tensor(0.4, requires_grad=True), num_samples=20_000)["p"]
    assert_mean(draws, 7.0)


@pytest.mark.parametrize("program, why", [
    (plain_buffer_walk, "writes a value a jump reaches into a tensor that does not carry one"),
    (transposed_walk, "without the 2000 particles as its leading dim"),
])
def test_where_the_alternative_path_cannot_be_carried_the_jump_is_chosen_at_once(program, why):
    # The walk (n = 6, p = 3) written two ways lazy pruning cannot follow. Its exact
    # derivative is the dynamic program's; the mean of 2000-particle calls is within Z
    # standard errors of it, and the reasons name what stopped the lazy run.
    p = 3.0
    pyro.set_rng_seed(0)
    estimates = expectation_estimates(pg.estimators(lambda q: program(q, 6), default=ONE_RUN),
                                      (torch.tensor(p, requires_grad=True),), {}, 2000, 1, True, 0)
    assert why in estimates.reasons["step_0"], estimates.reasons["step_0"]
    draws = expectation_draws(pg.estimators(lambda q: program(q, 6), default=ONE_RUN),
                              torch.tensor(p, requires_grad=True), num_samples=3000)["q"]
    assert_mean(draws, walk_derivative(p, 6))


@pytest.mark.parametrize("estimator", [ONE_RUN, pg.MeasureValued(engine="one-run", one_sided=True),
                                       pg.MeasureValued(engine="one-run", paths=4)], ids=repr)
@pytest.mark.parametrize("form", ["wrapper", "context", "infer"])
def test_every_usage_form_gives_the_same_one_run_gradient(form, estimator):
    # The walk (n = 8, p = 4) from one seed: pg.estimators(fn, ...), a with block around
    # the call, and infer={"estimator": ...} at every site choose the same estimator, so
    # the gradients are equal draw for draw, for each form of the one-run engine.
    def walk_infer(p, n=8):
        x = torch.zeros(())
        for t in range(n):  # written as the walk is: no name holds a step (lazy pruning sees what is held)
            up = pyro.sample(f"step_{t}", dist.Bernoulli(torch.exp(-x / p).clamp(max=1.0)), infer={"estimator": estimator})
            x = x + 2 * up - 1
            del up
        return x**2

    def gradient(which):
        pyro.set_rng_seed(5)
        p = torch.tensor(4.0, requires_grad=True)
        if which == "context":
            with pg.estimators(default=estimator):
                pg.expectation(lambda q: walk(q, 8), p, num_particles=64).backward()
        elif which == "infer":
            pg.expectation(walk_infer, p, num_particles=64).backward()
        else:
            pg.expectation(pg.estimators(lambda q: walk(q, 8), default=estimator), p, num_particles=64).backward()
        return p.grad

    assert torch.equal(gradient(form), gradient("wrapper"))
    assert torch.isfinite(gradient(form)) and gradient(form) != 0


def test_tune_tries_the_discrete_sites_together_on_the_one_run_engine():
    # The walk of 8 steps (p = 16): one site on the one-run engine alone costs what a
    # re-run does, so the site-by-site descent keeps a cheaper estimator; measured all
    # together (2 evaluations per particle against the re-run engine's 9), the one-run
    # engine ranks first by variance × evaluations, and the table shows the comparison.
    n = 8
    tuning = pg.tune(lambda q: walk(q, n), torch.tensor(2.0 * n, requires_grad=True), num_particles=2,
                     candidates=[pg.Score("loo"), pg.MeasureValued(), ONE_RUN], num_samples=400)
    assert set(tuning.config.values()) == {ONE_RUN}
    last = tuning.table[tuning.table["round"] == tuning.rounds]
    assert len(last) == 2 * n
    chosen, other = last[last["chosen"]], last[~last["chosen"]]
    assert (chosen["site evaluations per particle"] == 1).all() and (chosen["cost"] == 4).all()
    assert float(chosen["work-normalized variance"].iloc[0]) < float(other["work-normalized variance"].iloc[0])


def test_tune_offers_the_one_run_engine_in_an_elbo_too():
    # pg.ELBO of the sequential model and guide (two Bernoulli guide sites, z1's jump
    # moving z2's logit): each site offers MeasureValued(engine="one-run") among its
    # candidates, and the two are measured together on it, a round of their own whose
    # rows show both configurations; whichever is kept ranks no worse than the other.
    tuning = pg.tune(sequential_model, 1.2, guide=sequential_guide, num_particles=2,
                     candidates=[pg.Score("loo"), pg.MeasureValued(), ONE_RUN], num_samples=300)
    assert (tuning.table["estimator"] == repr(ONE_RUN)).any()
    together = tuning.table[tuning.table["round"] == tuning.rounds]
    assert set(together["site"]) == {"z1", "z2"} and len(together) == 4
    chosen, other = together[together["chosen"]], together[~together["chosen"]]
    assert len(chosen) == 2
    metric = "work-normalized variance"
    assert float(chosen[metric].iloc[0]) <= float(other[metric].iloc[0])
    assert set(tuning.config) == {"z1", "z2"}


def test_the_pruning_sensitivity_is_the_derivative_of_each_jumps_parameter_in_either_mode():
    # η = exp(−x/p) at x = 0..4: ∂p η = η·x/p², by two backward passes or by the forward
    # tangent (pg.diagnose's draws), the same numbers; with two inputs there is none.
    from pyro_grad.engine.one_run import sensitivities
    import torch.autograd.forward_ad as fwAD

    x = torch.arange(5.0)
    p = torch.tensor(3.0, requires_grad=True)
    exact = torch.exp(-x / 3.0) * x / 9.0
    (reverse,) = sensitivities([torch.exp(-x / p)], [p])
    with fwAD.dual_level():
        dual = fwAD.make_dual(torch.tensor(3.0), torch.tensor(1.0))
        (forward,) = sensitivities([torch.exp(-x / dual)], [dual])
    assert torch.allclose(reverse, exact) and torch.allclose(forward, exact)
    other = torch.tensor(1.0, requires_grad=True)
    assert sensitivities([torch.exp(-x / p) * other], [p, other]) == [None]


def logistic_chain(theta: torch.Tensor, n: int = 12) -> torch.Tensor:
    """s_0 = 0, b_t ~ Bernoulli(σ(θ − 0.3·s_t)), s_{t+1} = s_t + b_t; f = s_n²."""
    s = torch.zeros(())
    for t in range(n):
        s = s + pyro.sample(f"b_{t}", dist.Bernoulli(logits=theta - 0.3 * s))
    return s**2


def logistic_chain_derivative(theta: float, n: int = 12) -> float:
    """∂θ E[s_n²] by the forward dynamic program over s ∈ {0, ..., n} (float64)."""
    t = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    s = torch.arange(n + 1, dtype=torch.float64)
    probs = torch.zeros(n + 1, dtype=torch.float64)
    probs[0] = 1.0
    for _ in range(n):
        up = torch.sigmoid(t - 0.3 * s)
        probs = probs * (1 - up) + torch.cat([probs.new_zeros(1), (probs * up)[:-1]])
    (gradient,) = torch.autograd.grad((probs * s**2).sum(), t)
    return float(gradient)


@pytest.mark.parametrize("estimator", [pg.ARM(engine="one-run"), pg.DisARM(engine="one-run"), ONE_RUN], ids=repr)
def test_each_engine_choice_on_a_logistic_chain_has_the_dynamic_programs_derivative(estimator):
    # Twelve Bernoulli steps whose logit falls with the count so far: each element's
    # antithetic twin (ARM, DisARM) or jump (MeasureValued) moves every later logit.
    draws = expectation_draws(pg.estimators(logistic_chain, default=estimator), torch.tensor(0.4, requires_grad=True),
                              num_samples=4000)["theta"]
    assert_mean(draws, logistic_chain_derivative(0.4))


def test_the_antithetic_one_run_engine_costs_two_evaluations_and_says_where_it_does_not_apply():
    p = torch.tensor(0.4, requires_grad=True)
    one_run = expectation_estimates(pg.estimators(logistic_chain, default=pg.DisARM(engine="one-run")), (p,), {}, 4, 1,
                                    True)
    assert one_run.evaluations == 2
    with pytest.raises(pg.EstimatorError, match=r"DisARM\(engine='once'\): engine must be one of"):
        pg.DisARM(engine="once")



def test_a_subsampled_plate_replays_its_minibatch_in_the_alternative_run():
    # b_i ~ Bernoulli(θ·w_i) for a minibatch of 4 of 10 elements (scaled by 10/4), then
    # k ~ Poisson(1 + t), t = 2.5·Σ_i b_i·w_i, and f = k + t: given the minibatch I,
    # ∂θ E[f | I] = 2 · 2.5 · Σ_{i∈I} w_i². Every run of a call (the first and the
    # alternative) must see the first run's minibatch; over 30 calls of 400 particles,
    # each call's error from its own minibatch's gradient averages to 0 within Z SEs.
    w = torch.linspace(0.1, 1.0, 10)
    minibatches = []

    def program(theta):
        with pyro.plate("data", 10, subsample_size=4) as index:
            minibatches.append(index.clone())
            b = pyro.sample("b", dist.Bernoulli(theta * w[index]))
        total = (b * w[index]).sum(-1, keepdim=True) * 10 / 4  # the particles lie left of the plate
        return pyro.sample("k", dist.Poisson(1 + total)) + total

    errors = []
    for call in range(30):
        minibatches.clear()
        theta = torch.tensor(0.4, requires_grad=True)
        pg.expectation(pg.estimators(program, default=ONE_RUN), theta, num_particles=400, max_plate_nesting=1).backward()
        assert len(minibatches) >= 2 and all(torch.equal(m, minibatches[0]) for m in minibatches)
        errors.append(float(theta.grad) - float(2 * 2.5 * (w[minibatches[0]] ** 2).sum()))
    assert_mean(torch.tensor(errors), 0.0)


def sequential_model(x: float) -> None:
    """z1 ~ Bernoulli(0.3), z2 | z1 ~ Bernoulli(σ(z1 − ½)), x ~ Normal(z1 + z2, 1)."""
    z1 = pyro.sample("z1", dist.Bernoulli(0.3))
    z2 = pyro.sample("z2", dist.Bernoulli(torch.sigmoid(z1 - 0.5)))
    pyro.sample("x", dist.Normal(z1 + z2, 1.0), obs=torch.tensor(x))


def sequential_guide(x: float) -> None:
    """z1 ~ Bernoulli(σ(φ1)), z2 | z1 ~ Bernoulli(σ(φ2 + z1)): z1's jump moves z2's logit."""
    phi = pyro.param("phi", torch.tensor([0.2, -0.4]))
    z1 = pyro.sample("z1", dist.Bernoulli(logits=phi[0]))
    pyro.sample("z2", dist.Bernoulli(logits=phi[1] + z1))


def sequential_elbo_gradient(x: float) -> torch.Tensor:
    """∇φ ELBO = ∇φ Σ_{z1, z2} q(z)·(log p(x, z) − log q(z)), over the four values."""
    phi = torch.tensor([0.2, -0.4], dtype=torch.float64, requires_grad=True)
    total = 0.0
    for z1 in (0.0, 1.0):
        for z2 in (0.0, 1.0):
            q1, q2 = dist.Bernoulli(logits=phi[0]), dist.Bernoulli(logits=phi[1] + z1)
            log_q = q1.log_prob(torch.tensor(z1, dtype=torch.float64)) + q2.log_prob(torch.tensor(z2, dtype=torch.float64))
            log_p = (dist.Bernoulli(torch.tensor(0.3, dtype=torch.float64)).log_prob(torch.tensor(z1, dtype=torch.float64))
                     + dist.Bernoulli(torch.sigmoid(torch.tensor(z1 - 0.5, dtype=torch.float64))).log_prob(
                         torch.tensor(z2, dtype=torch.float64))
                     + dist.Normal(torch.tensor(z1 + z2, dtype=torch.float64), 1.0).log_prob(
                         torch.tensor(x, dtype=torch.float64)))
            total = total + log_q.exp() * (log_p - log_q)
    (gradient,) = torch.autograd.grad(total, phi)
    return gradient


# paths=3: pg.ELBO chooses its jumps at once, so it makes three alternative runs and
# averages them (honoured there, not ignored).
@pytest.mark.parametrize("estimator", [ONE_RUN, pg.ARM(engine="one-run"), pg.DisARM(engine="one-run"),
                                       pg.MeasureValued(engine="one-run", paths=3)], ids=repr)
def test_an_elbo_with_a_sequential_discrete_guide_has_the_exact_gradient(estimator):
    # pg.ELBO with both guide sites on one alternative run: the difference of the whole
    # per-particle ELBO (log p − log q; what the jump does not reach is replayed and
    # cancels), against the sum over the guide's four values.
    exact = sequential_elbo_gradient(1.2)
    draws = elbo_draws(sequential_model, pg.estimators(sequential_guide, default=estimator), 1.2,
                       num_samples=6000, num_particles=2)["phi"]
    for i in range(2):
        assert_mean(draws[:, i], float(exact[i]))


def test_an_elbo_with_a_plated_guide_site_has_the_exact_gradient():
    # z_i ~ Bernoulli(σ(φ_i)) in a plate of 3, x_i ~ Normal(z_i, 1): the ELBO is a sum of
    # three two-point sums. z's terms stay in the plate, so each plate element keeps its
    # own jump (its only one) and differences its own terms: the re-run engine's per-plate
    # estimate, draw for draw.
    x = torch.tensor([0.3, 1.5, -0.4])

    def model(x):
        with pyro.plate("data", 3):
            z = pyro.sample("z", dist.Bernoulli(0.4))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        phi = pyro.param("phi", torch.tensor([0.1, -0.3, 0.6]))
        with pyro.plate("data", 3):
            pyro.sample("z", dist.Bernoulli(logits=phi))

    phi = torch.tensor([0.1, -0.3, 0.6], dtype=torch.float64, requires_grad=True)
    q1 = torch.sigmoid(phi)
    elbo = 0.0
    for z, q in ((1.0, q1), (0.0, 1 - q1)):
        log_p = math.log(0.4 if z else 0.6) + dist.Normal(torch.tensor(z, dtype=torch.float64), 1.0).log_prob(x.double())
        elbo = elbo + (q * (log_p - q.log())).sum()
    (exact,) = torch.autograd.grad(elbo, phi)
    draws = elbo_draws(model, pg.estimators(guide, default=ONE_RUN), x, num_samples=6000, num_particles=2)["phi"]
    for i in range(3):
        assert_mean(draws[:, i], float(exact[i]))
    rerun = elbo_draws(model, pg.estimators(guide, default=pg.MeasureValued()), x, num_samples=6000,
                       num_particles=2)["phi"]
    assert torch.allclose(draws, rerun, atol=1e-5)


def test_an_elbo_keeps_one_jump_per_plate_element_across_sequential_sites_in_the_plate():
    # Per datum i of 4: z1_i ~ Bernoulli(σ(φ_i)), z2_i | z1_i ~ Bernoulli(σ(ψ_i + z1_i)) in
    # the guide; the model's x_i ~ Normal(z1_i + z2_i, 1). Each element keeps one jump of
    # its two, and its own terms' difference weighs it: exact by four-value sums per datum.
    x = torch.tensor([0.3, 1.5, -0.4, 2.2])

    def model(x):
        with pyro.plate("data", 4):
            z1 = pyro.sample("z1", dist.Bernoulli(0.3))
            z2 = pyro.sample("z2", dist.Bernoulli(torch.sigmoid(z1 - 0.5)))
            pyro.sample("x", dist.Normal(z1 + z2, 1.0), obs=x)

    def guide(x):
        phi = pyro.param("phi", torch.tensor([0.1, -0.3, 0.6, 0.0]))
        psi = pyro.param("psi", torch.tensor([-0.2, 0.4, 0.1, -0.5]))
        with pyro.plate("data", 4):
            z1 = pyro.sample("z1", dist.Bernoulli(logits=phi))
            pyro.sample("z2", dist.Bernoulli(logits=psi + z1))

    phi = torch.tensor([0.1, -0.3, 0.6, 0.0], dtype=torch.float64, requires_grad=True)
    psi = torch.tensor([-0.2, 0.4, 0.1, -0.5], dtype=torch.float64, requires_grad=True)
    elbo = 0.0
    for z1 in (0.0, 1.0):
        for z2 in (0.0, 1.0):
            q1, q2 = dist.Bernoulli(logits=phi), dist.Bernoulli(logits=psi + z1)
            log_q = q1.log_prob(torch.tensor(z1).double()) + q2.log_prob(torch.tensor(z2).double())
            log_p = (math.log(0.3 if z1 else 0.7) + dist.Bernoulli(torch.sigmoid(torch.tensor(z1 - 0.5))).log_prob(
                torch.tensor(z2)).double() + dist.Normal(torch.tensor(z1 + z2).double(), 1.0).log_prob(x.double()))
            elbo = elbo + (log_q.exp() * (log_p - log_q)).sum()
    exact = torch.autograd.grad(elbo, [phi, psi])
    draws = elbo_draws(model, pg.estimators(guide, default=ONE_RUN), x, num_samples=6000, num_particles=2)
    for name, gradient in zip(("phi", "psi"), exact):
        for i in range(4):
            assert_mean(draws[name][:, i], float(gradient[i]))


@pytest.mark.parametrize("estimator", [pg.MeasureValued(), ONE_RUN], ids=repr)
def test_a_site_whose_parameters_are_tiny_is_redrawn_when_they_change(estimator):
    # b ~ Bernoulli(θ), y | b ~ Normal(10⁻⁷·b, 10⁻⁷), f = 1[y > 0]: b's jump moves y's loc
    # from 0 to 10⁻⁷, a change far below any absolute tolerance, so y must be redrawn.
    # ∂θ E[f] = P(y > 0 | b = 1) − P(y > 0 | b = 0) = Φ(1) − ½.
    def program(theta):
        b = pyro.sample("b", dist.Bernoulli(theta))
        y = pyro.sample("y", dist.Normal(1e-7 * b, 1e-7))
        return (y > 0).to(y.dtype)

    draws = expectation_draws(pg.estimators(program, default=estimator), torch.tensor(0.3, requires_grad=True),
                              num_samples=4000)["theta"]
    assert_mean(draws, float(torch.distributions.Normal(0.0, 1.0).cdf(torch.tensor(1.0))) - 0.5)


@pytest.mark.parametrize("estimator", [pg.MeasureValued(), ONE_RUN], ids=repr)
def test_a_batch_dim_no_plate_declares_is_not_taken_for_independent_elements(estimator):
    # z of shape (2, 2) in a plate of 2 (dim −2): x_n ~ Normal(2·s_n², 1) with s_n = Σ_d z_{n,d}
    # depends on both of z_n's elements, so they may not difference their terms apart.
    # Exact by the sum over z_n's four values per datum.
    x = torch.tensor([[0.7], [1.9]])
    phi0 = torch.tensor([[0.2, -0.5], [0.4, 0.1]])

    def model(x):
        with pyro.plate("data", 2, dim=-2):
            z = pyro.sample("z", dist.Bernoulli(0.4 * torch.ones(2, 2)))
            s = z.sum(-1, keepdim=True)
            pyro.sample("x", dist.Normal(2 * s * s, 1.0), obs=x)

    def guide(x):
        phi = pyro.param("phi", phi0.clone())
        with pyro.plate("data", 2, dim=-2):
            pyro.sample("z", dist.Bernoulli(logits=phi))

    phi = phi0.double().clone().requires_grad_()
    elbo = 0.0
    for n in range(2):
        for bits in ((0.0, 0.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0)):
            z = torch.tensor(bits, dtype=torch.float64)
            log_q = dist.Bernoulli(logits=phi[n]).log_prob(z).sum()
            log_p = (dist.Bernoulli(torch.tensor(0.4, dtype=torch.float64)).log_prob(z).sum()
                     + dist.Normal(2 * z.sum() ** 2, 1.0).log_prob(x[n, 0].double()))
            elbo = elbo + log_q.exp() * (log_p - log_q)
    (exact,) = torch.autograd.grad(elbo, phi)
    draws = elbo_draws(model, pg.estimators(guide, default=estimator), x, num_samples=4000, num_particles=2)["phi"]
    for n in range(2):
        for d in range(2):
            assert_mean(draws[:, n, d], float(exact[n, d]))


def test_jumps_whose_parameters_do_not_move_do_not_compete():
    # f = 3b + Σ_k c_k with b ~ Bernoulli(θ) and eight c_k ~ Bernoulli(½), and a Normal
    # whose parameters are constants: only b's jump has a term, so it is kept on every
    # draw and every draw is ∂θ E[f] = 3 exactly.
    def program(theta):
        b = pyro.sample("b", dist.Bernoulli(theta))
        noise = sum(pyro.sample(f"c_{k}", dist.Bernoulli(0.5)) for k in range(8))
        y = pyro.sample("y", dist.Normal(0.0, 1.0))
        return 3 * b + noise + (y > 0).to(y.dtype)

    draws = expectation_draws(pg.estimators(program, default=ONE_RUN), torch.tensor(0.3, requires_grad=True),
                              num_samples=200)["theta"]
    assert torch.allclose(draws, torch.full_like(draws, 3.0))


@pytest.mark.parametrize("estimator", [pg.MeasureValued(), ONE_RUN], ids=repr)
def test_a_site_whose_shape_follows_a_draw_is_drawn_anew_in_the_alternative_run(estimator):
    # b ~ Bernoulli(θ), then 1 + b draws y_i ~ Normal(0, 1) (the count read into Python,
    # looped particles); f = b + #{y_i > 0}. E[f] = θ + (1 + θ)/2, so ∂θ E[f] = 3/2. A jump
    # of b changes y's shape: nothing to couple it with, so it is drawn anew.
    def program(theta):
        b = pyro.sample("b", dist.Bernoulli(theta))
        with pyro.plate("ys", 1 + int(b.item())):
            y = pyro.sample("y", dist.Normal(0.0, 1.0))
        return b + (y > 0).to(y.dtype).sum(-1)

    draws = expectation_draws(pg.estimators(program, default=estimator), torch.tensor(0.3, requires_grad=True),
                              num_samples=1000, vectorize=False, mode="loop")["theta"]
    assert_mean(draws, 1.5)


@pytest.mark.parametrize("form", ["wrapper", "context", "infer"])
def test_every_usage_form_gives_the_same_one_run_elbo_gradient(form):
    # The sequential guide under pg.ELBO in SVI's loss from one seed: pg.estimators(guide,
    # ...), a with block around the step, and infer={"estimator": ...} at both guide sites
    # choose the same estimator, so the parameters after one SVI step are equal.
    def guide_infer(x):
        phi = pyro.param("phi", torch.tensor([0.2, -0.4]))
        z1 = pyro.sample("z1", dist.Bernoulli(logits=phi[0]), infer={"estimator": ONE_RUN})
        pyro.sample("z2", dist.Bernoulli(logits=phi[1] + z1), infer={"estimator": ONE_RUN})

    def step(which):
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        guide = {"wrapper": pg.estimators(sequential_guide, default=ONE_RUN), "context": sequential_guide,
                 "infer": guide_infer}[which]
        svi = pyro.infer.SVI(sequential_model, guide, pyro.optim.SGD({"lr": 0.1}),
                             loss=pg.ELBO(num_particles=16, vectorize_particles=True))
        if which == "context":
            with pg.estimators(default=ONE_RUN):
                svi.step(1.2)
        else:
            svi.step(1.2)
        return pyro.param("phi").detach().clone()

    reference = step("wrapper")
    assert not torch.equal(reference, torch.tensor([0.2, -0.4]))  # the step moved phi
    assert torch.equal(step(form), reference)
