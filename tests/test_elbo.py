"""pg.ELBO against exact ELBO gradients and against Pyro's own ELBOs."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import Z, assert_mean
from draws import elbo_draws
from pyro.distributions import constraints
from pyro.infer import SVI, Trace_ELBO
from torch.distributions import transform_to

import pyro_grad as pg

# Pyro's SVI tutorial coin: f ~ Beta(10, 10), 6 heads in 10 tosses, guide Beta(α, β).
DATA = torch.tensor([1.0] * 6 + [0.0] * 4)
ALPHA0, BETA0 = 10.0, 10.0
ALPHA_Q, BETA_Q = 12.0, 9.0


def coin_model(data):
    f = pyro.sample("f", dist.Beta(ALPHA0, BETA0))
    with pyro.plate("tosses", len(data)):
        pyro.sample("obs", dist.Bernoulli(f), obs=data)


def coin_guide(data):
    alpha = pyro.param("alpha_q", torch.tensor(ALPHA_Q), constraint=constraints.positive)
    beta = pyro.param("beta_q", torch.tensor(BETA_Q), constraint=constraints.positive)
    pyro.sample("f", dist.Beta(alpha, beta))


def exact_coin_elbo_gradient():
    """∇ of the closed-form ELBO w.r.t. the *unconstrained* params (what SVI updates).

    With E_q[log f] = ψ(α) − ψ(α+β) and E_q[log(1−f)] = ψ(β) − ψ(α+β):
    ELBO = (α0−1+H−α+1) E[log f] + (β0−1+T−β+1) E[log(1−f)] − log B(α0,β0) + log B(α,β).
    """
    u = {n: transform_to(constraints.positive).inv(torch.tensor(v)).requires_grad_()
         for n, v in (("alpha_q", ALPHA_Q), ("beta_q", BETA_Q))}
    a = transform_to(constraints.positive)(u["alpha_q"])
    b = transform_to(constraints.positive)(u["beta_q"])
    heads, tails = DATA.sum(), len(DATA) - DATA.sum()
    e_log_f = torch.digamma(a) - torch.digamma(a + b)
    e_log_1mf = torch.digamma(b) - torch.digamma(a + b)

    def log_beta(x, y):
        return torch.lgamma(x) + torch.lgamma(y) - torch.lgamma(x + y)

    elbo = ((ALPHA0 + heads - a) * e_log_f + (BETA0 + tails - b) * e_log_1mf
            - log_beta(torch.tensor(ALPHA0), torch.tensor(BETA0)) + log_beta(a, b))
    elbo.backward()
    return {n: float(t.grad) for n, t in u.items()}


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
        coin_model, guide, DATA, num_samples=num_samples, num_particles=num_particles, path=path
    )
    for name, value in exact.items():
        assert_mean(draws[name], value)


def test_coin_elbo_loop_path_matches_the_closed_form():
    exact = exact_coin_elbo_gradient()
    guide = pg.estimators(coin_guide, {"f": pg.Score("loo")})
    draws = elbo_draws(coin_model, guide, DATA, num_samples=600, num_particles=3, path="loop")
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
        grads = torch.autograd.grad(-loss, [store._params["m"], store._params["s"]])
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
