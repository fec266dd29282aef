"""Difference estimators in a data plate: each element differences only the terms of f it can
change, so DisARM and ARM are the papers' per-datum estimators (the variance of a
hand-written per-datum implementation), and Enumerate and MeasureValued move every
element in one re-run."""

import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import Z, assert_mean, standard_error_of_variance

import pyro_grad as pg

N, D = 8, 3
X = torch.linspace(-1.0, 1.0, N)
W = torch.tensor([1.5, -1.0, 0.5])
A0, C0 = torch.tensor([0.3, -0.2, 0.1]), torch.tensor([0.5, 0.4, -0.6])


def model(x):
    with pyro.plate("data", N):
        z = pyro.sample("z", dist.Bernoulli(0.5 * torch.ones(D)).to_event(1))
        pyro.sample("x", dist.Normal((z * W).sum(-1), 1.0), obs=x)


def guide(x):
    a = pyro.param("a", A0.clone())
    c = pyro.param("c", C0.clone())
    with pyro.plate("data", N):
        pyro.sample("z", dist.Bernoulli(logits=a + c * x.unsqueeze(-1)).to_event(1))


def local_elbo(z, logits, x):
    """f_n(z) = log p(z) + log N(x_n; w·z, 1) − log q(z | x_n), one per datum."""
    log_p = dist.Bernoulli(0.5 * torch.ones(D)).to_event(1).log_prob(z)
    log_lik = dist.Normal((z * W).sum(-1), 1.0).log_prob(x)
    return log_p + log_lik - dist.Bernoulli(logits=logits).to_event(1).log_prob(z)


def exact_gradient():
    """∇ of Σ_n Σ_z q(z | x_n) f_n(z), summing every datum's 2³ states."""
    a, c = A0.clone().requires_grad_(), C0.clone().requires_grad_()
    logits = a + c * X.unsqueeze(-1)
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=D)))  # (8, D)
    z = states.unsqueeze(1).expand(8, N, D)
    q = dist.Bernoulli(logits=logits).to_event(1).log_prob(z).exp()
    elbo = (q * local_elbo(z, logits, X)).sum()
    ga, gc = torch.autograd.grad(elbo, [a, c])
    return {"a": ga, "c": gc}


def per_datum_draws(estimator: str, num_samples: int, seed: int = 1):
    """The papers' per-datum ARM / DisARM in plain torch: each datum's own f_n, its own u."""
    torch.manual_seed(seed)
    logits = (A0 + C0 * X.unsqueeze(-1)).expand(num_samples, N, D)
    p = torch.sigmoid(logits)
    u = torch.rand(num_samples, N, D)
    b, twin = (u < p).float(), (1 - u < p).float()
    f, f_twin = local_elbo(b, logits, X), local_elbo(twin, logits, X)
    if estimator == "arm":
        g = (f_twin - f).unsqueeze(-1) * (u - 0.5)
    else:
        g = 0.5 * (f - f_twin).unsqueeze(-1) * (1 - 2 * twin) * (b != twin).float() * torch.sigmoid(logits.abs())
    return {"a": g.sum(1), "c": (g * X.unsqueeze(-1)).sum(1)}


@pytest.mark.parametrize("estimator, name", [(pg.DisARM(), "disarm"), (pg.ARM(), "arm")], ids=["DisARM", "ARM"])
def test_per_datum_antithetic_estimators_have_the_hand_written_variance_and_are_exact(estimator, name):
    # 20,000 draws each: the means within Z standard errors of the enumerated gradient,
    # and each element's variance within Z standard errors (of the difference) of the
    # hand-written per-datum estimator's. Differencing the whole batch's ELBO instead
    # multiplies the variance by about N = 8.
    num_samples = 20_000
    report = pg.diagnose(model, X, guide=guide, estimators={"z": estimator}, num_samples=num_samples, sites=False)
    assert report.mode == "vectorized"
    exact, reference = exact_gradient(), per_datum_draws(name, num_samples)
    for param in ("a", "c"):
        ours, theirs = report.samples[param], reference[param]
        for j in range(D):
            assert_mean(ours[:, j], float(exact[param][j]))
            assert_mean(theirs[:, j], float(exact[param][j]))
            se = (standard_error_of_variance(ours[:, j]) ** 2 + standard_error_of_variance(theirs[:, j]) ** 2) ** 0.5
            difference = float(ours[:, j].double().var() - theirs[:, j].double().var())
            assert abs(difference) <= Z * se, (param, j, float(ours[:, j].var()), float(theirs[:, j].var()))


def bernoulli_model(x):
    with pyro.plate("data", N):
        z = pyro.sample("z", dist.Bernoulli(0.4))
        pyro.sample("x", dist.Normal(2 * z - 1, 1.0), obs=x)


def bernoulli_guide(x):
    a = pyro.param("a", torch.tensor(0.2))
    c = pyro.param("c", torch.tensor(0.7))
    with pyro.plate("data", N):
        pyro.sample("z", dist.Bernoulli(logits=a + c * x))


def exact_bernoulli_gradient():
    a, c = torch.tensor(0.2, requires_grad=True), torch.tensor(0.7, requires_grad=True)
    logits = a + c * X
    elbo = 0.0
    for v in (0.0, 1.0):
        z = torch.full((N,), v)
        log_q = dist.Bernoulli(logits=logits).log_prob(z)
        f = dist.Bernoulli(0.4).log_prob(z) + dist.Normal(2 * z - 1, 1.0).log_prob(X) - log_q
        elbo = elbo + (log_q.exp() * f).sum()
    ga, gc = torch.autograd.grad(elbo, [a, c])
    return {"a": float(ga), "c": float(gc)}


def test_enumerate_on_a_plate_local_site_is_exact_with_no_variance():
    # Each datum's z is summed out over {0, 1} (TraceEnum's way, in an ELBO): the ELBO
    # gradient is exact in every draw (float32 rounding aside), and it equals the
    # enumerated one.
    report = pg.diagnose(bernoulli_model, X, guide=bernoulli_guide, estimators={"z": pg.Enumerate()},
                         num_samples=200, sites=False)
    exact = exact_bernoulli_gradient()
    for param in ("a", "c"):
        assert float(report.samples[param].std()) < 1e-4
        assert float(report.samples[param].mean()) == pytest.approx(exact[param], abs=1e-4)
    assert report.params["cost"].iloc[0] == 1  # one run, its tensors two values wide


def test_measure_valued_moves_every_plate_element_in_one_rerun_and_stays_exact():
    report = pg.diagnose(bernoulli_model, X, guide=bernoulli_guide, estimators={"z": pg.MeasureValued()},
                         num_samples=20_000, sites=False)
    exact = exact_bernoulli_gradient()
    for param in ("a", "c"):
        assert_mean(report.samples[param], exact[param])
    assert report.params["cost"].iloc[0] == 2


def subsampled_model(x):
    with pyro.plate("data", N, subsample_size=2) as i:
        z = pyro.sample("z", dist.Bernoulli(0.4))
        pyro.sample("x", dist.Normal(2 * z - 1, 1.0), obs=x[i])


def subsampled_guide(x):
    a = pyro.param("a", torch.tensor(0.2))
    c = pyro.param("c", torch.tensor(0.7))
    with pyro.plate("data", N, subsample_size=2) as i:
        pyro.sample("z", dist.Bernoulli(logits=a + c * x[i]))


@pytest.mark.parametrize("vectorize", [False, True], ids=["looped", "vectorized"])
def test_an_alternative_run_scores_the_first_runs_minibatch(vectorize):
    # A minibatch of 2 of the 8 data, scaled by 4: the estimate is unbiased for the
    # full-data ELBO's gradient (exact_bernoulli_gradient) only if DisARM's alternative
    # run scores the same two data points as the first run. 300 independent steps,
    # each with its own minibatch; the mean within Z standard errors. (Re-drawing the
    # minibatch in the alternative run put c's mean 13–16 standard errors off.)
    pyro.set_rng_seed(3)
    loss = pg.ELBO(num_particles=2, vectorize_particles=vectorize, max_plate_nesting=1)
    guide = pg.estimators(subsampled_guide, {"z": pg.DisARM()})
    draws = {"a": [], "c": []}
    for _ in range(300):
        pyro.clear_param_store()
        surrogate = loss.differentiable_loss(subsampled_model, guide, X)
        params = [pyro.param("a").unconstrained(), pyro.param("c").unconstrained()]
        for name, grad in zip(draws, torch.autograd.grad(-surrogate, params)):
            draws[name].append(grad)
    exact = exact_bernoulli_gradient()
    for name in draws:
        assert_mean(torch.stack(draws[name]), exact[name])


@pytest.mark.parametrize("vectorize", [False, True], ids=["looped", "vectorized"])
@pytest.mark.parametrize("estimator", [pg.DisARM(), pg.MeasureValued()], ids=repr)
def test_an_expectations_alternative_run_uses_the_first_runs_minibatch(estimator, vectorize):
    # pg.expectation's re-runs, like the ELBO's, must see the data points the first run
    # drew: every run of one call indexes the same 2 of 8 (here they would otherwise
    # differ in most of 50 calls).
    pyro.set_rng_seed(0)
    seen = []

    def program(a):
        with pyro.plate("data", N, subsample_size=2) as i:
            seen.append(i.clone())
            b = pyro.sample("b", dist.Bernoulli(logits=a + X[i]))
            return (b * X[i]).sum(-1)

    for _ in range(50):
        seen.clear()
        pg.expectation(pg.estimators(program, {"b": estimator}), torch.tensor(0.2, requires_grad=True),
                       vectorize=vectorize, max_plate_nesting=1).backward()
        assert len(seen) >= 2 and all(torch.equal(s, seen[0]) for s in seen), seen
