"""SVI comparisons: compare, AutoGuide, persistence (nothing finished is lost), reports."""

import base64
import io
import json
import re
import sqlite3
import subprocess
import sys
import textwrap
import time

import matplotlib.figure
import matplotlib.image
import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_grad as pg
import pyro_grad.comparison.svi_runs as compare_module
from models import coin
from pyro_grad.reports import build_reports

CONFIGS = {"reparam": pg.Reparam(), "loo": {"f": pg.Score("loo")}}


def test_compare_trains_each_config_and_seed_and_summarizes(tmp_path):
    result = pg.compare(coin.model, coin.guide, coin.DATA, configs=CONFIGS, num_steps=150,
                        seeds=(0, 1), diagnose_every=75, out=str(tmp_path))
    summary = result.summary().set_index("config")
    assert list(summary.index) == ["reparam", "loo"]
    assert set(summary.columns) >= {"final ELBO", "± sd", "steps to target", "seconds to target", "gradient variance"}
    # The ELBO is at most the log evidence log B(16, 14) − log B(10, 10) ≈ −6.99 (6 heads, 4 tails).
    log_evidence = float(torch.lgamma(torch.tensor(16.0)) + torch.lgamma(torch.tensor(14.0)) - torch.lgamma(torch.tensor(30.0))
                         - 2 * torch.lgamma(torch.tensor(10.0)) + torch.lgamma(torch.tensor(20.0)))
    assert (summary["final ELBO"] <= log_evidence + 0.05).all()
    assert (summary["final ELBO"] > log_evidence - 1.0).all()
    assert (summary["failed runs"] == 0).all()
    assert all(len(r["checkpoints"]) == 2 for r in result.runs.values())
    assert isinstance(result.plot_elbo(), matplotlib.figure.Figure)
    assert isinstance(result.plot_variance(), matplotlib.figure.Figure)
    idata = result.to_inference_data()
    assert set(idata.posterior.data_vars) == {"f[reparam]", "f[loo]"}
    assert idata.posterior["f[loo]"].shape[:2] == (2, compare_module.POSTERIOR_DRAWS)
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


def test_a_second_call_with_the_same_out_skips_finished_runs(tmp_path, monkeypatch):
    pg.compare(coin.model, coin.guide, coin.DATA, configs=CONFIGS, num_steps=20, seeds=(0,), out=str(tmp_path))
    calls = []
    original = compare_module.run_one
    monkeypatch.setattr(compare_module, "run_one", lambda *a, **k: calls.append(a) or original(*a, **k))
    result = pg.compare(coin.model, coin.guide, coin.DATA, configs={**CONFIGS, "score": pg.Score()},
                        num_steps=20, seeds=(0,), out=str(tmp_path))
    assert len(calls) == 1  # only the new configuration ran
    assert set(label for label, _ in result.runs) == {"reparam", "loo", "score"}


def test_a_killed_process_loses_no_finished_run(tmp_path, monkeypatch):
    script = textwrap.dedent(f"""
        import pyro_grad as pg
        from models import coin
        configs = {{f"c{{i}}": pg.Score("loo") for i in range(6)}}
        pg.compare(coin.model, coin.guide, coin.DATA, configs=configs, num_steps=60, seeds=(0,), out={str(tmp_path)!r})
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL)
    database = tmp_path / "runs.sqlite"
    deadline = time.time() + 120
    finished = 0
    while time.time() < deadline and finished < 2:
        time.sleep(0.2)
        if database.exists():
            try:
                with sqlite3.connect(database) as db:
                    finished = db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            except sqlite3.OperationalError:
                pass
    process.kill()
    process.wait()
    assert 2 <= finished < 6, "the subprocess should be killed mid-way"
    with sqlite3.connect(database) as db:
        rows = db.execute("SELECT config, record FROM runs").fetchall()
    assert len(rows) >= finished
    for _, record in rows:
        assert json.loads(record)["status"] == "finished"
    calls = []
    original = compare_module.run_one
    monkeypatch.setattr(compare_module, "run_one", lambda *a, **k: calls.append(a) or original(*a, **k))
    configs = {f"c{i}": pg.Score("loo") for i in range(6)}
    result = pg.compare(coin.model, coin.guide, coin.DATA, configs=configs, num_steps=60, seeds=(0,), out=str(tmp_path))
    assert len(calls) == 6 - len(rows)
    assert len(result.runs) == 6


def test_every_run_starts_alike_when_reset_restores_module_weights():
    # The SBN's network lives outside the param store and SVI trains it in place.
    from models import sbn

    bench_args = sbn.BENCHMARK.arguments()
    configs = {"first": pg.Score("loo"), "second": pg.Score("loo")}
    result = pg.compare(sbn.model, sbn.guide, *bench_args, configs=configs, num_steps=30, seeds=(0,),
                        reset=sbn.NET.reset)
    first, second = (result.runs[(c, 0)]["elbo"] for c in configs)
    assert first == pytest.approx(second)  # same seed, same start: the same run


def test_a_run_whose_elbo_turns_non_finite_stops_and_is_recorded(tmp_path):
    calls = {"n": 0}

    def exploding_model(data):
        calls["n"] += 1
        coin.model(data)
        if calls["n"] > 30:
            pyro.factor("boom", torch.tensor(float("-inf")))

    result = pg.compare(exploding_model, coin.guide, coin.DATA, configs={"a": pg.Reparam()}, num_steps=100,
                        seeds=(0,), out=str(tmp_path))
    run = result.runs[("a", 0)]
    assert run["status"] == "failed" and "non-finite" in run["reason"]
    assert 0 < run["step"] < 100
    assert result.summary().iloc[0]["failed runs"] == 1
    assert "non-finite" in result.failures().iloc[0]["reason"]


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
    assert result.runs[("disarm", 0)]["status"] == "finished"
    assert set(result.runs[("disarm", 0)]["posterior"]) == {"loc", "scale", "switch"}


def test_autoguide_names_a_site_it_cannot_model():
    def counts(data):
        pyro.sample("n", dist.Poisson(3.0))

    with pytest.raises(pg.EstimatorError, match="site 'n' \\(Poisson\\)"):
        pg.AutoGuide(counts)(torch.zeros(1))


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


def test_the_main_job_writes_an_index_linking_a_page_per_model(tmp_path):
    index = build_reports(str(tmp_path), num_steps=10, num_samples=100, seeds=(0,))
    page = index.read_text()
    from models import registry

    for name in registry():
        assert f'href="{name}.html"' in page
        images = decoded_images((tmp_path / f"{name}.html").read_text())
        assert images, name
