"""The pyro-grad command line: the main job, diagnose, and one-line errors with exit code 2."""

import subprocess
import sys

import pytest

from pyro_grad.cli import gradient_table, main


def test_report_prints_every_seed_program_under_each_applicable_estimator(capsys):
    assert main(["table", "--samples", "2000"]) == 0
    out = capsys.readouterr().out
    for program in ("fixed_noise", "parameterized_noise", "two_bernoullis"):
        assert program in out
    assert "Score(loo), K=4" in out and "Reparam" in out and "MeasureValued" in out


def test_report_flags_only_estimators_that_do_not_claim_to_be_unbiased():
    table = gradient_table(num_samples=4000)
    unbiased = table[table["unbiased (claimed)"]]
    assert len(unbiased) >= 9 and not unbiased["flagged"].any()
    # Soft Gumbel-softmax (τ = 0.5) on 2·Bern(3θ) + Bern(θ) is measurably biased.
    relaxed = table[(table["program"] == "two_bernoullis") & (table["estimator"] == "GumbelSoftmax")]
    assert relaxed["flagged"].all()


def test_diagnose_prints_the_site_table_and_writes_report_and_figure(tmp_path, capsys):
    code = main([
        "diagnose", "models.seeds:two_bernoullis", "--samples", "500", "--particles", "2",
        "--estimator", "a=score:loo", "--estimator", "b=score", "--reference", "exact",
        "--out", str(tmp_path / "out"),
    ])
    assert code == 0
    out = capsys.readouterr().out
    assert "Score(baseline='loo')" in out and "## Sample sites" in out
    report = (tmp_path / "out" / "report.md").read_text()
    assert "![gradient draws](gradients.png)" in report
    assert (tmp_path / "out" / "gradients.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["diagnose", "no_such_module:f"], "cannot import module 'no_such_module'"),
        (["diagnose", "models.seeds:nope"], "has no attribute 'nope'"),
        (["diagnose", "models.seeds:two_bernoullis", "--estimator", "c=score"], "site(s) ['c']"),
        (["diagnose", "models.seeds:two_bernoullis", "--estimator", "a=bogus"], "unknown estimator 'bogus'"),
        (["diagnose", "models.seeds:two_bernoullis", "--estimator", "a=reparam"], "does not apply to site 'a'"),
        (["diagnose", "models.seeds:fixed_noise", "--arg", "phi=1"], "arguments are ['theta']"),
        (["diagnose", "models.seeds:fixed_noise", "--out", "/proc/forbidden"], "cannot write to --out"),
    ],
)
def test_mistakes_get_one_line_and_exit_code_2(argv, message, capsys):
    assert main(argv + ["--samples", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1, err


def test_the_console_script_exits_2_without_a_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "pyro_grad.cli", "diagnose", "no_such_module:f"],
        capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compare", "no_such_model"], "unknown model 'no_such_model'"),
        (["compare", "coin", "--config", "x=f:bogus"], "unknown estimator 'bogus'"),
        (["compare", "coin", "--config", "x=g:score"], "site(s) ['g']"),
        (["compare", "coin", "--config", "broken"], "expected NAME=SITE:ESTIMATOR"),
        (["compare", "coin", "--out", "/proc/forbidden"], "cannot write to --out"),
    ],
)
def test_compare_mistakes_get_one_line_and_exit_code_2(argv, message, capsys):
    assert main(argv + ["--steps", "2", "--seeds", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_compare_prints_the_summary_and_writes_the_page(tmp_path, capsys):
    code = main(["compare", "coin", "--config", "rep=reparam", "--config", "loo=f:score:loo",
                 "--steps", "20", "--seeds", "1", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "| rep" in out and "| loo" in out
    assert (tmp_path / "report.html").exists() and (tmp_path / "runs.sqlite").exists()
