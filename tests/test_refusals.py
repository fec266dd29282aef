"""Refusals agree with what runs: every "estimators that apply" list holds only
estimators that apply there (in the objective at hand), and a program that indexes
with a Categorical draw an estimator hands it as a float gets one ``EstimatorError``
in every objective and mode.

No randomness is tested here: each assertion is about which estimators a site admits.
"""

import re

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_grad as pg
from pyro_grad.gradient_estimators import REGISTRY, Site
from pyro_grad.gradient_estimators.registry import OBJECTIVES, applicable, not_applicable

#: One distribution of each family the estimators tell apart.
DISTRIBUTIONS = {
    "Bernoulli": dist.Bernoulli(0.3),
    "Categorical": dist.Categorical(logits=torch.zeros(3)),
    "OneHotCategorical": dist.OneHotCategorical(logits=torch.zeros(3)),
    "Normal": dist.Normal(0.0, 1.0),
    "Poisson": dist.Poisson(2.0),
    "Gamma": dist.Gamma(2.0, 1.0),
    "Beta": dist.Beta(2.0, 2.0),
    "Uniform(0, θ)": dist.Uniform(0.0, torch.tensor(2.0, requires_grad=True)),
    "Dirichlet": dist.Dirichlet(torch.ones(3)),
    "Delta": dist.Delta(torch.tensor(1.0)),
    "plated Bernoulli": dist.Bernoulli(torch.full((4,), 0.3)),
}


@pytest.mark.parametrize("objective", [None, *OBJECTIVES])
@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_what_applies_is_exactly_what_would_run(name, objective):
    site = Site.of_distribution(DISTRIBUTIONS[name])
    listed = applicable(site, objective)
    for estimator in listed:
        assert type(estimator).applies_to(site) and estimator.refusal(site) is None, estimator
        assert objective is None or (objective in estimator.objectives
                                     and estimator.objective_refusal(site, objective) is None), estimator
    # And nothing that would run is left out: each class's own instance for the site.
    for cls in REGISTRY:
        example = cls.example_for(site) if cls.applies_to(site) else None
        runs = example is not None and example.refusal(site) is None and (
            objective is None or (objective in cls.objectives and example.objective_refusal(site, objective) is None))
        assert runs == any(type(e) is cls for e in listed), cls


@pytest.mark.parametrize("objective", [None, *OBJECTIVES])
@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_every_refusal_lists_only_estimators_that_apply_there(name, objective):
    site = Site.of_distribution(DISTRIBUTIONS[name])
    for cls in REGISTRY:
        estimator = cls.example()
        if cls.applies_to(site) and estimator.refusal(site) is None:
            continue
        message = str(not_applicable(estimator, site, objective=objective))
        named = message.split("estimators that apply: ")[1]
        for other in REGISTRY:
            mentioned = re.search(rf"\b{other.__name__}\(", named) is not None  # ARM is not DisARM
            runs_somewhere = any(type(e) is other for e in applicable(site, objective))
            assert mentioned == runs_somewhere, (cls, other, message)


def bernoulli_program(p):
    return pyro.sample("z", dist.Bernoulli(p))


def test_a_handlers_refusal_lists_what_applies_in_the_objective_that_runs_it():
    # Reparam at a Bernoulli: inside pg.expectation, VIMCO (pg.IWAE only) is not offered;
    # the bare handler, which knows no objective, names it with the objective it needs.
    with pytest.raises(pg.EstimatorError) as raised:
        pg.expectation(pg.estimators(bernoulli_program, {"z": pg.Reparam()}), torch.tensor(0.3, requires_grad=True))
    assert "Score()" in str(raised.value) and "VIMCO" not in str(raised.value)
    with pytest.raises(pg.EstimatorError) as raised, pg.estimators({"z": pg.Reparam()}):
        bernoulli_program(torch.tensor(0.3))
    assert "and VIMCO() (pg.IWAE only)" in str(raised.value)


TABLE = torch.tensor([1.0, 4.0, 9.0])


def indexing_program(logits):
    z = pyro.sample("z", dist.Categorical(logits=logits))
    return TABLE[z]


def model(x):
    z = pyro.sample("z", dist.Categorical(logits=torch.zeros(3)))
    pyro.sample("x", dist.Normal(TABLE[z], 1.0), obs=x)


def guide(x):
    pyro.sample("z", dist.Categorical(logits=pyro.param("logits", torch.zeros(3))))


FLOAT_INDEX = [pg.RODEO(), pg.REBAR(), pg.RELAX(), pg.GumbelSoftmax(hard=True), pg.StraightThrough(), pg.ReinMax()]


@pytest.mark.parametrize("max_plate_nesting", [None, 0])
@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("estimator", FLOAT_INDEX, ids=repr)
def test_indexing_with_a_float_categorical_draw_is_one_error_in_the_expectation(estimator, vectorize,
                                                                                 max_plate_nesting):
    logits = torch.zeros(3, requires_grad=True)
    with pytest.raises(pg.EstimatorError, match=r"site 'z' \(Categorical\).*indexed with it"):
        pg.expectation(pg.estimators(indexing_program, {"z": estimator}), logits, num_particles=2,
                       vectorize=vectorize, max_plate_nesting=max_plate_nesting)


@pytest.mark.parametrize("vectorize", [True, False])
@pytest.mark.parametrize("estimator", FLOAT_INDEX, ids=repr)
def test_indexing_with_a_float_categorical_draw_is_one_error_in_the_elbo(estimator, vectorize):
    # REBAR and RELAX are refused first, as not applying there: an ELBO scores the
    # Categorical's mass at an index, which a relaxed index does not have.
    pyro.clear_param_store()
    with pytest.raises(pg.EstimatorError, match=r"site 'z' \(Categorical\)") as raised:
        pg.ELBO(num_particles=2, vectorize_particles=vectorize).differentiable_loss(
            model, pg.estimators(guide, {"z": estimator}), torch.tensor(2.0))
    if isinstance(estimator, (pg.REBAR, pg.RELAX)):
        assert "does not apply" in str(raised.value) and "REBAR" not in str(raised.value).split("apply: ")[1]
        assert not any(isinstance(e, (pg.REBAR, pg.RELAX))
                       for e in applicable(Site.of_distribution(dist.Categorical(logits=torch.zeros(3))), "elbo"))
