"""Importing and using pyro_grad leaves the user's process as it was: no backend switch,
no reporting libraries loaded at import, no process-wide warning filters."""

import os
import subprocess
import sys
import textwrap
import warnings

import pyro_grad.harness.models as models
from pyro_grad.harness.models import seeds
from pyro_grad.harness.presentation.main_job import build_reports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script: str) -> str:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          cwd=ROOT, check=True).stdout.split()


def test_importing_pyro_grad_loads_neither_matplotlib_nor_arviz():
    assert run("""
        import sys
        import pyro_grad
        print("matplotlib" in sys.modules, "arviz" in sys.modules)
    """) == ["False", "False"]


def test_figures_and_reports_keep_the_users_backend_and_register_no_pyplot_figure(tmp_path):
    assert run(f"""
        import matplotlib
        matplotlib.use("svg")
        import matplotlib.pyplot as plt
        import pyro_grad as pg
        from pyro_grad.harness.models import coin
        result = pg.compare(coin.model, coin.guide, coin.DATA, configs={{"rep": pg.Reparam()}}, num_steps=3, seeds=(0,))
        pg.report(result, {str(tmp_path / "r.html")!r})
        print(matplotlib.get_backend(), len(plt.get_fignums()))
    """) == ["svg", "0"]


def test_the_main_job_leaves_the_warning_filters_as_it_found_them(tmp_path, monkeypatch):
    # One cheap benchmark stands in for the registry: the filters are what is measured.
    two_bernoullis = next(b for b in seeds.BENCHMARKS if b.name == "two_bernoullis")
    monkeypatch.setattr(models, "registry", lambda: {"two_bernoullis": two_bernoullis})
    before = list(warnings.filters)
    build_reports(str(tmp_path), num_steps=2, num_samples=20, seeds=(0,))
    assert warnings.filters == before
    assert (tmp_path / "two_bernoullis.html").exists()


def test_the_main_job_logs_one_line_per_model(tmp_path, monkeypatch):
    two_bernoullis = next(b for b in seeds.BENCHMARKS if b.name == "two_bernoullis")
    monkeypatch.setattr(models, "registry", lambda: {"two_bernoullis": two_bernoullis})
    lines = []
    build_reports(str(tmp_path), num_steps=2, num_samples=20, seeds=(0,), log=lines.append)
    assert len(lines) == 1 and lines[0].startswith("two_bernoullis: gradient estimators, ")
