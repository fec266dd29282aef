"""``MeasureValued(engine="one-run")``: one alternative run for every discrete site, the
sites' perturbations pruned to one per particle (:mod:`pyro_grad.engine.one_run`).

Each program's exact gradient comes from a closed form or a dynamic program; the
one-run engine's mean over independent draws must lie within Z = 4 standard errors of
it (``assert_mean``), and its cost must not grow with the number of sites.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_grad as pg
from pyro_grad.harness.models import discrete
from pyro_grad.harness.models.discrete import state_walk as walk
from pyro_grad.harness.models.discrete import state_walk_derivative as walk_derivative
from pyro_grad.objectives.expectation import expectation_estimates

from conftest import assert_mean
from draws import expectation_draws

ONE_RUN = pg.MeasureValued(engine="one-run")


def test_the_state_dependent_walk_has_the_dynamic_programs_derivative():
    # Every step's probability depends on the state the earlier steps left: a perturbed
    # step moves every later probability, whose draws follow on common random numbers.
    n, p = 30, 15.0
    exact = walk_derivative(p, n)
    draws = expectation_draws(pg.estimators(lambda q: walk(q, n), default=ONE_RUN), torch.tensor(p, requires_grad=True),
                              num_samples=4000)
    assert_mean(draws["q"], exact)


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

    def normal(theta):
        return pyro.sample("z", dist.Normal(theta, 1.0)) ** 2

    with pytest.raises(pg.EstimatorError, match="engine='one-run' is built for discrete sites"):
        pg.expectation(pg.estimators(normal, default=ONE_RUN), torch.tensor(0.5, requires_grad=True))

    def model():
        pyro.sample("b", dist.Bernoulli(0.5))

    def guide():
        pyro.sample("b", dist.Bernoulli(pyro.param("q", torch.tensor(0.3), constraint=dist.constraints.unit_interval)))

    with pytest.raises(pg.EstimatorError, match="engine='one-run' is built for pg.expectation"):
        pg.ELBO().differentiable_loss(model, pg.estimators(guide, {"b": ONE_RUN}))


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


@pytest.mark.parametrize("form", ["wrapper", "context", "infer"])
def test_every_usage_form_gives_the_same_one_run_gradient(form):
    # The walk (n = 8, p = 4) from one seed: pg.estimators(fn, ...), a with block around
    # the call, and infer={"estimator": ...} at every site choose the same estimator, so
    # the gradients are equal draw for draw.
    def walk_infer(p, n=8):
        x = torch.zeros(())
        for t in range(n):
            up = pyro.sample(f"step_{t}", dist.Bernoulli(torch.exp(-x / p).clamp(max=1.0)), infer={"estimator": ONE_RUN})
            x = x + 2 * up - 1
        return x**2

    def gradient(which):
        pyro.set_rng_seed(5)
        p = torch.tensor(4.0, requires_grad=True)
        if which == "context":
            with pg.estimators(default=ONE_RUN):
                pg.expectation(lambda q: walk(q, 8), p, num_particles=64).backward()
        elif which == "infer":
            pg.expectation(walk_infer, p, num_particles=64).backward()
        else:
            pg.expectation(pg.estimators(lambda q: walk(q, 8), default=ONE_RUN), p, num_particles=64).backward()
        return p.grad

    assert torch.equal(gradient(form), gradient("wrapper"))
