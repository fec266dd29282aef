"""Pyro's own ``infer`` keys under pg.ELBO: TraceGraph_ELBO's baseline dicts are honoured
(the same gradient as TraceGraph_ELBO's, draw for draw, on the same seed), enumeration is
refused with one clear error, and nothing is silently ignored.

Program: c ~ Bernoulli(q) in the guide, c ~ Bernoulli(0.5) in the model, and eight
observations x_i ~ Bernoulli(0.2 + 0.6c). TraceGraph_ELBO's gradient with each baseline
option is the reference: pg.ELBO must give the same numbers on the same random draws
(float tolerance, 1e-5 relative).
"""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, TraceGraph_ELBO, config_enumerate
from torch import nn

import pyro_grad as pg

DATA = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0])


def model(data, options=None):
    c = pyro.sample("c", dist.Bernoulli(0.5))
    with pyro.plate("data", len(data)):
        pyro.sample("x", dist.Bernoulli(0.2 + 0.6 * c), obs=data)


def make_guide(options):
    def guide(data, _=None):
        q = pyro.param("q", torch.tensor(0.4), constraint=dist.constraints.unit_interval)
        pyro.sample("c", dist.Bernoulli(q), infer={"baseline": options(data)} if options else {})
    return guide


class ScalarNetwork(nn.Module):
    """A baseline network with one output per datum set: shaped like c's downstream cost, ()."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).squeeze(-1)


NETWORK = ScalarNetwork()


def network_options(data):
    pyro.module("baseline_network", NETWORK)
    return {"nn_baseline": NETWORK, "nn_baseline_input": data.mean().reshape(1)}


def value_options(data):
    return {"baseline_value": pyro.param("baseline_value", torch.tensor(0.5))}


OPTIONS = [
    ("decaying average", lambda data: {"use_decaying_avg_baseline": True, "baseline_beta": 0.95}),
    ("nn_baseline", network_options),
    ("baseline_value", value_options),
    ("an empty dict", lambda data: {}),
]


def gradients(loss, guide, steps=3):
    """Each step's gradient of q, the baseline's parameters and the loss, under SVI with SGD."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    torch.manual_seed(0)
    NETWORK.linear.reset_parameters()
    svi = SVI(model, guide, pyro.optim.SGD({"lr": 0.01}), loss=loss)
    out = []
    for _ in range(steps):
        value = svi.step(DATA)
        out.append((value, {name: p.clone() for name, p in pyro.get_param_store().named_parameters()}))
    return out


@pytest.mark.parametrize("name, options", OPTIONS, ids=[o[0] for o in OPTIONS])
def test_each_baseline_dict_trains_as_tracegraph_elbo_does_draw_for_draw(name, options):
    guide = make_guide(options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pyro's own notes on its ELBO
        ours, pyros = gradients(pg.ELBO(), guide), gradients(TraceGraph_ELBO(), guide)
    for (loss, params), (pyro_loss, pyro_params) in zip(ours, pyros):
        assert loss == pytest.approx(pyro_loss, rel=1e-5)
        for param, value in pyro_params.items():
            if param.startswith("__baseline_avg_downstream_cost_"):
                continue  # TraceGraph_ELBO keeps its decaying average in the param store; pg in its handler
            assert torch.allclose(params[param], value, rtol=1e-5, atol=1e-7), (name, param)


def test_the_network_baseline_receives_gradients():
    guide = make_guide(network_options)
    before = NETWORK.linear.weight.detach().clone()
    pyro.clear_param_store()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), loss=pg.ELBO())
    for _ in range(3):
        svi.step(DATA)
    assert not torch.equal(NETWORK.linear.weight.detach(), before)


def test_the_site_table_says_the_dict_chose_and_an_explicit_estimator_wins():
    guide = make_guide(OPTIONS[0][1])
    report = pg.diagnose(model, DATA, guide=guide, num_samples=20, sites=False)
    assert report.estimators["c"] == pg.Score("decay", beta=0.95)
    assert "infer={'baseline': ...}" in report.reasons["c"]
    report = pg.diagnose(model, DATA, guide=pg.estimators(guide, {"c": pg.DisARM()}), num_samples=20, sites=False)
    assert report.estimators["c"] == pg.DisARM() and "estimators config" in report.reasons["c"]


def test_a_baseline_on_a_reparameterized_site_warns_once_and_keeps_the_path():
    def guide(data):
        loc = pyro.param("loc", torch.tensor(0.0))
        pyro.sample("z", dist.Normal(loc, 1.0), infer={"baseline": {"use_decaying_avg_baseline": True}})

    def normal_model(data):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=data.sum())
    elbo = pg.ELBO()
    with pytest.warns(UserWarning, match="its gradient is pathwise and its infer\\['baseline'\\] takes no part"):
        elbo.differentiable_loss(normal_model, guide, DATA)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per site: the second step is silent
        elbo.differentiable_loss(normal_model, guide, DATA)
    assert elbo.estimates(normal_model, guide, (DATA,)).estimators["z"] == pg.Reparam()


BAD = [
    ({"beta": 0.9}, "option\\(s\\) \\['beta'\\], which TraceGraph_ELBO does not know either"),
    ({"nn_baseline": NETWORK, "nn_baseline_input": torch.ones(1), "baseline_value": torch.tensor(0.0)},
     "sets both nn_baseline and baseline_value"),
    ({"use_decaying_avg_baseline": True, "baseline_value": torch.tensor(0.0)}, "pg takes one baseline per site"),
    ({"nn_baseline": NETWORK}, "has an nn_baseline but no nn_baseline_input"),
    ({"baseline_value": torch.zeros(3)}, "has shape \\(3,\\); it must broadcast"),
    (0.9, "must be a dict of TraceGraph_ELBO's baseline options"),
]


@pytest.mark.parametrize("options, message", BAD, ids=[m[:20] for _, m in BAD])
def test_a_baseline_dict_pg_cannot_honour_is_refused_by_name(options, message):
    with pytest.raises(pg.EstimatorError, match=message):
        pg.ELBO().differentiable_loss(model, make_guide(lambda data: options), DATA)


def enumerated_guide(data):
    q = pyro.param("q", torch.tensor(0.4), constraint=dist.constraints.unit_interval)
    pyro.sample("c", dist.Bernoulli(q), infer={"enumerate": "parallel"})


@config_enumerate
def enumerated_model(data):
    c = pyro.sample("c", dist.Bernoulli(0.5))
    with pyro.plate("data", len(data)):
        pyro.sample("x", dist.Bernoulli(0.2 + 0.6 * c), obs=data)


def empty_guide(data):
    pass


def sequential_guide(data):
    q = pyro.param("q", torch.tensor(0.4), constraint=dist.constraints.unit_interval)
    pyro.sample("c", dist.Bernoulli(q), infer={"enumerate": "sequential"})


def tmc_guide(data):
    q = pyro.param("q", torch.tensor(0.4), constraint=dist.constraints.unit_interval)
    pyro.sample("c", dist.Bernoulli(q), infer={"enumerate": "parallel", "num_samples": 4})


def poisson_model(data):
    n = pyro.sample("n", dist.Poisson(3.0), infer={"enumerate": "parallel"})
    with pyro.plate("data", len(data)):
        pyro.sample("x", dist.Bernoulli(torch.sigmoid(n - 3.0)), obs=data)


def hundred_values_guide(data):
    pyro.sample("c", dist.Categorical(logits=torch.zeros(100)), infer={"enumerate": "parallel"})


def hundred_values_model(data):
    c = pyro.sample("c", dist.Categorical(logits=torch.zeros(100)))
    with pyro.plate("data", len(data)):
        pyro.sample("x", dist.Bernoulli(0.2 + 0.006 * c), obs=data)


# What pg.ELBO cannot enumerate is refused at the site, never sampled from the prior.
ENUMERATIONS = [
    ("sequential enumeration", model, sequential_guide, pg.ELBO,
     r"site 'c' \(Bernoulli\) asks for enumerate='sequential': pg.ELBO sums sites out in parallel only"),
    ("tensor Monte Carlo", model, tmc_guide, pg.ELBO, r"sets \{'num_samples': 4\}: pg.ELBO enumerates"),
    ("no finite support", poisson_model, empty_guide, pg.ELBO, r"'n' \(Poisson\) in the model is marked.*no finite support"),
    ("too many values", hundred_values_model, hundred_values_guide, pg.ELBO,
     r"Enumerate\(\) does not apply to site 'c' \(Categorical\): its support has 100 values, more than the 64"),
    ("in pg.IWAE", model, enumerated_guide, pg.IWAE, "pg.IWAE does not sum enumerated sites out"),
    ("an estimator on a model-only site", pg.estimators(model, {"c": pg.Score()}), empty_guide, pg.ELBO,
     r"drawn in the model but not in the guide.*Score\(\) would not take effect.*or pg.Enumerate\(\)"),
]


@pytest.mark.parametrize("case, m, g, objective, message", ENUMERATIONS, ids=[e[0] for e in ENUMERATIONS])
def test_an_enumeration_pg_cannot_do_is_refused_never_sampled_silently(case, m, g, objective, message):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pyro's "Found vars in model but not guide"
        with pytest.raises(pg.EstimatorError, match=message):
            objective(num_particles=2).differentiable_loss(m, g, DATA)


def test_enumeration_in_an_expectation_is_refused():
    def program(theta):
        return pyro.sample("c", dist.Bernoulli(theta), infer={"enumerate": "parallel"}) * 2.0
    with pytest.raises(pg.EstimatorError, match="pg.expectation does not sum enumerated sites out"):
        pg.expectation(program, torch.tensor(0.3, requires_grad=True), num_particles=2)
