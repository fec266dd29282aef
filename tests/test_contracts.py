"""The estimator contract: the registry, refusals before the draw, the difference
estimators' extensions (gradients through alternative runs, auxiliary losses), the
ELBO's public per-sample terms and the objective diagnose and compare take."""

import subprocess
import sys
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_grad as pg
from pyro_grad.harness.models import coin
from pyro_grad.harness.models.seeds import two_bernoullis
from pyro_grad.gradient_estimators.registry import registered_names


def test_the_registry_is_explicit_ordered_and_its_cli_names_are_unique():
    assert pg.gradient_estimators.REGISTRY == (
        pg.Reparam, pg.Score, pg.Enumerate, pg.MeasureValued, pg.ARM, pg.DisARM, pg.DoubleCV, pg.RODEO, pg.IndeCateR, pg.REBAR,
        pg.RELAX, pg.GumbelSoftmax, pg.StraightThrough, pg.ReinMax, pg.STL, pg.DReG, pg.VIMCO,
    )
    assert len(registered_names()) == len(pg.gradient_estimators.REGISTRY)
    # Registering is what exports: pg.<Name> and pg.gradient_estimators.<Name> for every class.
    assert all(getattr(pg, cls.__name__) is cls is getattr(pg.gradient_estimators, cls.__name__) for cls in pg.gradient_estimators.REGISTRY)
    # Listings follow registry order.
    assert pg.applicable(dist.Bernoulli(0.3)) == [
        pg.Score(), pg.Enumerate(), pg.MeasureValued(), pg.ARM(), pg.DisARM(), pg.DoubleCV(), pg.RODEO(), pg.IndeCateR(), pg.REBAR(),
        pg.RELAX(), pg.GumbelSoftmax(), pg.StraightThrough(), pg.ReinMax(), pg.VIMCO(),
    ]
    # Each objective lists only the estimators derived for it.
    assert pg.VIMCO() not in pg.applicable(dist.Bernoulli(0.3), "elbo")
    assert pg.applicable(dist.Normal(0.0, 1.0), "iwae") == [pg.Reparam(), pg.Score(), pg.DReG(), pg.VIMCO()]
    assert pg.applicable(dist.Normal(0.0, 1.0), "elbo")[:2] == [pg.Reparam(), pg.Score()]
    assert pg.STL() in pg.applicable(dist.Normal(0.0, 1.0), "elbo")


def test_an_estimator_sees_the_sites_plates_and_refuses_before_the_draw():
    drawn = []

    def batched(t):
        x = pyro.sample("x", dist.Bernoulli(t.expand(3)).to_event(1))
        drawn.append(x)  # never reached: the refusal comes before the draw
        return x.sum(-1)

    # Three coordinates of one event share one f: their joint support has 8 values.
    with pytest.raises(pg.EstimatorError, match=r"Enumerate\(\) does not apply to site 'x' \(Independent\(Bernoulli\)\)"
                                                 r".*MeasureValued\(\)"):
        pg.expectation(pg.estimators(batched, {"x": pg.Enumerate()}), torch.tensor(0.3, requires_grad=True),
                       num_particles=2)
    assert drawn == []
    # One element per particle, or one per plate element: enumeration applies.
    lone = pg.gradient_estimators.Site.of({"name": "x", "fn": dist.Bernoulli(0.3), "cond_indep_stack": ()})
    assert pg.Enumerate.applies_to(lone) and pg.Enumerate().evaluations(lone) == 3
    with pyro.plate("data", 4):
        plated = pg.gradient_estimators.Site.of({"name": "x", "fn": dist.Bernoulli(0.3).expand([4]),
                                   "cond_indep_stack": pyro.poutine.runtime.get_plates()})
    assert (plated.elements, plated.plated) == (4, 4) and pg.Enumerate.applies_to(plated)


@dataclass(frozen=True, repr=False)
class TrainedFlip(pg.MeasureValued):
    """MeasureValued on a Bernoulli, keeping gradients through its alternative run and
    adding the alternative's f as an auxiliary loss (as a control variate would)."""

    keeps_alternative_gradients = True

    def alternative_loss(self, runs):
        assert runs.alternative_f[0].requires_grad
        return runs.alternative_f[0]


def weighted_bernoulli(w):
    # b ~ Bernoulli(0.3) with fixed probability, f = w·b: ∂w f = b; the flipped run's f = w(1 − b).
    return w * pyro.sample("b", dist.Bernoulli(torch.tensor(0.3)))


def test_a_difference_estimator_may_train_through_its_alternative_runs_in_an_expectation():
    # Surrogate: mean f(b) + (aux − sg(aux)), aux = mean f(1 − b) = w(1 − mean b). Its value
    # is the plain estimate w·mean(b); its gradient in w is mean(b) + (1 − mean(b)) = 1 exactly.
    w = torch.tensor(2.0, requires_grad=True)
    pyro.set_rng_seed(0)
    value = pg.expectation(pg.estimators(weighted_bernoulli, {"b": TrainedFlip()}), w, num_particles=64)
    (grad,) = torch.autograd.grad(value, w)
    mean_b = float(value.detach()) / 2.0
    assert 0.0 < mean_b < 1.0
    assert float(grad) == pytest.approx(1.0, abs=1e-6)
    # The plain estimator keeps no gradient through the flipped run: ∂w = mean(b).
    pyro.set_rng_seed(0)
    plain = pg.expectation(pg.estimators(weighted_bernoulli, {"b": pg.MeasureValued()}), w, num_particles=64)
    assert float(plain) == float(value)
    assert float(torch.autograd.grad(plain, w)[0]) == pytest.approx(mean_b, abs=1e-6)


def test_a_difference_estimator_may_train_through_its_alternative_runs_in_an_elbo():
    # Model b ~ Bernoulli(0.5), x ~ N(w·b, 1) at x = 0; guide b ~ Bernoulli(0.3).
    # ∂w ELBO(b) = −w·b. The loss is −(mean ELBO(b) − (aux − sg(aux))) with aux = mean ELBO(1 − b),
    # so ∂w loss = w·mean(b) − w(1 − mean(b)) = 2·(∂w of the plain loss) − w, same draws.
    def model(w):
        b = pyro.sample("b", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(w * b, 1.0), obs=torch.tensor(0.0))

    def guide(w):
        pyro.sample("b", dist.Bernoulli(torch.tensor(0.3)))

    w = torch.tensor(1.5, requires_grad=True)
    grads = {}
    for label, estimator in (("trained", TrainedFlip()), ("plain", pg.MeasureValued())):
        pyro.set_rng_seed(0)
        loss = pg.ELBO(num_particles=64, vectorize_particles=True).differentiable_loss(
            model, pg.estimators(guide, {"b": estimator}), w)
        grads[label] = float(torch.autograd.grad(loss, w)[0])
    assert grads["plain"] != 0.0
    assert grads["trained"] == pytest.approx(2 * grads["plain"] - 1.5, abs=1e-5)


def test_the_elbo_exposes_its_per_sample_terms():
    # Coin ELBO with a Score guide: G = 5 samples of K = 3 particles; each sample's value is an
    # ELBO estimate, and the score term of site f is zero in value.
    guide = pg.estimators(coin.guide, {"f": pg.Score("loo")})
    estimates = pg.ELBO(num_particles=3, vectorize_particles=True).estimates(coin.model, guide, (coin.DATA,),
                                                                             num_samples=5)
    assert estimates.values.shape == (5,)
    assert set(estimates.score_terms) == {"f"} and float(estimates.score_terms["f"].detach().abs().max()) == 0.0
    assert estimates.estimators == {"f": pg.Score("loo")} and estimates.site_evaluations == {"f": 1}


def test_diagnose_takes_the_objective_and_refuses_a_mismatch():
    theta = torch.tensor(0.1, requires_grad=True)
    explicit = pg.diagnose(two_bernoullis, theta, objective=pg.expectation, estimators=pg.Score(), num_samples=200)
    default = pg.diagnose(two_bernoullis, theta, estimators=pg.Score(), num_samples=200)
    assert explicit.samples["theta"].equal(default.samples["theta"])
    with pytest.raises(pg.EstimatorError, match="needs a guide"):
        pg.diagnose(two_bernoullis, theta, objective=pg.ELBO, num_samples=10)
    with pytest.raises(pg.EstimatorError, match="takes no guide"):
        pg.diagnose(coin.model, coin.DATA, guide=coin.guide, objective=pg.expectation, num_samples=10)
    with pytest.raises(pg.EstimatorError, match="objective must be pg.expectation or an ELBO class"):
        pg.diagnose(two_bernoullis, theta, objective="elbo", num_samples=10)
    with pytest.raises(pg.EstimatorError, match="needs an ELBO"):
        pg.compare(coin.model, coin.guide, coin.DATA, configs={"a": None}, objective=pg.expectation)


def test_an_elbo_subclass_is_an_objective_for_diagnose_and_compare():
    class CountingELBO(pg.ELBO):
        calls = 0

        def estimates(self, *args, **kwargs):
            CountingELBO.calls += 1
            return super().estimates(*args, **kwargs)

    report = pg.diagnose(coin.model, coin.DATA, guide=coin.guide, objective=CountingELBO, num_samples=20)
    assert CountingELBO.calls > 0 and set(report.samples) >= {"alpha_q", "beta_q"}
    result = pg.compare(coin.model, coin.guide, coin.DATA, configs={"auto": None}, num_steps=2, seeds=(0,),
                        diagnose_every=1, objective=CountingELBO)
    assert result.summary()["final ELBO"].notna().all()


def test_the_cli_finds_pyro_grad_models_beside_a_users_own_models_py(tmp_path):
    # A user's models.py in the working directory must not shadow the benchmark suite.
    (tmp_path / "models.py").write_text("raise ImportError('the user\\'s own models.py')\n")
    done = subprocess.run([sys.executable, "-m", "pyro_grad.cli", "models"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "two_bernoullis" in done.stdout
    # And no top-level "models" package is installed.
    probe = "import importlib.util, sys; sys.path.remove(''); print(importlib.util.find_spec('models'))"
    found = subprocess.run([sys.executable, "-c", probe], cwd="/", capture_output=True, text=True, timeout=60)
    assert found.stdout.strip() == "None", found.stdout + found.stderr


def test_forward_mode_draws_of_a_params_gradient_leave_the_param_store_as_it_was():
    # Model z ~ N(0, 1), x ~ N(z, 1) at x = 1; guide z ~ N(m, s). The draws substitute duals
    # for m and s in pyro.param, never in the store: its tensors are the same objects after.
    def model():
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(1.0))

    def guide():
        m = pyro.param("m", torch.tensor(0.3))
        s = pyro.param("s", torch.tensor(0.5), constraint=dist.constraints.positive)
        pyro.sample("z", dist.Normal(m, s))

    guide()
    store = pyro.get_param_store()
    before = dict(store.named_parameters())
    values = {name: t.detach().clone() for name, t in before.items()}
    report = pg.diagnose(model, guide=guide, num_samples=50)
    assert report.mode == "vectorized"
    after = dict(store.named_parameters())
    assert all(after[name] is before[name] and after[name].equal(values[name]) for name in before)


def test_expectation_takes_max_plate_nesting_and_saves_the_guessing_run():
    # f = Σ_i z_i with z_i ~ N(θ, 1) in a plate of 3: ∂θ E[f] = 3. Vectorized over K = 4
    # particles, the program runs once when max_plate_nesting is given, twice when guessed.
    runs = []

    def plated(t):
        runs.append(1)
        with pyro.plate("items", 3):
            return pyro.sample("z", dist.Normal(t, 1.0)).sum(-1)

    t = torch.tensor(0.5, requires_grad=True)
    value = pg.expectation(plated, t, num_particles=4, max_plate_nesting=1)
    assert len(runs) == 1
    (grad,) = torch.autograd.grad(value, t)
    assert float(grad) == pytest.approx(3.0)  # pathwise: exactly 3 for every draw
    pg.expectation(plated, t, num_particles=4)
    assert len(runs) == 3
    with pytest.raises(pg.EstimatorError, match="max_plate_nesting must be a non-negative integer"):
        pg.expectation(plated, t, num_particles=4, max_plate_nesting=-1)
