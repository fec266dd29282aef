"""The ``Objective`` protocol: ``pg.expectation``'s class, ``pg.ELBO`` and ``pg.IWAE``
implement it, and diagnostics, references and tuning need nothing else of an objective.

Programs: ``f = 2·Bern(θ)``, ``E[f] = 2θ`` (so ``∂θ E[f] = 2``); the ELBO of a latent
Bernoulli with a Normal observation, exact by enumeration (Pyro's TraceEnum_ELBO).
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate

import pyro_grad as pg
from pyro_grad.objectives import Expectation, objective_type
from pyro_grad.gradient_estimators import REGISTRY

THETA = 0.3


def doubled_coin(theta):
    return 2.0 * pyro.sample("b", dist.Bernoulli(theta))


def model(x):
    b = pyro.sample("b", dist.Bernoulli(0.4))
    pyro.sample("x", dist.Normal(2.0 * b, 1.0), obs=x)


def guide(x):
    phi = pyro.param("phi", torch.tensor(0.2))
    pyro.sample("b", dist.Bernoulli(logits=phi))


@pytest.mark.parametrize("cls", [Expectation, pg.ELBO, pg.IWAE])
def test_each_objective_implements_the_protocol(cls):
    objective = cls.configured(3, True, None)
    assert isinstance(objective, pg.Objective) and objective.num_particles == 3
    assert cls.name in {"expectation", "elbo", "iwae"}
    # Its estimators are exactly the registered ones derived for it.
    assert cls.derived_estimators() == [e for e in REGISTRY if cls.name in e.objectives]
    if cls.takes_guide:
        assert objective.programs(model, guide) == [model, guide] and objective.chosen_program(model, guide) is guide
    else:
        assert objective.programs(doubled_coin, None) == [doubled_coin]
        assert objective.chosen_program(doubled_coin, None) is doubled_coin


def test_the_expectations_estimates_and_exact_value():
    # G = 4 samples of K = 3 particles: values (4,), each a mean of 0s and 2s; the exact
    # E[f] = 2θ, differentiable: ∂θ = 2 exactly.
    theta = torch.tensor(THETA, requires_grad=True)
    estimates = Expectation(3).estimates(doubled_coin, None, (theta,), {}, num_samples=4)
    assert estimates.values.shape == (4,)
    heads_times_two = estimates.values.detach() * 3  # Σ_k f_k: an even number from 0 to 6
    assert torch.allclose(heads_times_two, (heads_times_two / 2).round() * 2, atol=1e-5)
    exact = Expectation().exact(doubled_coin, None, (theta,), {})
    assert torch.isclose(exact, torch.tensor(2 * THETA))
    assert torch.isclose(torch.autograd.grad(exact, theta)[0], torch.tensor(2.0))


def test_the_elbos_exact_value_is_traceenums():
    pyro.clear_param_store()
    data = torch.tensor(1.5)
    exact = pg.ELBO().exact(model, guide, (data,), {})
    expected = -TraceEnum_ELBO().differentiable_loss(model, config_enumerate(guide, "parallel"), data)
    assert torch.isclose(exact, expected)
    with pytest.raises(pg.EstimatorError, match="not the bound of IWAE"):
        pg.IWAE().exact(model, guide, (data,), {})


class Halved(Expectation):
    """E[f / 2], written against the protocol alone: its estimates are the expectation's, halved."""

    def estimates(self, model, guide, args, kwargs, num_samples=1):
        estimates = super().estimates(model, guide, args, kwargs, num_samples)
        estimates.values = estimates.values / 2
        return estimates

    def exact(self, model, guide, args, kwargs):
        return super().exact(model, guide, args, kwargs) / 2


def test_diagnose_and_its_reference_need_only_the_protocol():
    # ∂θ E[f/2] = 1 exactly, by Enumerate (no variance) and by the exact reference.
    theta = torch.tensor(THETA, requires_grad=True)
    report = pg.diagnose(doubled_coin, theta, objective=Halved, estimators=pg.Enumerate(), num_samples=10,
                         reference="enumerate")
    assert float(report.params["mean"].iloc[0]) == pytest.approx(1.0)
    assert float(report.params["reference"].iloc[0]) == pytest.approx(1.0)


def test_an_objective_is_named_by_its_class_or_by_pg_expectation():
    assert objective_type(None, None) is Expectation and objective_type(None, guide) is pg.ELBO
    assert objective_type(pg.expectation, None) is Expectation and objective_type(pg.IWAE, guide) is pg.IWAE
    with pytest.raises(pg.EstimatorError, match="objective must be pg.expectation or an ELBO class"):
        objective_type("elbo", guide)
    with pytest.raises(pg.EstimatorError, match="needs a guide"):
        objective_type(pg.ELBO, None)
    with pytest.raises(pg.EstimatorError, match="takes no guide"):
        objective_type(pg.expectation, guide)
