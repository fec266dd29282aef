"""pg.ELBO against exact ELBO gradients and against Pyro's own ELBOs."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import Z, assert_mean
from draws import elbo_draws
from pyro.distributions import constraints
from pyro.infer import SVI, Trace_ELBO

import pyro_grad as pg
from pyro_grad.harness.models import coin

# Pyro's SVI tutorial coin (models/coin.py): f ~ Beta(10, 10), 6 heads in 10 tosses,
# guide Beta(α, β); the ELBO's gradient in the unconstrained params is closed-form.
coin_model, coin_guide, DATA = coin.model, coin.guide, coin.DATA


def exact_coin_elbo_gradient():
    return {name: float(g) for name, g in coin.exact_elbo_gradient().items()}


# Beta's implicit reparameterization (torch's Dirichlet sampler) has no forward-mode
# derivative, so its draws come from the reverse-mode loop.
@pytest.mark.parametrize("estimator, num_particles, path, num_samples", [
    (pg.Score(), 1, "vectorized", 20_000),
    (pg.Score("loo"), 4, "vectorized", 20_000),
    (pg.Score("decay"), 1, "vectorized", 20_000),
    (pg.Reparam(), 1, "loop", 1_000),
])
def test_coin_elbo_gradient_matches_the_digamma_closed_form(estimator, num_particles, path, num_samples):
    exact = exact_coin_elbo_gradient()
    guide = pg.estimators(coin_guide, {"f": estimator})
    draws = elbo_draws(
        coin_model, guide, DATA, num_samples=num_samples, num_particles=num_particles, mode=path
    )
    for name, value in exact.items():
        assert_mean(draws[name], value)


def test_coin_elbo_loop_path_matches_the_closed_form():
    exact = exact_coin_elbo_gradient()
    guide = pg.estimators(coin_guide, {"f": pg.Score("loo")})
    draws = elbo_draws(coin_model, guide, DATA, num_samples=600, num_particles=3, mode="loop")
    for name, value in exact.items():
        assert_mean(draws[name], value)


def normal_model(x):
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(loc, 1.0), obs=x)


def normal_guide(x):
    m = pyro.param("m", torch.tensor(0.3))
    s = pyro.param("s", torch.tensor(0.5), constraint=constraints.positive)
    pyro.sample("loc", dist.Normal(m, s))


def test_agrees_in_expectation_with_trace_elbo_on_a_reparameterized_model():
    # Same model and guide: pg.ELBO's mean gradient and Trace_ELBO's agree within Z
    # standard errors of their difference.
    x = torch.tensor([0.5, 1.5, 1.0])
    ours = elbo_draws(normal_model, normal_guide, x, num_samples=20_000)
    theirs = {"m": [], "s": []}
    pyro.set_rng_seed(3)
    for _ in range(2000):
        pyro.clear_param_store()
        loss = Trace_ELBO().differentiable_loss(normal_model, normal_guide, x)
        store = pyro.get_param_store()
        unconstrained = dict(store.named_parameters())
        grads = torch.autograd.grad(-loss, [unconstrained["m"], unconstrained["s"]])
        theirs["m"].append(grads[0])
        theirs["s"].append(grads[1])
    for name in ("m", "s"):
        a, b = ours[name], torch.stack(theirs[name])
        se = (a.var() / a.numel() + b.var() / b.numel()).sqrt()
        assert abs(float(a.mean() - b.mean())) <= Z * float(se), name


def test_svi_with_pg_elbo_learns_the_coin_posterior():
    # The exact posterior is Beta(16, 14): mean 16/30.
    pyro.set_rng_seed(0)
    guide = pg.estimators(coin_guide, {"f": pg.Score("loo")})
    svi = SVI(coin_model, guide, pyro.optim.Adam({"lr": 0.05}), loss=pg.ELBO(num_particles=8, vectorize_particles=True))
    for _ in range(600):
        loss = svi.step(DATA)
    assert isinstance(loss, float)
    a, b = float(pyro.param("alpha_q")), float(pyro.param("beta_q"))
    assert a / (a + b) == pytest.approx(16 / 30, abs=0.03)


@pytest.mark.parametrize("vectorize", [True, False])
def test_loss_and_differentiable_loss_are_minus_the_elbo_estimate(vectorize):
    elbo = pg.ELBO(num_particles=5, vectorize_particles=vectorize)
    guide = pg.estimators(coin_guide, {"f": pg.Score("loo")})
    elbo.loss(coin_model, guide, DATA)  # the first call guesses max_plate_nesting
    pyro.set_rng_seed(7)
    surrogate = elbo.differentiable_loss(coin_model, guide, DATA)
    pyro.set_rng_seed(7)
    plain = elbo.loss(coin_model, guide, DATA)
    assert float(surrogate) == pytest.approx(plain, rel=1e-5)
