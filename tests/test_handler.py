"""The estimators handler: precedence, wrapped distributions, and one test per error."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import assert_mean
from draws import expectation_draws
from pyro.poutine import trace

import pyro_grad as pg
from pyro_grad.harness.models.seeds import parameterized_noise, two_bernoullis


def site_estimators(program, *args, **handler_kwargs):
    tr = trace(program).get_trace(*args)
    return {
        name: site["infer"].get("estimator")
        for name, site in tr.nodes.items()
        if site["type"] == "sample"
    }


def test_wrapper_and_context_manager_forms_set_the_same_estimators():
    config = {"a": pg.Score("loo"), "b": pg.Score(0.5)}
    wrapped = site_estimators(pg.estimators(two_bernoullis, config), torch.tensor(0.1))
    with pg.estimators(config):
        managed = site_estimators(two_bernoullis, torch.tensor(0.1))
    assert wrapped == managed == config


def test_auto_default_is_reparam_where_rsample_exists_else_score():
    chosen = site_estimators(pg.estimators(parameterized_noise), torch.tensor(2.0))
    assert chosen == {"z": pg.Reparam()}
    chosen = site_estimators(pg.estimators(two_bernoullis), torch.tensor(0.1))
    assert chosen == {"a": pg.Score("auto"), "b": pg.Score("auto")}
    # "auto" resolves to leave-one-out with K >= 2 particles, a decaying average with one.
    assert pg.Score("auto").resolve(4) == pg.Score("loo")
    assert pg.Score("auto").resolve(1) == pg.Score("pooled")


def test_site_infer_selects_and_explicit_config_wins():
    def program(theta):
        z = pyro.sample("z", dist.Normal(theta, 1.0), infer={"estimator": pg.Score()})
        w = pyro.sample("w", dist.Normal(theta, 1.0), infer={"estimator": pg.Score()})
        return z + w

    chosen = site_estimators(pg.estimators(program, {"w": pg.Reparam()}), torch.tensor(0.0))
    assert chosen == {"z": pg.Score(), "w": pg.Reparam()}


def test_callable_config_chooses_by_site_message():
    def choose(msg):
        return pg.Score("loo") if msg["name"] == "a" else None

    chosen = site_estimators(pg.estimators(two_bernoullis, choose), torch.tensor(0.1))
    assert chosen == {"a": pg.Score("loo"), "b": pg.Score("auto")}


def test_every_config_form_works_as_wrapper_and_as_context_manager():
    def choose(msg):
        return pg.Score("loo") if msg["name"] == "a" else pg.Score(0.5)

    forms = {
        "mapping": {"a": pg.Score("loo"), "b": pg.Score(0.5)},
        "callable": choose,
        "one estimator": pg.Score("loo"),
    }
    for form, config in forms.items():
        expected = {"a": pg.Score("loo"), "b": pg.Score(0.5 if form != "one estimator" else "loo")}
        wrapped = site_estimators(pg.estimators(two_bernoullis, config), torch.tensor(0.1))
        with pg.estimators(config=config):
            by_keyword = site_estimators(two_bernoullis, torch.tensor(0.1))
        assert wrapped == by_keyword == expected, form
        if form != "callable":  # a positional mapping or estimator is a config too
            with pg.estimators(config):
                assert site_estimators(two_bernoullis, torch.tensor(0.1)) == expected, form


def test_one_estimator_config_wins_over_a_sites_own_choice():
    def program(theta):
        return pyro.sample("z", dist.Normal(theta, 1.0), infer={"estimator": pg.Reparam()})

    assert site_estimators(pg.estimators(program, pg.Score()), torch.tensor(0.0)) == {"z": pg.Score()}


def test_a_callable_passed_positionally_to_with_is_one_clear_error():
    def choose(msg):
        return pg.Score()

    with pytest.raises(pg.EstimatorError, match=r"pg.estimators\(choose\) wraps choose as a program.*config=choose"):
        with pg.estimators(choose):
            pass


def test_observed_sites_are_left_alone():
    def program(theta):
        z = pyro.sample("z", dist.Normal(theta, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(0.3))
        return z

    chosen = site_estimators(pg.estimators(program, {"z": pg.Score()}), torch.tensor(0.0))
    assert chosen == {"z": pg.Score(), "x": None}


def make_wrapped(kind, theta):
    base = dist.Normal(theta, 2.0)
    if kind == "to_event":
        return base.expand([3]).to_event(1)
    if kind == "masked":
        return base.expand([3]).mask(torch.tensor([True, True, False]))
    return base.expand([3])


@pytest.mark.parametrize("kind", ["to_event", "masked", "expanded"])
@pytest.mark.parametrize("estimator", [pg.Score(), pg.Reparam()])
def test_wrapped_distributions_work_and_are_never_mutated(kind, estimator):
    # Each unmasked coordinate contributes θ²(z_i + 4) with z_i ~ N(θ, 2): gradient 8θ+3θ²
    # per coordinate (28 at θ = 2); masked coordinates still reach f pathwise
    # (2θ(z+4)) but not through the score (their log-prob is masked out), as in Pyro.
    seen = []

    def program(theta):
        d = make_wrapped(kind, theta)
        seen.append((d, d.has_rsample))
        if kind == "to_event":
            z = pyro.sample("z", d)
        else:
            with pyro.plate("coordinates", 3):
                z = pyro.sample("z", d)
        return (theta**2 * (z + 4)).sum(-1)

    program = pg.estimators(program, {"z": estimator})
    g = expectation_draws(program, torch.tensor(2.0, requires_grad=True), num_samples=8000)["theta"]
    if kind == "masked" and estimator == pg.Score():
        exact = 2 * 28.0 + 2 * 2.0 * (2.0 + 4)  # two scored coordinates + one pathwise
    else:
        exact = 3 * 28.0
    assert_mean(g, exact)
    assert all(has_rsample for _, has_rsample in seen)
    assert all(d.has_rsample for d, _ in seen)


def test_reparam_on_a_discrete_site_names_site_distribution_and_alternatives():
    program = pg.estimators(two_bernoullis, {"a": pg.Reparam()})
    with pytest.raises(pg.EstimatorError) as info:
        pg.expectation(program, torch.tensor(0.1))
    message = str(info.value)
    assert "'a'" in message and "Bernoulli" in message and "Score" in message


def test_config_naming_an_unknown_site_lists_the_sites_there_are():
    program = pg.estimators(two_bernoullis, {"c": pg.Score()})
    with pytest.raises(pg.EstimatorError, match=r"\['c'\].*\['a', 'b'\]"):
        pg.expectation(program, torch.tensor(0.1))


def test_config_values_must_be_estimators():
    with pytest.raises(pg.EstimatorError, match="config\\['a'\\] must be a pyro_grad estimator"):
        pg.estimators(two_bernoullis, {"a": "reinforce"})
    with pytest.raises(pg.EstimatorError, match="config must be"):
        pg.estimators(two_bernoullis, 42)


def test_leave_one_out_needs_two_particles():
    program = pg.estimators(two_bernoullis, {"a": pg.Score("loo")})
    with pytest.raises(pg.EstimatorError, match="'a' needs num_particles >= 2, got 1"):
        pg.expectation(program, torch.tensor(0.1))


def test_unknown_baseline_is_rejected():
    with pytest.raises(pg.EstimatorError, match="baseline must be"):
        pg.Score(baseline="mean")
    with pytest.raises(pg.EstimatorError, match="beta must be"):
        pg.Score("decay", beta=1.5)


def test_non_scalar_f_is_rejected():
    def program(theta):
        z = pyro.sample("z", dist.Normal(theta, 1.0))
        return torch.stack([z, z])

    with pytest.raises(pg.EstimatorError, match="one scalar per particle"):
        pg.expectation(program, torch.tensor(0.0), vectorize=False)


def test_summing_over_the_particle_dim_is_caught_with_a_hint():
    def program(theta):
        return pyro.sample("z", dist.Normal(theta, 1.0)).sum()

    with pytest.raises(pg.EstimatorError, match="never the particle dim"):
        pg.expectation(program, torch.tensor(0.0), num_particles=4)


def test_non_finite_values_of_f_are_rejected():
    def program(theta):
        z = pyro.sample("z", dist.Normal(theta, 1.0))
        return z / 0.0

    with pytest.raises(pg.EstimatorError, match="non-finite"):
        pg.expectation(program, torch.tensor(0.0), num_particles=3)


def test_non_tensor_f_is_rejected():
    with pytest.raises(pg.EstimatorError, match="must return f, the value to average, as a tensor"):
        pg.expectation(lambda: "cost")


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_num_particles_must_be_a_positive_integer(bad):
    with pytest.raises(pg.EstimatorError, match="num_particles"):
        pg.expectation(two_bernoullis, torch.tensor(0.1), num_particles=bad)
    with pytest.raises(pg.EstimatorError, match="num_particles"):
        pg.ELBO(num_particles=bad)


def test_estimators_are_immutable_with_readable_reprs():
    estimator = pg.Score(baseline="loo")
    with pytest.raises(AttributeError):
        estimator.baseline = None
    assert repr(estimator) == "Score(baseline='loo')"
    assert repr(pg.Reparam()) == "Reparam()"
    normal = pg.gradient_estimators.Site.of_distribution(dist.Normal(0.0, 1.0))
    assert (pg.Reparam().unbiased, pg.Reparam().evaluations(normal)) == (True, 1)
    assert (pg.Score().unbiased, pg.Score().evaluations(normal)) == (True, 1)
