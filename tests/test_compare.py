"""SVI comparisons: compare, AutoGuide, persistence (nothing finished is lost), reports."""

import base64
import io
import math
import os
import re

import matplotlib.figure
import matplotlib.image
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_grad as pg
import pyro_grad.harness.comparison.svi_compare as compare_module
import pyro_grad.harness.comparison.fits as fits_module
import pyro_grad.harness.comparison.svi_fit as svi_fit
from pyro_grad.harness.models import coin
from pyro_grad.harness.presentation.main_job import build_reports

CONFIGS = {"reparam": pg.Reparam(), "loo": {"f": pg.Score("loo")}}
DEEP = os.environ.get("PYRO_GRAD_DEEP", "") not in ("", "0")


def test_compare_gives_the_callers_param_store_and_random_state_back():
    # The fits clear the store and seed every stream; the caller's are as they were.
    pyro.clear_param_store()
    mine = pyro.param("mine", torch.tensor([1.0, 2.0]))
    pyro.set_rng_seed(7)
    expected = (torch.rand(3), __import__("random").random())
    pyro.set_rng_seed(7)
    pg.compare(coin.model, coin.guide, coin.DATA, configs={"reparam": pg.Reparam()}, num_steps=3, seeds=(0,))
    assert list(pyro.get_param_store().keys()) == ["mine"] and pyro.param("mine") is mine
    assert torch.equal(torch.rand(3), expected[0]) and __import__("random").random() == expected[1]


def test_compare_trains_each_config_and_seed_and_summarizes(tmp_path):
    result = pg.compare(coin.model, coin.guide, coin.DATA, configs=CONFIGS, num_steps=150,
                        seeds=(0, 1), diagnose_every=75, out=str(tmp_path))
    summary = result.summary().set_index("config")
    assert set(summary.index) == {"reparam", "loo"}
    assert set(summary.columns) >= {"final ELBO", "± sd", "seconds to target", "± sd (s)", "evaluations to target",
                                    "unbiased", "gradient variance"}
    # Fewest evaluations to the target first (as the verdict ranks); each config's figures are its fits' means.
    assert summary["evaluations to target"].is_monotonic_increasing
    hits = result.to_target()
    for label in ("reparam", "loo"):
        assert summary.loc[label, "evaluations to target"] == pytest.approx(
            hits[hits["config"] == label]["evaluations"].mean())
    assert summary["unbiased"].all()
    # The ELBO is at most the log evidence log B(16, 14) − log B(10, 10) ≈ −6.99 (6 heads, 4 tails).
    log_evidence = float(torch.lgamma(torch.tensor(16.0)) + torch.lgamma(torch.tensor(14.0)) - torch.lgamma(torch.tensor(30.0))
                         - 2 * torch.lgamma(torch.tensor(10.0)) + torch.lgamma(torch.tensor(20.0)))
    assert (summary["final ELBO"] <= log_evidence + 0.05).all()
    assert (summary["final ELBO"] > log_evidence - 1.0).all()
    assert (summary["failed fits"] == 0).all()
    assert all(len(r["checkpoints"]) == 2 for r in result.fits.values())
    assert isinstance(result.plot_elbo(), matplotlib.figure.Figure)
    assert isinstance(result.plot_variance(), matplotlib.figure.Figure)
    idata = result.to_inference_data()
    assert set(idata.posterior.data_vars) == {"f[reparam]", "f[loo]"}
    assert idata.posterior["f[loo]"].shape[:2] == (2, svi_fit.POSTERIOR_DRAWS)
    # The posterior is Beta(16, 14): mean 0.533.
    assert float(idata.posterior["f[reparam]"].mean()) == pytest.approx(16 / 30, abs=0.05)


def test_a_nuts_reference_joins_the_posteriors_for_continuous_models():
    import arviz as az

    result = pg.compare(coin.model, coin.guide, coin.DATA, configs={"reparam": pg.Reparam()}, num_steps=100, seeds=(0,))
    result.add_nuts_reference(coin.model, coin.DATA, num_samples=300, warmup_steps=150)
    summary = az.summary(result.to_inference_data())
    assert set(summary.index) == {"f[NUTS]", "f[reparam]"}
    # NUTS draws from the exact posterior Beta(16, 14): mean 0.533, sd 0.089; the
    # tolerance is 4 Monte Carlo standard errors at the chain's effective sample size.
    ess = summary.loc["f[NUTS]", "ess_bulk"]
    assert summary.loc["f[NUTS]", "mean"] == pytest.approx(16 / 30, abs=4 * 0.089 / ess**0.5)


def test_every_run_starts_alike_when_reset_restores_module_weights():
    # The SBN's network lives outside the param store and SVI trains it in place.
    from pyro_grad.harness.models import sbn

    bench_args = sbn.BENCHMARK.arguments()
    configs = {"first": pg.Score("loo"), "second": pg.Score("loo")}
    result = pg.compare(sbn.model, sbn.guide, *bench_args, configs=configs, num_steps=30, seeds=(0,),
                        reset=sbn.NET.reset)
    first, second = (result.fits[(c, 0)]["elbo"] for c in configs)
    assert first == pytest.approx(second)  # same seed, same start: the same run


def exploding_on_seed_1(data):
    # Seed 1 (read back from torch, which pg.compare seeds per run) gives ELBO = −inf.
    coin.model(data)
    if torch.initial_seed() == 1:
        pyro.factor("boom", torch.tensor(float("-inf")))


def test_a_run_whose_elbo_turns_non_finite_stops_and_is_recorded(tmp_path):
    result = pg.compare(exploding_on_seed_1, coin.guide, coin.DATA, configs={"a": pg.Reparam()}, num_steps=30,
                        seeds=(0, 1), out=str(tmp_path))
    assert result.fits[("a", 0)]["status"] == "finished"
    run = result.fits[("a", 1)]
    assert run["status"] == "failed" and "non-finite" in run["reason"] and run["step"] == 0
    assert result.summary().iloc[0]["failed fits"] == 1
    assert "non-finite" in result.failures().iloc[0]["reason"]


def diverged_baseline(data):
    # A baseline network gone non-finite: every run of its config fails at step 0.
    return torch.tensor(float("inf"))


def test_a_config_that_fails_in_every_run_raises_after_storing_the_others(tmp_path):
    configs = {"fine": pg.Reparam(), "diverged": {"f": pg.Score(diverged_baseline)}}
    with pytest.warns(UserWarning, match="NaN"):  # Pyro's own warning on the NaN loss
        with pytest.raises(pg.EstimatorError,
                           match=r"config 'diverged' failed in every fit \(2 of 2\); seed 0: non-finite ELBO"):
            pg.compare(coin.model, coin.guide, coin.DATA, configs=configs, num_steps=5, seeds=(0, 1),
                       out=str(tmp_path))
    # Every run was stored before the error: the finished ones are reused.
    with pytest.raises(compare_module.ConfigFailed) as failure:
        pg.compare(coin.model, coin.guide, coin.DATA, configs=configs, num_steps=5, seeds=(0, 1), out=str(tmp_path))
    # The error carries every run, for the main job's pages to show the failure.
    assert failure.value.comparison.summary().set_index("config").loc["diverged", "failed fits"] == 2
    assert set(failure.value.comparison.origin.values()) == {"reused"}
    result = pg.compare(coin.model, coin.guide, coin.DATA, configs={"fine": pg.Reparam()}, num_steps=5,
                        seeds=(0, 1), out=str(tmp_path))
    assert set(result.origin.values()) == {"reused"}


@pytest.mark.parametrize("settings, message", [
    ({"seeds": ()}, "seeds must be a non-empty sequence"),
    ({"seeds": (0, 0)}, "seeds must be distinct"),
    ({"num_steps": 0}, "num_steps must be a positive integer"),
    ({"num_particles": 0}, "num_particles must be a positive integer"),
    ({"diagnose_every": 0}, "diagnose_every must be None or a positive integer"),
    ({"configs": {}}, "configs must be a non-empty dict"),
])
def test_settings_that_cannot_give_a_comparison_are_refused_before_anything_runs(settings, message, monkeypatch):
    monkeypatch.setattr(fits_module, "fit_one", lambda *a, **k: pytest.fail("a run started"))
    with pytest.raises(pg.EstimatorError, match=message):
        pg.compare(coin.model, coin.guide, coin.DATA, **{"configs": CONFIGS, **settings})


def test_a_program_without_observed_sites_is_refused_with_a_pointer_to_diagnose():
    from pyro_grad.harness.models import seeds

    with pytest.raises(pg.EstimatorError, match="no observed site.*pg.diagnose"):
        pg.compare(seeds.two_bernoullis, None, torch.tensor(0.3), configs=CONFIGS)


def mixed_model(data):
    loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    switch = pyro.sample("switch", dist.Bernoulli(0.5))
    with pyro.plate("data", len(data)):
        pyro.sample("x", dist.Normal(loc + switch, scale), obs=data)


def test_autoguide_covers_discrete_and_continuous_latents():
    data = torch.tensor([1.0, 1.5, 0.5, 2.0])
    guide = pg.AutoGuide(mixed_model)
    values = guide(data)
    assert set(values) == {"loc", "scale", "switch"}
    assert values["scale"] > 0 and values["switch"] in (0.0, 1.0)
    result = pg.compare(mixed_model, None, data, configs={"disarm": {"switch": pg.DisARM()}},
                        num_steps=100, seeds=(0,))
    assert result.fits[("disarm", 0)]["status"] == "finished"
    assert set(result.fits[("disarm", 0)]["posterior"]) == {"loc", "scale", "switch"}


def test_evaluations_count_the_difference_estimators_extra_runs():
    data = torch.tensor([1.0, 1.5, 0.5, 2.0])
    configs = {"score": {"switch": pg.Score()}, "disarm": {"switch": pg.DisARM()}}
    result = pg.compare(mixed_model, None, data, configs=configs, num_steps=3, num_particles=4, seeds=(0,))
    # 3 steps × 4 particles × (1 run, or DisARM's 2: the sample and its antithetic twin).
    assert result.fits[("score", 0)]["evaluations"] == 12
    assert result.fits[("disarm", 0)]["evaluations"] == 24


def test_autoguide_names_a_site_it_cannot_model():
    def counts(data):
        pyro.sample("n", dist.Poisson(3.0))

    guide = pg.AutoGuide(counts)
    for _ in range(2):  # and again on the next call: no half-built guide is left behind
        with pytest.raises(pg.EstimatorError, match="site 'n' \\(Poisson\\)"):
            guide(torch.zeros(1))


def test_a_site_too_large_to_store_is_left_out_of_the_posterior_with_a_note(monkeypatch, tmp_path):
    monkeypatch.setattr(svi_fit, "MAX_POSTERIOR_VALUES", 100)  # f: 1 element × 200 draws
    result = pg.compare(coin.model, coin.guide, coin.DATA, configs={"rep": pg.Reparam()}, num_steps=2, seeds=(0,))
    assert result.fits[("rep", 0)]["posterior"] == {}
    assert result.notes == ["site 'f' has 1 elements per draw: its draws are left out of the stored fit "
                            "(at most 100 values per site)"]
    assert "(no posterior draws were kept)" in pg.report(result, tmp_path / "r.html").read_text()


TWO_CLUSTERS = torch.cat([torch.linspace(-4.0, -2.0, 20), torch.linspace(2.0, 4.0, 20)])


def subsampled_mixture(data):
    """A two-component mixture whose per-point assignment (discrete) and offset
    (continuous) share one subsampled plate; written to vectorize over particles."""
    locs = pyro.sample("locs", dist.Normal(0.0, 5.0).expand([2]).to_event(1))
    with pyro.plate("data", len(data), subsample_size=10) as index:
        z = pyro.sample("z", dist.Bernoulli(0.5))
        offset = pyro.sample("offset", dist.Normal(0.0, 1.0))
        mean = locs[..., 0] * (1 - z) + locs[..., 1] * z + 0.1 * offset
        pyro.sample("x", dist.Normal(mean, 1.0), obs=data[index])


def test_autoguide_shares_the_models_subsampled_plate_with_full_size_local_parameters():
    guide = pg.AutoGuide(subsampled_mixture)
    trace = pyro.poutine.trace(guide).get_trace(TWO_CLUSTERS)
    # One plate, one subsample: the two local sites are drawn at the same 10 points.
    assert [n for n, s in trace.nodes.items() if s["type"] == "sample"] == ["data", "locs", "z", "offset"]
    assert trace.nodes["z"]["value"].shape == trace.nodes["offset"]["value"].shape == (10,)
    store = pyro.get_param_store()
    assert store["auto.z.logits"].shape == store["auto.offset.loc"].shape == (40,)
    assert store["auto.locs.loc"].shape == (2,)
    # Each slot draws its own data point's factor: logit +30 at even points, −30 at odd
    # ones, so z = 1 exactly at the slots holding an even index.
    with torch.no_grad():
        store["auto.z.logits"].copy_(torch.where(torch.arange(40) % 2 == 0, 30.0, -30.0))
    trace = pyro.poutine.trace(guide).get_trace(TWO_CLUSTERS)
    index = trace.nodes["data"]["value"]
    assert torch.equal(trace.nodes["z"]["value"], (index % 2 == 0).float())


def test_posterior_draws_of_a_subsampled_site_are_indexed_by_data_point(monkeypatch):
    # The trained logits, as the fit draws its posterior from them (compare then gives
    # the caller's param store back).
    trained = {}

    def posterior(*args, **kwargs):
        trained["z"] = pyro.get_param_store()["auto.z.logits"].detach().clone()
        return posterior_of(*args, **kwargs)

    posterior_of = svi_fit._posterior
    monkeypatch.setattr(svi_fit, "_posterior", posterior)
    result = pg.compare(subsampled_mixture, None, TWO_CLUSTERS, configs={"loo": {"z": pg.Score("loo")}},
                        num_steps=30, seeds=(0,), optim=pyro.optim.Adam({"lr": 0.1}))
    z = result.to_inference_data().posterior["z[loo]"]
    assert z.shape == (1, svi_fit.POSTERIOR_DRAWS, 40)  # every data point, not 10 minibatch slots
    # Point i's draws are Bernoulli(σ(logit_i)) of the trained guide: each mean within 4
    # standard errors.
    p = torch.sigmoid(trained["z"]).numpy()
    se = (p * (1 - p) / svi_fit.POSTERIOR_DRAWS) ** 0.5
    assert (abs(z.mean(("chain", "draw")).values - p) <= 4 * se + 1e-9).all()
    assert p.std() > 0.05  # the points were trained apart, so slot indexing would fail


def nested(data):
    """Groups (dim −2) of items (dim −1): a group effect and a per-item Bernoulli."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("groups", data.shape[0], dim=-2):
        effect = pyro.sample("effect", dist.Normal(mu, 1.0))
        with pyro.plate("items", data.shape[1], dim=-1):
            flip = pyro.sample("flip", dist.Bernoulli(logits=effect))
            pyro.sample("x", dist.Normal(effect + flip, 0.5), obs=data)


def test_autoguide_enters_nested_plates_once_each_and_trains():
    data = torch.arange(12.0).reshape(3, 4) / 6
    result = pg.compare(nested, None, data, configs={"disarm": {"flip": pg.DisARM()}}, num_steps=20, seeds=(0,))
    run = result.fits[("disarm", 0)]
    assert run["status"] == "finished"
    draws = result.to_inference_data().posterior
    assert draws["effect[disarm]"].shape == (1, svi_fit.POSTERIOR_DRAWS, 3, 1)
    assert draws["flip[disarm]"].shape == (1, svi_fit.POSTERIOR_DRAWS, 3, 4)


def grouped(data):
    """Subsampled groups (dim −2) of items (dim −1): a 2-vector per group (an event dim)
    and a Categorical(3) per item."""
    with pyro.plate("groups", data.shape[0], subsample_size=3, dim=-2) as groups:
        center = pyro.sample("center", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        with pyro.plate("items", data.shape[1], dim=-1):
            kind = pyro.sample("kind", dist.Categorical(logits=torch.zeros(3)))
            pyro.sample("x", dist.Normal(center[..., 0] + kind, 1.0), obs=data[groups])


def test_autoguide_indexes_event_and_categorical_parameters_along_a_subsampled_outer_plate():
    guide = pg.AutoGuide(grouped)
    data = torch.zeros(6, 4)
    guide(data)
    store = pyro.get_param_store()
    assert store["auto.center.loc"].shape == (6, 1, 2) and store["auto.kind.logits"].shape == (6, 4, 3)
    # Group i's center is i (scale ≈ 0) and its items' category is i mod 3 (logit +30).
    store["auto.center.loc"] = torch.arange(6.0).reshape(6, 1, 1).expand(6, 1, 2).clone()
    store["auto.center.scale"] = torch.full((6, 1, 2), 1e-6)
    store["auto.kind.logits"] = 30.0 * torch.nn.functional.one_hot(torch.arange(6) % 3, 3)[:, None, :].float()
    trace = pyro.poutine.trace(guide).get_trace(data)
    groups = trace.nodes["groups"]["value"]
    assert trace.nodes["center"]["value"].shape == (3, 1, 2)
    assert torch.allclose(trace.nodes["center"]["value"], groups.float().reshape(3, 1, 1).expand(3, 1, 2), atol=1e-3)
    assert torch.equal(trace.nodes["kind"]["value"], (groups % 3).reshape(3, 1).expand(3, 4))


def test_a_guides_own_subsampled_site_is_left_out_of_the_posterior_with_a_note():
    def guide(data):
        logits = pyro.param("logits", torch.zeros(len(data)))
        loc = pyro.param("loc", torch.zeros(2))
        pyro.sample("locs", dist.Normal(loc, 0.1).to_event(1))
        with pyro.plate("data", len(data), subsample_size=10) as index:
            pyro.sample("z", dist.Bernoulli(logits=logits[index]))
            pyro.sample("offset", dist.Normal(0.0, 1.0))

    result = pg.compare(subsampled_mixture, guide, TWO_CLUSTERS, configs={"loo": {"z": pg.Score("loo")}},
                        num_steps=3, seeds=(0,))
    assert set(result.to_inference_data().posterior.data_vars) == {"locs[loo]"}
    assert any("'z' is local to a subsampled plate" in note for note in result.notes)


def test_runs_are_timed_after_a_warm_up_in_wall_and_cpu_seconds(monkeypatch):
    calls = []
    fit_one = fits_module.fit_one
    monkeypatch.setattr(fits_module, "fit_one",
                        lambda *a, **k: calls.append((a[4], a[6], k.get("posterior", True))) or fit_one(*a, **k))
    result = pg.compare(coin.model, coin.guide, coin.DATA, configs=CONFIGS, num_steps=10, seeds=(0,))
    # An untimed 2-step run of each config first, then the timed 10-step runs.
    assert calls == [(CONFIGS["reparam"], 2, False), (CONFIGS["loo"], 2, False),
                     (CONFIGS["reparam"], 10, True), (CONFIGS["loo"], 10, True)]
    assert all(r["cpu seconds"] > 0 and r["seconds"] > 0 for r in result.fits.values())
    assert (result.summary()["CPU seconds per fit"] > 0).all()


def decoded_images(page: str):
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    return [matplotlib.image.imread(io.BytesIO(base64.b64decode(i)), format="png") for i in images]


def test_report_writes_a_self_contained_page_whose_images_decode(tmp_path):
    result = pg.compare(coin.model, coin.guide, coin.DATA, configs=CONFIGS, num_steps=40, seeds=(0,), diagnose_every=20)
    path = pg.report(result, tmp_path / "coin.html", title="coin")
    page = path.read_text()
    images = decoded_images(page)
    assert len(images) == 2 and all(i.shape[0] > 100 and i.shape[1] > 100 for i in images)
    assert "Machine and versions" in page and "torch" in page and "Score(baseline=" in page
    assert (tmp_path / "coin.md").read_text().count("![") == 2
    with pytest.raises(pg.EstimatorError, match="report\\(\\) takes"):
        pg.report(42, tmp_path / "x.html")


#: The main job's test builds these pages (an expectation with two sites, a Poisson
#: one, the coin's SVI page with its exact log p(x), the mixture's with biased configs);
#: PYRO_GRAD_DEEP=1 builds every model's (3 minutes more: sir's 20 sites, the VAE).
MAIN_JOB_MODELS = None if DEEP else ["two_bernoullis", "poisson_fit", "coin", "mixture"]


def test_the_main_job_writes_an_index_linking_a_page_per_model_each_opening_with_a_recommendation(tmp_path):
    from pyro_grad.harness.models import registry

    # A log line per page; the index lists them in registry order (as with workers=,
    # whose pages arrive in any order: test_cli's `report --workers 1`).
    lines = []
    index = build_reports(str(tmp_path), num_steps=4, num_samples=10, seeds=(0,), checkpoints=1,
                          models=MAIN_JOB_MODELS, log=lines.append)
    page = index.read_text()
    names = MAIN_JOB_MODELS or list(registry())
    assert sorted(line.split(":")[0] for line in lines) == sorted(names)
    assert [m for m in re.findall(r'<a href="(\w+)\.html">', page)] == [n for n in registry() if n in names]
    assert "<th>recommended</th>" in page
    for name in names:
        assert f'href="{name}.html"' in page
        text = (tmp_path / f"{name}.html").read_text()
        assert decoded_images(text), name
        assert text.index("<h2>Recommendation</h2>") < text.index("<h2>", text.index("<h2>Recommendation</h2>") + 1)
    # Every page says what was run: an SVI page its budget rule (the cheapest config's 4
    # steps, at equal evaluations), particles and seeds; an E[f] page its draws.
    for name in names:
        text = (tmp_path / f"{name}.html").read_text()
        assert "<h2>What was run</h2>" in text, name
    assert "equal program evaluations: each configuration gets the evaluations of 4 steps" in (
        tmp_path / "coin.html").read_text()
    assert "<th>gradient draws</th>" in two_bernoullis_page(tmp_path)
    # The sites table is filled on an expectation's page; bias flags say how they are decided.
    two_bernoullis = (tmp_path / "two_bernoullis.html").read_text()
    # (collapsed below the verdict when it is long: its rows in two_bernoullis-sites.csv)
    assert re.search(r"<h2>Sample sites</h2>\s*(<div class=\"scroll\"><table|<p class=\"note\">)", two_bernoullis)
    assert "Holm" in two_bernoullis
    # The mixture's biased configs are named with their bias measured by enumeration.
    assert "Biased (unbiased=False): StraightThrough: at the start, flagged on" in (tmp_path / "mixture.html").read_text()
    with pytest.raises(pg.EstimatorError, match=r"no built-in model named \['nope'\]"):
        build_reports(str(tmp_path), models=["nope"])


def two_bernoullis_page(out) -> str:
    return (out / "two_bernoullis.html").read_text()


def test_a_budget_given_is_used_for_every_page_and_the_caps_hold_only_the_defaults():
    from pyro_grad.harness.presentation.main_job import DEFAULT_STEPS, STEPS, page_budget

    assert page_budget("mnist_vae").steps == STEPS["mnist_vae"] < DEFAULT_STEPS
    assert page_budget("coin").steps == DEFAULT_STEPS
    assert page_budget("mnist_vae", num_steps=300).steps == 300 and page_budget("sir", num_samples=7).draws == 7
    assert page_budget("mnist_vae", num_samples=9).bias_draws == 9


def test_a_large_posterior_is_summarized_only_as_far_as_the_page_shows_it():
    # A scalar and a 50-element variable, 2 chains of 10 draws: 51 scalar variables, of
    # which the page shows the first MAX_POSTERIOR_ROWS = 30 (the scalar, then 29
    # elements), and only those are summarized.
    import arviz as az
    from pyro_grad.harness.presentation.html_report import MAX_POSTERIOR_ROWS, first_elements

    generator = torch.Generator().manual_seed(0)
    posterior = az.from_dict(posterior={"a": torch.randn(2, 10, generator=generator).numpy(),
                                        "z": torch.randn(2, 10, 5, 10, generator=generator).numpy()}).posterior
    shown, total = first_elements(posterior, MAX_POSTERIOR_ROWS)
    assert total == 51
    assert shown["a"].shape == (2, 10) and shown["z"].shape == (2, 10, 29)
    assert (shown["z"] == posterior["z"].values.reshape(2, 10, 50)[..., :29]).all()
    assert len(az.summary(az.from_dict(posterior=shown), kind="stats")) == MAX_POSTERIOR_ROWS
    assert first_elements(posterior, 100) == (None, 51)


def bernoulli_model(data):
    b = pyro.sample("b", dist.Bernoulli(0.3))
    with pyro.plate("data", len(data)):
        pyro.sample("x", dist.Normal(2.0 * b, 1.0), obs=data)


def bernoulli_guide(data):
    pyro.sample("b", dist.Bernoulli(logits=pyro.param("phi", torch.tensor(0.0))))


def test_an_evaluations_budget_gives_each_config_the_same_program_evaluations():
    # MeasureValued re-runs the program once per particle (2 evaluations), Score does not
    # (1): under budget="evaluations" the coupled difference trains half the steps, and
    # both spend 40 steps × 2 particles × 1 evaluation of Score's.
    data = torch.tensor([1.5, 2.0])
    result = pg.compare(bernoulli_model, bernoulli_guide, data, configs={"score": pg.Score(), "mvd": pg.MeasureValued()},
                        num_steps=40, num_particles=2, seeds=(0,), diagnose_every=20, budget="evaluations")
    runs = {label: r for (label, _), r in result.fits.items()}
    assert len(runs["score"]["elbo"]) == 40 and len(runs["mvd"]["elbo"]) == 20
    assert runs["score"]["evaluations"] == runs["mvd"]["evaluations"] == 80
    # Checkpoints at the same fractions of each run: halfway and at the end.
    assert [c["step"] for c in runs["mvd"]["checkpoints"]] == [10, 20]
    assert [c["step"] for c in runs["score"]["checkpoints"]] == [20, 40]
    with pytest.raises(pg.EstimatorError, match="budget must be 'steps' or 'evaluations'"):
        pg.compare(bernoulli_model, bernoulli_guide, data, configs={"score": pg.Score()}, budget="flops")


def test_a_page_opens_with_a_recommendation_and_aggregates_elements_with_a_csv_beside_it(tmp_path):
    # Three candidates at θ = 0 on E[3 Σ z], z ~ Bernoulli(σ(θ)) in a plate of 3: exact
    # gradient 3σ'(0) = 0.75 per element. The coupled difference and the score function
    # are unbiased, the coupled one quieter per evaluation; straight-through is biased.
    def f(theta):
        with pyro.plate("p", 3):
            z = pyro.sample("z", dist.Bernoulli(logits=theta))
        return 3 * z.sum(-1)

    theta = torch.zeros(3, requires_grad=True)
    comparison = pg.compare_estimators(
        f, theta, candidates={"score": pg.Score(), "mvd": pg.MeasureValued(), "st": pg.StraightThrough()},
        num_samples=500, reference={"theta": torch.full((3,), 0.75)})
    page = pg.report(comparison, tmp_path / "f.html", title="f").read_text()
    recommendation = page.index("Recommended: mvd")
    assert recommendation < page.index("Parameters (aggregated over elements)")
    assert "Runner-up: score" in page and "Biased (unbiased=False): st" in page
    assert "Holm" in page and "<details>" in page
    aggregated = comparison.by_parameter()
    assert list(aggregated["elements"]) == [3, 3, 3]
    assert len(pd.read_csv(tmp_path / "f-elements.csv")) == 9
    tuning = pg.tune(f, theta)
    tuned = pg.report(tuning, tmp_path / "tuned.html", title="tuned").read_text()
    assert f"Recommended: z: {tuning.config['z']!r}" in tuned
    assert (tmp_path / "tuned-measurements.csv").exists()


def test_a_config_with_a_failed_seed_is_neither_recommended_nor_ranked_by_its_survivors():
    # Config "a" reaches the target in 0.1 s in seed 0 but diverged in seed 1; "b" takes
    # 1 s in both: "b" is recommended, and "a" has no time to target.
    from pyro_grad.harness.comparison.results import Comparison
    from pyro_grad.harness.presentation.recommendation import recommend

    def run(status, seconds):
        return {"status": status, "reason": "" if status == "finished" else "non-finite ELBO", "step": 10,
                "elbo": [-5.0] * 10 if status == "finished" else [], "checkpoints": [], "seconds": seconds,
                "cpu seconds": seconds, "evaluations": 20, "posterior": {}, "notes": []}

    runs = {("a", 0): run("finished", 0.1), ("a", 1): run("failed", 0.0),
            ("b", 0): run("finished", 1.0), ("b", 1): run("finished", 1.0)}
    comparison = Comparison(runs, {"a": "Score()", "b": "DisARM()"}, unbiased={"a": True, "b": True})
    assert recommend(comparison).best == "b"
    summary = comparison.summary().set_index("config")
    assert math.isnan(summary.loc["a", "seconds to target"]) and list(summary.index) == ["b", "a"]


def test_two_runs_of_a_page_give_the_same_recommendation(tmp_path):
    # The coin page built twice from scratch (no stored fits reused): bit-identical
    # curves, different timings; the verdict is read from the curves alone.
    from pyro_grad.harness.presentation.main_job import build_page

    first = build_page("coin", str(tmp_path / "a"), num_steps=30, num_samples=20, seeds=(0, 1), checkpoints=1)
    second = build_page("coin", str(tmp_path / "b"), num_steps=30, num_samples=20, seeds=(0, 1), checkpoints=1)
    assert first["recommended"] == second["recommended"]
    verdict = [re.search(r"<h2>Recommendation</h2>.*?</ul>", (tmp_path / d / "coin.html").read_text(), re.S).group(0)
               for d in ("a", "b")]
    # The same words, but for the seconds a single winner's line reports (never ranked).
    without_seconds = [re.sub(r"[\d.e+\-]+ s\.", "(seconds).", v) for v in verdict]
    assert without_seconds[0] == without_seconds[1]
