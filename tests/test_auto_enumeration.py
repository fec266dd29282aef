"""``"auto"`` in pg.ELBO sums a guide site out, as TraceEnum_ELBO would, exactly where the
rule of :mod:`pyro_grad.objectives.auto_enumeration` allows, and says why where it does not.

Where every latent site is summed out the ELBO and its gradient are deterministic, so they
are compared with TraceEnum_ELBO's (``config_enumerate`` on the guide) to float tolerance.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, TraceEnum_ELBO, config_enumerate
from pyro.optim import Adam

import pyro_grad as pg
from pyro_grad.objectives.auto_enumeration import MAX_AUTO_WIDTH

DATA = torch.tensor([-2.1, -1.9, 0.1, 0.2, 2.0, 2.3])


def mixture_model(data):
    """Three components with means as params; z_i ~ Categorical(⅓), x_i ~ N(μ_{z_i}, 1)."""
    means = pyro.param("means", torch.tensor([-1.0, 0.0, 1.0]))
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Categorical(torch.ones(3) / 3))
        pyro.sample("x", dist.Normal(means[z], 1.0), obs=data)


def mixture_guide(data):
    probs = pyro.param("probs", torch.ones(len(data), 3) / 3, constraint=dist.constraints.simplex)
    with pyro.plate("data", len(data)):
        pyro.sample("z", dist.Categorical(probs))


def loss_and_gradients(loss, model, guide, *args):
    pyro.clear_param_store()
    value = loss.differentiable_loss(model, guide, *args)
    names = ["means", "probs"]
    grads = torch.autograd.grad(value, [pyro.param(n).unconstrained() for n in names])
    return value.detach(), dict(zip(names, grads))


@pytest.mark.parametrize("num_particles", [1, 4])
def test_a_mixture_assignment_is_summed_out_with_traceenum_elbos_loss_and_gradient(num_particles):
    # Every latent site summed out: loss and gradient are TraceEnum_ELBO's exactly.
    ours = loss_and_gradients(pg.ELBO(num_particles=num_particles, vectorize_particles=True),
                              mixture_model, mixture_guide, DATA)
    theirs = loss_and_gradients(TraceEnum_ELBO(num_particles=num_particles, vectorize_particles=True,
                                               max_plate_nesting=1),
                                mixture_model, config_enumerate(mixture_guide), DATA)
    assert torch.allclose(ours[0], theirs[0], rtol=1e-5)
    for name in ("means", "probs"):
        assert torch.allclose(ours[1][name], theirs[1][name], rtol=1e-4, atol=1e-6)
    estimates = pg.ELBO(num_particles=num_particles).estimates(mixture_model, mixture_guide, (DATA,))
    assert estimates.estimators == {"z": pg.Enumerate()}
    assert "summed out" in estimates.reasons["z"] and "3 values reach only terms in its plates" in estimates.reasons["z"]
    assert estimates.evaluations == 1  # one run, its tensors 3 wide


def score_reason(model, guide, *args, num_particles=1):
    """The estimator and reason "auto" gave site z (after one SVI step, which must run)."""
    pyro.clear_param_store()
    elbo = pg.ELBO(num_particles=num_particles)
    SVI(model, guide, Adam({"lr": 0.01}), loss=elbo).step(*args)
    estimates = elbo.estimates(model, guide, args)
    return estimates.estimators["z"], estimates.reasons["z"]


def test_a_site_whose_elements_meet_outside_their_plate_keeps_the_score_function():
    # x = N(Σ_i z_i, 1) lies outside z's plate: an enumerated dim of z would broadcast
    # into the sum (silently wrong), so "auto" keeps the score function.
    def model():
        with pyro.plate("p", 3):
            z = pyro.sample("z", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(z.sum(-1), 1.0), obs=torch.tensor(2.0))

    def guide():
        q = pyro.param("q", torch.full((3,), 0.4), constraint=dist.constraints.unit_interval)
        with pyro.plate("p", 3):
            pyro.sample("z", dist.Bernoulli(q))

    estimator, reason = score_reason(model, guide)
    assert isinstance(estimator, pg.Score)
    assert "reaches ELBO terms outside its plates or is read into Python" in reason


def test_a_site_read_into_python_keeps_the_score_function():
    def model():
        z = pyro.sample("z", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(1.0 if z.item() else -1.0, 1.0), obs=torch.tensor(0.5))

    def guide():
        pyro.sample("z", dist.Bernoulli(pyro.param("q", torch.tensor(0.4), constraint=dist.constraints.unit_interval)))

    estimator, reason = score_reason(model, guide)
    assert isinstance(estimator, pg.Score) and "read into Python" in reason


def test_sites_whose_joint_values_exceed_the_cap_keep_the_score_function_all_together():
    # Four Categorical(4) sites: 4⁴ = 256 joint values > 64, so none is summed out.
    def model():
        for i in range(4):
            z = pyro.sample(f"z{i}", dist.Categorical(torch.ones(4) / 4))
            pyro.sample(f"x{i}", dist.Normal(z.float(), 1.0), obs=torch.tensor(1.0))

    def guide():
        for i in range(4):
            pyro.sample(f"z{i}", dist.Categorical(pyro.param(f"p{i}", torch.ones(4) / 4,
                                                              constraint=dist.constraints.simplex)))

    pyro.clear_param_store()
    estimates = pg.ELBO().estimates(model, guide)
    assert 4 ** 4 > MAX_AUTO_WIDTH
    assert all(isinstance(estimates.estimators[f"z{i}"], pg.Score) for i in range(4))
    assert "256 joint values, more than the 64" in estimates.reasons["z0"]


def test_a_difference_estimator_elsewhere_keeps_the_score_function():
    # DisARM at a re-runs the program, which summing out does not combine with.
    def model():
        pyro.sample("a", dist.Bernoulli(0.5))
        z = pyro.sample("z", dist.Categorical(torch.ones(3) / 3))
        pyro.sample("x", dist.Normal(z.float(), 1.0), obs=torch.tensor(1.0))

    def guide():
        pyro.sample("a", dist.Bernoulli(pyro.param("qa", torch.tensor(0.4), constraint=dist.constraints.unit_interval)),
                    infer={"estimator": pg.DisARM()})
        pyro.sample("z", dist.Categorical(pyro.param("qz", torch.ones(3) / 3, constraint=dist.constraints.simplex)))

    estimator, reason = score_reason(model, guide)
    assert isinstance(estimator, pg.Score) and "site 'a' has DisARM()" in reason


def test_a_program_that_does_not_broadcast_an_enumerated_dim_keeps_the_score_function_and_trains():
    # The model concatenates z with a batch of features (a Trace_ELBO program): with z
    # summed out its (3, 1) values do not concatenate, so the hidden run raises and
    # "auto" keeps the score function, saying why; the steps run as before.
    features = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))

    def model(data):
        weights = pyro.param("w", torch.ones(3))
        with pyro.plate("data", len(data)):
            z = pyro.sample("z", dist.Categorical(torch.ones(3) / 3))
            inputs = torch.cat([features, z.float().unsqueeze(-1)], -1)
            pyro.sample("x", dist.Normal(inputs @ weights, 1.0), obs=data)

    def guide(data):
        probs = pyro.param("probs", torch.ones(len(data), 3) / 3, constraint=dist.constraints.simplex)
        with pyro.plate("data", len(data)):
            pyro.sample("z", dist.Categorical(probs))

    estimator, reason = score_reason(model, guide, torch.zeros(4))
    assert isinstance(estimator, pg.Score)
    assert "did not run with them summed out (RuntimeError" in reason


def test_an_estimator_chosen_around_the_call_wins_draw_for_draw():
    # with pg.estimators({"z": ...}) around the call (which the ELBO's hidden runs do not
    # see) gives the gradient the wrapped guide gives, from the same seed.
    def gradient(form):
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        elbo = pg.ELBO()
        if form == "context":
            with pg.estimators({"z": pg.Score("auto")}):
                loss = elbo.differentiable_loss(mixture_model, mixture_guide, DATA)
        else:
            loss = elbo.differentiable_loss(mixture_model, pg.estimators(mixture_guide, {"z": pg.Score("auto")}), DATA)
        return torch.autograd.grad(loss, pyro.param("probs").unconstrained())[0], elbo

    (wrapped, _), (around, elbo) = gradient("wrapper"), gradient("context")
    assert torch.equal(wrapped, around)
    assert "an estimators handler around the objective's call chose Score(baseline='auto')" in elbo.auto_enumeration.reason("z")


def test_the_importance_weighted_bound_keeps_vimco():
    pyro.clear_param_store()
    estimates = pg.IWAE(num_particles=2).estimates(mixture_model, mixture_guide, (DATA,))
    assert estimates.estimators == {"z": pg.VIMCO()}
