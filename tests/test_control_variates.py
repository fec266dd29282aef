"""The state of the art in discrete gradients (#14), each against exact references.

Programs and their exact gradients:

* the REBAR/RELAX toy, b ~ Bernoulli(σ(φ)), f = (b − t)²: ∂φ E[f] = σ'(φ)((1 − t)² − t²),
  for t = 0.45 and the papers' t = 0.499;
* a quadratic in 12 Bernoullis with interactions, f = aᵀb + bᵀWb: E[f] = aᵀp + pᵀWp −
  Σ W_ii p_i² + Σ W_ii p_i, differentiated by autograd;
* a Categorical with 5 classes and a polynomial f of the index: E[f] = Σ_k π_k f(k);
* five agents in a plate, f = (Σ k·x_k)²: 42.96 (derived in ``test_discrete.py``);
* four one-hot coordinates of 3 categories with interactions, f = Σ A⊙x + (Σ B⊙x)²,
  and three Categorical agents in a plate, f = (Σ v·k)²: exact by enumerating every
  joint value (81 and 125 of them);
* ELBOs of a Bernoulli latent, alone and one per datum in a data plate, against
  ``TraceEnum_ELBO``'s enumerated gradient.

Tolerance: every mean is within ``Z`` = 4 standard errors of the exact value (per
element for vector parameters; 12 elements at 4 se is a family-wise false-alarm rate
below 1e-3). Seeds are fixed by the ``fresh_pyro`` fixture.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import constraints

import pyro_grad as pg

from conftest import Z, standard_error_of_mean
from test_discrete import DATA, latent_guide, latent_model

#: Every #14 estimator that claims to be unbiased, with the particles it needs.
UNBIASED = [
    (pg.DoubleCV(), 2),
    (pg.RODEO(), 2),
    (pg.IndeCateR(), 1),
    (pg.IndeCateR(num_coordinates=2), 1),
    (pg.REBAR(), 1),
    (pg.RELAX(), 1),
]
RELAXED = [pg.REBAR(), pg.RELAX()]
#: Those that apply to a Categorical (DoubleCV is Bernoulli-only, as the paper's).
CATEGORICAL = [(e, k) for e, k in UNBIASED if not isinstance(e, pg.DoubleCV)]


def perturb_control_variates(config: dict) -> None:
    """Set every learned control variate of ``{site: estimator}`` away from its start
    (α = 0 is plain RLOO, a zero output layer is REBAR): unbiasedness must hold for
    every setting, not only the first."""
    generator = torch.Generator().manual_seed(7)
    for site, estimator in config.items():
        if isinstance(estimator, pg.DoubleCV):
            pyro.param(f"_pyro_grad_doublecv_{site}.alpha", torch.tensor(-0.7))
        if isinstance(estimator, pg.RODEO):
            pyro.param(f"_pyro_grad_rodeo_{site}.alpha", torch.tensor(0.6))
            pyro.param(f"_pyro_grad_rodeo_{site}.beta", torch.tensor(-0.8))
        if isinstance(estimator, pg.RELAX):
            pyro.param(f"_pyro_grad_relax_{site}.eta", torch.tensor(0.6))
            pyro.param(f"_pyro_grad_relax_{site}.w2", torch.randn(16, generator=generator))
            pyro.param(f"_pyro_grad_relax_{site}.b2", torch.tensor(0.3))
        if isinstance(estimator, pg.REBAR):
            pyro.param(f"_pyro_grad_rebar_{site}.eta", torch.tensor(0.6))
            pyro.param(f"_pyro_grad_rebar_{site}.temperature", torch.tensor(0.8),
                       constraint=constraints.positive)


def theta(value):
    return torch.tensor(value, requires_grad=True)


def assert_mean(samples: torch.Tensor, exact) -> None:
    samples = samples.double().reshape(samples.shape[0], -1)
    exact = torch.as_tensor(exact, dtype=torch.double).reshape(-1)
    for i in range(samples.shape[1]):
        mean, se = float(samples[:, i].mean()), standard_error_of_mean(samples[:, i])
        assert abs(mean - float(exact[i])) <= Z * se + 1e-5 * max(1.0, abs(float(exact[i]))), (
            f"element {i}: mean {mean:.6g} vs exact {float(exact[i]):.6g} (se {se:.3g})"
        )


def toy(t: float):
    def program(phi):
        b = pyro.sample("b", dist.Bernoulli(logits=phi))
        return (b - t) ** 2

    return program


def toy_gradient(phi: float, t: float) -> float:
    s = 1 / (1 + math.exp(-phi))
    return s * (1 - s) * ((1 - t) ** 2 - t**2)


@pytest.mark.parametrize("t", [0.45, 0.499])
@pytest.mark.parametrize("estimator, num_particles", UNBIASED, ids=repr)
def test_the_toy_gradient_is_exact(estimator, num_particles, t):
    report = pg.diagnose(toy(t), theta(0.3), estimators=estimator, num_particles=num_particles, num_samples=20_000)
    assert_mean(report.samples["phi"], toy_gradient(0.3, t))


def test_indecater_sums_a_single_bernoulli_exactly():
    # One coordinate of two categories: the sum over them is the exact gradient, every draw.
    report = pg.diagnose(toy(0.499), theta(0.3), estimators=pg.IndeCateR(), num_samples=200)
    assert torch.allclose(report.samples["phi"], torch.tensor(toy_gradient(0.3, 0.499)), atol=1e-7)
    assert report.params.iloc[0]["cost"] == 2  # 1 + one coordinate × (2 − 1) categories


torch.manual_seed(0)
A = torch.randn(12)
W = 0.3 * torch.randn(12, 12)


def quadratic(phi):
    b = pyro.sample("b", dist.Bernoulli(logits=phi).to_event(1))
    return (b * A).sum(-1) + ((b @ W) * b).sum(-1)


def quadratic_gradient(phi: torch.Tensor) -> torch.Tensor:
    phi = phi.detach().double().requires_grad_()
    a, w = A.double(), W.double()
    p = torch.sigmoid(phi)
    mean = (a * p).sum() + p @ w @ p - (w.diag() * p * p).sum() + (w.diag() * p).sum()
    return torch.autograd.grad(mean, phi)[0]


@pytest.mark.parametrize("perturbed", [False, True], ids=["as started", "perturbed"])
@pytest.mark.parametrize("estimator, num_particles", UNBIASED, ids=repr)
def test_a_quadratic_in_12_interacting_bernoullis_is_exact(estimator, num_particles, perturbed):
    if perturbed:
        perturb_control_variates({"b": estimator})
    phi = torch.linspace(-1.0, 1.0, 12)
    report = pg.diagnose(quadratic, phi.clone().requires_grad_(), estimators=estimator,
                         num_particles=num_particles, num_samples=4_000)
    assert_mean(report.samples["phi"], quadratic_gradient(phi))


CATEGORY_WEIGHTS = torch.tensor([0.5, -1.0, 0.3, 1.2, -0.4])


def categorical(scale):
    k = pyro.sample("k", dist.Categorical(logits=scale * CATEGORY_WEIGHTS))
    return (k - 1.5) ** 2 + 0.3 * k**3


def categorical_gradient(scale: float) -> float:
    s = torch.tensor(scale, dtype=torch.double, requires_grad=True)
    k = torch.arange(5.0, dtype=torch.double)
    mean = ((s * CATEGORY_WEIGHTS.double()).softmax(-1) * ((k - 1.5) ** 2 + 0.3 * k**3)).sum()
    return float(torch.autograd.grad(mean, s)[0])


@pytest.mark.parametrize("perturbed", [False, True], ids=["as started", "perturbed"])
@pytest.mark.parametrize("estimator, num_particles", CATEGORICAL, ids=repr)
def test_a_categorical_with_5_classes_is_exact(estimator, num_particles, perturbed):
    if perturbed:
        perturb_control_variates({"k": estimator})
    report = pg.diagnose(categorical, theta(0.7), estimators=estimator, num_particles=num_particles,
                         num_samples=20_000)
    assert_mean(report.samples["scale"], categorical_gradient(0.7))


ONE_HOT_A = torch.randn(4, 3)
ONE_HOT_B = 0.5 * torch.randn(4, 3)


def one_hot_quadratic(logits):
    x = pyro.sample("x", dist.OneHotCategorical(logits=logits).to_event(1))
    return (x * ONE_HOT_A).sum((-2, -1)) + (x * ONE_HOT_B).sum((-2, -1)) ** 2


def one_hot_quadratic_gradient(logits: torch.Tensor) -> torch.Tensor:
    """Σ over all 3⁴ joint values of Π_d π_{d,x_d} · f(x), differentiated by autograd."""
    logits = logits.detach().double().requires_grad_()
    log_pi = logits.log_softmax(-1)
    values = torch.cartesian_prod(*[torch.arange(3)] * 4)  # (81, 4)
    x = torch.nn.functional.one_hot(values, 3).double()  # (81, 4, 3)
    f = (x * ONE_HOT_A.double()).sum((-2, -1)) + (x * ONE_HOT_B.double()).sum((-2, -1)) ** 2
    mean = ((x * log_pi).sum((-2, -1)).exp() * f).sum()
    return torch.autograd.grad(mean, logits)[0]


ONE_HOT = [(e, k) for e, k in UNBIASED if type(e).applies_to(pg.gradient_estimators.Site.of_distribution(
    dist.OneHotCategorical(logits=torch.zeros(4, 3)).to_event(1)))]


@pytest.mark.parametrize("perturbed", [False, True], ids=["as started", "perturbed"])
@pytest.mark.parametrize("estimator, num_particles", ONE_HOT, ids=repr)
def test_four_interacting_one_hot_coordinates_are_exact(estimator, num_particles, perturbed):
    if perturbed:
        perturb_control_variates({"x": estimator})
    logits = torch.linspace(-1.0, 1.0, 12).reshape(4, 3)
    report = pg.diagnose(one_hot_quadratic, logits.clone().requires_grad_(), estimators=estimator,
                         num_particles=num_particles, num_samples=4_000)
    assert_mean(report.samples["logits"], one_hot_quadratic_gradient(logits))


AGENT_VALUES = torch.tensor([1.0, -0.5, 2.0])


def categorical_agents(scale):
    with pyro.plate("agents", 3):
        k = pyro.sample("k", dist.Categorical(logits=scale * CATEGORY_WEIGHTS))
    return ((k - 2) * AGENT_VALUES).sum(-1) ** 2


def categorical_agents_gradient(scale: float) -> float:
    s = torch.tensor(scale, dtype=torch.double, requires_grad=True)
    log_pi = (s * CATEGORY_WEIGHTS.double()).log_softmax(-1)
    values = torch.cartesian_prod(*[torch.arange(5)] * 3)  # (125, 3)
    f = ((values - 2).double() * AGENT_VALUES.double()).sum(-1) ** 2
    mean = (log_pi[values].sum(-1).exp() * f).sum()
    return float(torch.autograd.grad(mean, s)[0])


@pytest.mark.parametrize("estimator, num_particles", CATEGORICAL, ids=repr)
def test_categorical_agents_in_a_plate_are_exact(estimator, num_particles):
    perturb_control_variates({"k": estimator})
    report = pg.diagnose(categorical_agents, theta(0.4), estimators=estimator, num_particles=num_particles,
                         num_samples=20_000)
    assert_mean(report.samples["scale"], categorical_agents_gradient(0.4))


@pytest.mark.parametrize("program, exact, parameter, value", [
    (quadratic, quadratic_gradient, "phi", torch.linspace(-1.0, 1.0, 12)),
    (categorical_agents, categorical_agents_gradient, "scale", torch.tensor(0.4)),
], ids=["12 Bernoullis", "categorical agents"])
def test_rodeo_with_three_particles_is_exact(program, exact, parameter, value):
    # K > 2: the surrogate's inputs average over two other particles; perturbed.
    perturb_control_variates({"b": pg.RODEO(), "k": pg.RODEO()})
    pyro.param("_pyro_grad_rodeo_b.w2", torch.randn(100, 2, generator=torch.Generator().manual_seed(3)))
    pyro.param("_pyro_grad_rodeo_k.w2", torch.randn(100, 2, generator=torch.Generator().manual_seed(3)))
    report = pg.diagnose(program, value.clone().requires_grad_(), estimators=pg.RODEO(), num_particles=3,
                         num_samples=6_000)
    assert_mean(report.samples[parameter], exact(value) if program is quadratic else exact(float(value)))


def test_rodeo_on_one_hot_coordinates_starts_as_rloo_and_trains_to_a_lower_variance_exactly():
    logits = torch.linspace(-1.0, 1.0, 12).reshape(4, 3)

    def draws(estimator):
        return pg.diagnose(one_hot_quadratic, logits.clone().requires_grad_(), estimators=estimator,
                           num_particles=2, num_samples=4_000).samples["logits"]

    rloo, start = draws(pg.Score("loo")), draws(pg.RODEO())
    assert torch.equal(rloo, start)  # α = β = 0
    train_control_variate(one_hot_quadratic, pg.RODEO(), logits, steps=300, num_particles=2)
    trained = draws(pg.RODEO())
    assert_mean(trained, one_hot_quadratic_gradient(logits))
    # Measured: RLOO 19.2, RODEO 9.4 in total variance. The sum of 12 sample variances of
    # 4,000 draws each has a relative standard error of a few percent.
    assert trained.var(0).sum() < rloo.var(0).sum() / 2


def test_rodeo_says_to_draw_a_one_hot_when_the_program_indexes_with_a_categorical():
    table = torch.tensor([0.0, 1.0, 3.0, 2.0, 5.0])

    def program(logits):
        k = pyro.sample("k", dist.Categorical(logits=logits))
        return table[k] ** 2

    def model():
        k = pyro.sample("k", dist.Categorical(torch.ones(5) / 5))
        pyro.sample("x", dist.Normal(table[k], 1.0), obs=torch.tensor(2.0))

    def guide():
        pyro.sample("k", dist.Categorical(logits=pyro.param("l", torch.zeros(5))))

    def one_hot_program(logits):
        k = pyro.sample("k", dist.Categorical(logits=logits))
        return (torch.nn.functional.one_hot(k, 5) * table).sum(-1)

    def unrelated_index_error(logits):
        pyro.sample("k", dist.Categorical(logits=logits))
        return table[10]

    message = r"RODEO\(\) draws site 'k' \(Categorical\) as a float index.*indexed with it.*draw a OneHotCategorical"
    for indexing in (program, one_hot_program):
        with pytest.raises(pg.EstimatorError, match=message):
            pg.expectation(pg.estimators(indexing, pg.RODEO()), torch.zeros(5, requires_grad=True), num_particles=2)
    # An index out of range is the program's own error, and stays torch's.
    with pytest.raises(IndexError, match="out of bounds"):
        pg.expectation(pg.estimators(unrelated_index_error, pg.RODEO()), torch.zeros(5, requires_grad=True),
                       num_particles=2)
    with pytest.raises(pg.EstimatorError, match=message):
        pg.ELBO(num_particles=2).differentiable_loss(model, pg.estimators(guide, pg.RODEO()))


def test_indecater_on_a_categorical_costs_one_run_per_other_category():
    report = pg.diagnose(categorical, theta(0.7), estimators=pg.IndeCateR(), num_samples=100)
    assert report.params.iloc[0]["cost"] == 5
    assert report.samples["scale"].std() < 1e-5  # one coordinate, summed exactly


K = torch.arange(1.0, 6.0)


def plated(rate):
    with pyro.plate("agents", 5):
        x = pyro.sample("x", dist.Bernoulli(rate * K / 10))
    return ((x * K).sum(-1)) ** 2


@pytest.mark.parametrize("estimator, num_particles", UNBIASED, ids=repr)
def test_a_site_in_a_plate_is_exact(estimator, num_particles):
    perturb_control_variates({"x": estimator})
    report = pg.diagnose(plated, theta(0.5), estimators=estimator, num_particles=num_particles, num_samples=20_000)
    assert_mean(report.samples["rate"], 42.96)


def train_control_variate(program, estimator, phi, steps: int, num_particles: int = 4) -> list:
    """Adam on the control variate's own parameters, from the variance loss the
    estimator adds to the surrogate; returns its parameter names."""
    parameter = torch.as_tensor(phi).clone().requires_grad_()
    wrapped = pg.estimators(program, estimator)
    pg.expectation(wrapped, parameter, num_particles=num_particles).backward()
    names = sorted(pyro.get_param_store().keys())
    optimizer = torch.optim.Adam([pyro.param(n).unconstrained() for n in names], lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        pg.expectation(wrapped, parameter, num_particles=num_particles).backward()
        optimizer.step()
    return names


def test_rodeo_starts_as_rloo_and_its_trained_stein_terms_cut_the_variance_below_double_cv_exactly():
    phi = torch.linspace(-1.0, 1.0, 12)
    rloo = pg.diagnose(quadratic, phi.clone().requires_grad_(), estimators=pg.Score("loo"), num_particles=2,
                       num_samples=4_000).samples["phi"]
    start = pg.diagnose(quadratic, phi.clone().requires_grad_(), estimators=pg.RODEO(), num_particles=2,
                        num_samples=4_000).samples["phi"]
    assert torch.equal(rloo, start)  # α = β = 0
    names = train_control_variate(quadratic, pg.RODEO(), phi, steps=300, num_particles=2)
    assert names == sorted(f"_pyro_grad_rodeo_b.{n}" for n in ("alpha", "beta", "w1", "b1", "w2", "b2"))
    rodeo = pg.diagnose(quadratic, phi.clone().requires_grad_(), estimators=pg.RODEO(), num_particles=2,
                        num_samples=4_000).samples["phi"]
    assert_mean(rodeo, quadratic_gradient(phi))
    pyro.clear_param_store()
    train_control_variate(quadratic, pg.DoubleCV(), phi, steps=300, num_particles=2)
    double_cv = pg.diagnose(quadratic, phi.clone().requires_grad_(), estimators=pg.DoubleCV(), num_particles=2,
                            num_samples=4_000).samples["phi"]
    # Measured: RLOO 12.6, DoubleCV 1.47, RODEO 1.25 in total variance (Shi et al.
    # report RODEO below Double CV). A few percent of relative standard error each.
    assert rodeo.var(0).sum() < rloo.var(0).sum() / 5
    assert rodeo.var(0).sum() < double_cv.var(0).sum()


def test_double_cv_starts_as_rloo_and_its_trained_taylor_term_cuts_the_variance_exactly():
    # α = 0 at the start: the same draws as Score("loo"), to the last bit.
    phi = torch.linspace(-1.0, 1.0, 12)
    rloo = pg.diagnose(quadratic, phi.clone().requires_grad_(), estimators=pg.Score("loo"), num_particles=2,
                       num_samples=4_000).samples["phi"]
    start = pg.diagnose(quadratic, phi.clone().requires_grad_(), estimators=pg.DoubleCV(), num_particles=2,
                        num_samples=4_000).samples["phi"]
    assert torch.equal(rloo, start)
    assert train_control_variate(quadratic, pg.DoubleCV(), phi, steps=200, num_particles=2) == [
        "_pyro_grad_doublecv_b.alpha"]
    # On a quadratic f the Taylor slope is nearly f's own, so α tends to −1.
    assert -1.5 < float(pyro.param("_pyro_grad_doublecv_b.alpha")) < -0.5
    trained = pg.diagnose(quadratic, phi.clone().requires_grad_(), estimators=pg.DoubleCV(), num_particles=2,
                          num_samples=4_000).samples["phi"]
    assert_mean(trained, quadratic_gradient(phi))
    # Measured: 12.6 → 1.5 in total variance. The sum of 12 sample variances of 4,000
    # draws each has a relative standard error of a few percent: half is far outside it.
    assert trained.var(0).sum() < rloo.var(0).sum() / 2


@pytest.mark.parametrize("estimator", RELAXED, ids=repr)
def test_relax_and_rebar_stay_exact_after_training_and_relax_learns_a_lower_variance(estimator):
    program = toy(0.499)
    before = pg.diagnose(program, theta(0.3), estimators=estimator, num_samples=20_000).samples["phi"]
    names = train_control_variate(program, estimator, 0.3, steps=200)
    prefix = "_pyro_grad_relax_b." if isinstance(estimator, pg.RELAX) else "_pyro_grad_rebar_b."
    expected = ["eta", "temperature"] + (["b1", "b2", "w1", "w2"] if isinstance(estimator, pg.RELAX) else [])
    assert names == sorted(prefix + n for n in expected)
    after = pg.diagnose(program, theta(0.3), estimators=estimator, num_samples=20_000).samples["phi"]
    assert_mean(after, toy_gradient(0.3, 0.499))
    if isinstance(estimator, pg.RELAX):
        # Training minimizes the variance: on the toy, by orders of magnitude (Grathwohl
        # et al. Fig. 1). The ratio of sample variances at 20,000 draws each has a
        # relative standard error of about 1.5%; a tenfold drop is far outside it.
        assert after.var() < before.var() / 10


@pytest.mark.parametrize("estimator, num_particles", UNBIASED, ids=repr)
def test_the_elbo_of_a_bernoulli_latent_matches_the_enumerated_gradient(estimator, num_particles):
    report = pg.diagnose(latent_model, DATA, guide=latent_guide, estimators=estimator,
                         num_particles=num_particles, num_samples=20_000, reference="enumerate")
    assert not report.params["flagged"].any(), report.params


def plate_model(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Bernoulli(0.4))
        pyro.sample("x", dist.Normal(2 * z - 1, 1.0), obs=x)


def plate_guide(x):
    q = pyro.param("q", torch.linspace(0.2, 0.8, len(x)), constraint=constraints.unit_interval)
    with pyro.plate("data", len(x)):
        pyro.sample("z", dist.Bernoulli(q))


@pytest.mark.parametrize("estimator, num_particles", UNBIASED, ids=repr)
def test_the_elbo_of_one_latent_per_datum_matches_the_enumerated_gradient(estimator, num_particles):
    perturb_control_variates({"z": estimator})
    report = pg.diagnose(plate_model, DATA, guide=plate_guide, estimators=estimator,
                         num_particles=num_particles, num_samples=10_000, reference="enumerate")
    assert not report.params["flagged"].any(), report.params


@pytest.mark.parametrize("estimator", RELAXED, ids=repr)
def test_svi_trains_the_control_variate_beside_the_guide(estimator):
    guide = pg.estimators(latent_guide, {"z": estimator})
    elbo = pg.ELBO(num_particles=4, vectorize_particles=True)
    elbo.loss_and_grads(latent_model, guide, DATA)
    store = pyro.get_param_store()
    trained = [n for n in store.keys() if n.startswith("_pyro_grad_")]
    # The baseline rule: every trainable tensor it made has a gradient.
    assert trained and all(store[n].unconstrained().grad is not None for n in trained)
    svi = pyro.infer.SVI(latent_model, guide, pyro.optim.Adam({"lr": 0.05}), loss=elbo)
    before = {n: store[n].detach().clone() for n in trained}
    for _ in range(5):
        svi.step(DATA)
    assert any(not torch.equal(before[n], store[n].detach()) for n in trained)
    # Saved and reset with the param store.
    state = store.get_state()
    pyro.clear_param_store()
    assert not any(n.startswith("_pyro_grad_") for n in pyro.get_param_store().keys())
    pyro.get_param_store().set_state(state)
    assert all(torch.equal(pyro.get_param_store()[n].detach(), store[n].detach()) for n in trained)


def test_relax_takes_a_network_of_each_elements_relaxed_input():
    network = torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    estimator = pg.RELAX(network=network)
    report = pg.diagnose(toy(0.45), theta(0.3), estimators=estimator, num_samples=20_000)
    assert_mean(report.samples["phi"], toy_gradient(0.3, 0.45))
    pg.expectation(pg.estimators(toy(0.45), estimator), theta(0.3)).backward()
    assert all(p.grad is not None for p in network.parameters())
    assert any(n.startswith("_pyro_grad_relax_b$$$") for n in pyro.get_param_store().keys())


def test_relaxed_control_variates_refuse_what_would_make_them_biased():
    def read(phi):
        b = pyro.sample("b", dist.Bernoulli(logits=phi))
        return (b - 0.3) ** 2 if b.item() > 0.5 else b * 0.0

    with pytest.raises(pg.EstimatorError, match=r"RELAX\(\) at site 'b'.*reads the site's value into Python"):
        pg.expectation(pg.estimators(read, pg.RELAX()), theta(0.3), vectorize=False)

    def downstream(phi):
        b = pyro.sample("b", dist.Bernoulli(logits=phi))
        c = pyro.sample("c", dist.Bernoulli(0.2 + 0.6 * b))
        return b + c

    with pytest.raises(pg.EstimatorError, match=r"discrete site 'c' .* depends on the relaxed value of site 'b'"):
        pg.expectation(pg.estimators(downstream, {"b": pg.REBAR(), "c": pg.Score()}), theta(0.3))

    def categorical_model():
        pyro.sample("k", dist.Categorical(torch.ones(3) / 3))

    def categorical_guide():
        pyro.sample("k", dist.Categorical(logits=pyro.param("l", torch.zeros(3))))

    with pytest.raises(pg.EstimatorError, match=r"REBAR\(\) does not apply to site 'k'.*a OneHotCategorical site takes it"):
        pg.ELBO().differentiable_loss(categorical_model, pg.estimators(categorical_guide, pg.REBAR()))
    with pytest.raises(pg.EstimatorError, match=r"RELAX\(network='x'\): network must be None or a torch.nn.Module"):
        pg.RELAX(network="x")


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_indecater_takes_a_positive_integer_number_of_coordinates(bad):
    with pytest.raises(pg.EstimatorError, match=r"num_coordinates must be None or a positive integer"):
        pg.IndeCateR(num_coordinates=bad)


def test_the_new_estimators_parse_for_the_command_line():
    parse = pg.gradient_estimators.parse_estimator
    assert parse("doublecv") == pg.DoubleCV() and parse("rodeo") == pg.RODEO()
    assert parse("indecater") == pg.IndeCateR()
    assert parse("indecater:3") == pg.IndeCateR(3)
    assert parse("rebar") == pg.REBAR() and parse("relax") == pg.RELAX()


def forms(estimator):
    """The same estimator chosen as a wrapper, a context manager and by the site's ``infer``."""

    def wrapped(program):
        return pg.estimators(program, {"b": estimator})

    def inferred(program):
        return program(infer={"estimator": estimator})

    return {"wrapper": wrapped, "context": None, "infer": inferred}


def toy_model(infer=None):
    def model():
        pyro.sample("b", dist.Bernoulli(0.4))

    return model


def toy_guide(infer=None):
    def guide():
        phi = pyro.param("phi", torch.tensor(0.3))
        pyro.sample("b", dist.Bernoulli(logits=phi), infer=infer or {})

    return guide


def toy_program(infer=None):
    def program(phi):
        b = pyro.sample("b", dist.Bernoulli(logits=phi), infer=infer or {})
        return (b - 0.45) ** 2

    return program


def test_double_cv_needs_two_particles():
    with pytest.raises(pg.EstimatorError, match=r"DoubleCV\(\) at site 'b' needs num_particles >= 2"):
        pg.expectation(pg.estimators(toy(0.45), pg.DoubleCV()), theta(0.3))


@pytest.mark.parametrize("estimator", [e for e, _ in UNBIASED], ids=repr)
@pytest.mark.parametrize("objective", ["expectation", "elbo"])
def test_every_usage_form_gives_the_same_gradient(estimator, objective):
    def gradient(form):
        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        if objective == "expectation":
            phi = theta(0.3)
            program = toy_program({"estimator": estimator} if form == "infer" else None)
            if form == "wrapper":
                program = pg.estimators(program, {"b": estimator})
            if form == "context":
                with pg.estimators({"b": estimator}):
                    pg.expectation(program, phi, num_particles=3).backward()
            else:
                pg.expectation(program, phi, num_particles=3).backward()
            return phi.grad
        guide = toy_guide({"estimator": estimator} if form == "infer" else None)
        if form == "wrapper":
            guide = pg.estimators(guide, {"b": estimator})
        elbo = pg.ELBO(num_particles=3, vectorize_particles=True)
        if form == "context":
            with pg.estimators({"b": estimator}):
                elbo.loss_and_grads(toy_model(), guide)
        else:
            elbo.loss_and_grads(toy_model(), guide)
        return pyro.param("phi").grad

    grads = {form: gradient(form) for form in ("wrapper", "context", "infer")}
    assert torch.isfinite(grads["wrapper"]) and grads["wrapper"] != 0
    assert torch.equal(grads["wrapper"], grads["context"]) and torch.equal(grads["wrapper"], grads["infer"])
