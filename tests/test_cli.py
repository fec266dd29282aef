"""The pyro-grad command line: the main job, diagnose, and one-line errors with exit code 2."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_grad.cli import gradient_table, main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The line logged per stored fit when stderr is not a terminal (as under pytest).
RUN_LOG = re.compile(r"^pyro-grad: fit \d+ of \d+: config ")


def messages(stderr: str) -> str:
    """stderr without the per-fit log lines: what the command says about itself."""
    return "\n".join(line for line in stderr.strip().splitlines() if not RUN_LOG.match(line))


def test_report_prints_every_seed_program_under_each_applicable_estimator(capsys):
    assert main(["table", "--samples", "200"]) == 0  # what is listed, not how precisely
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
        "diagnose", "pyro_grad.harness.models.seeds:two_bernoullis", "--samples", "500", "--particles", "2",
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
        (["diagnose", "pyro_grad.harness.models.seeds:nope"], "has no attribute 'nope'"),
        (["diagnose", "pyro_grad.harness.models.seeds:two_bernoullis", "--estimator", "c=score"], "site(s) ['c']"),
        (["diagnose", "pyro_grad.harness.models.seeds:two_bernoullis", "--estimator", "a=bogus"], "unknown estimator 'bogus'"),
        (["diagnose", "pyro_grad.harness.models.seeds:two_bernoullis", "--estimator", "a=reparam"], "does not apply to site 'a'"),
        (["diagnose", "pyro_grad.harness.models.seeds:fixed_noise", "--arg", "phi=1"], "arguments are ['theta']"),
        (["diagnose", "pyro_grad.harness.models.seeds:fixed_noise", "--out", "/proc/forbidden"], "cannot write to --out"),
    ],
)
def test_mistakes_get_one_line_and_exit_code_2(argv, message, capsys):
    assert main(argv + ["--samples", "10"]) == 2
    err = messages(capsys.readouterr().err)
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
        (["compare", "no_such_model"], "unknown program 'no_such_model'"),
        (["compare", "coin", "--config", "x=nosuchest"], "unknown estimator 'nosuchest'"),
        (["compare", "coin", "--config", "x=gumbelsoftmax:abc"], "temperature must be a positive number"),
        (["compare", "coin", "--config", "x=enumerate:3"], "Enumerate takes no argument"),
        (["compare", "coin", "--config", "x=reparam:3"], "jumps must be one of"),
        (["compare", "pyro_grad.harness.models.seeds:two_bernoullis"], "has no observed site"),
        (["compare", "coin", "--config", "x=f=bogus"], "unknown estimator 'bogus'"),
        (["compare", "coin", "--config", "x=g=score"], "site(s) ['g']"),
        (["compare", "coin", "--config", "broken"], "expected NAME=SITE=ESTIMATOR"),
        (["compare", "coin", "--out", "/proc/forbidden"], "cannot write to --out"),
    ],
)
def test_compare_mistakes_get_one_line_and_exit_code_2(argv, message, capsys, tmp_path):
    out = [] if "--out" in argv else ["--out", str(tmp_path)]
    assert main(argv + ["--steps", "2", "--seeds", "1"] + out) == 2
    err = messages(capsys.readouterr().err)
    assert message in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compare", "coin", "--seeds", "0"], "argument --seeds: must be at least 1, got 0"),
        (["compare", "coin", "--steps", "x"], "argument --steps: 'x' is not an integer"),
        (["report", "--steps", "0"], "argument --steps: must be at least 1, got 0"),
        (["diagnose", "pyro_grad.harness.models.seeds:two_bernoullis", "--particles", "0"], "argument --particles: must be at least 1"),
        (["diagnose", "pyro_grad.harness.models.seeds:two_bernoullis", "--arg", "theta=0.9", "--samples", "10"],
         "the program raised ValueError: Expected parameter probs"),
        (["diagnose", "pyro_grad.harness.models.seeds:two_bernoullis", "--estimator", "gumbelsoftmax:abc"],
         "temperature must be a positive number"),
        (["diagnose", "pyro_grad.harness.models.seeds:two_bernoullis", "--estimator", "enumerate:3"], "Enumerate takes no argument"),
        (["diagnose", "coin", "--guide", "pyro_grad.harness.models.coin:DATA"], "is not a function"),
        (["report", "--out", "/proc/forbidden"], "cannot write to --out"),
        (["diagnose", "coin", "--guide", "pyro_grad.harness.models.coin:guide", "--reference", "exact"], "has no exact reference"),
    ],
)
def test_bad_values_get_one_line_and_exit_code_2(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own checks exit from parse_args
        code = exit.code
    assert code == 2
    err = messages(capsys.readouterr().err)
    assert message in err and len(err.splitlines()) == 1, err


def coin_run(out, *extra):
    return ["compare", "coin", "--config", "rep=reparam", "--steps", "5", "--seeds", "1", "--out", str(out), *extra]


def test_a_corrupt_store_is_named_with_what_to_do(tmp_path, capsys):
    (tmp_path / "fits.sqlite").write_bytes(b"\x13\x37 not a database" * 200)
    assert main(coin_run(tmp_path)) == 2
    err = messages(capsys.readouterr().err)
    assert f"{tmp_path / 'fits.sqlite'} cannot be used (file is not a database)" in err and "move the file" in err
    assert len(err.splitlines()) == 1


def test_a_truncated_row_is_named_with_what_to_do(tmp_path, capsys):
    import sqlite3

    assert main(coin_run(tmp_path)) == 0
    with sqlite3.connect(tmp_path / "fits.sqlite") as db:
        db.execute("UPDATE fits SET record = substr(record, 1, 30)")
    capsys.readouterr()
    assert main(coin_run(tmp_path)) == 2
    err = messages(capsys.readouterr().err)
    assert "the stored fit of config 'rep', seed 0 is corrupt" in err and "delete that row" in err
    assert len(err.splitlines()) == 1


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to simulate a full disk")
def test_a_full_disk_while_writing_the_report_is_named_and_the_runs_are_kept(tmp_path, capsys):
    # Every report figure file is /dev/full, where each write fails with ENOSPC.
    for i in range(6):
        (tmp_path / f"report-figure-{i}.png").symlink_to("/dev/full")
    assert main(coin_run(tmp_path)) == 2
    err = messages(capsys.readouterr().err)
    assert "cannot write the report file" in err and "report-figure-" in err and "No space left" in err
    assert len(err.splitlines()) == 1
    import sqlite3

    with sqlite3.connect(tmp_path / "fits.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM fits").fetchone()[0] == 1


def test_ctrl_c_exits_130_in_one_line_and_keeps_the_finished_runs(tmp_path):
    # The process interrupts itself (SIGINT, as Ctrl-C) right after its first run is stored.
    # A process started with SIGINT ignored (nohup, `&` in a script) passes the ignore on
    # to its children, and Python then installs no KeyboardInterrupt: the child restores
    # Python's own handler first, so the test does not depend on how its runner started.
    script = textwrap.dedent(f"""
        import os, signal, sys
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from pyro_grad.harness.comparison import store
        put = store.FitStore.put
        def put_then_interrupt(self, *args):
            put(self, *args)
            os.kill(os.getpid(), signal.SIGINT)
        store.FitStore.put = put_then_interrupt
        from pyro_grad.cli import main
        sys.exit(main(["compare", "coin", "--config", "a=reparam", "--config", "b=score:loo",
                       "--steps", "5", "--seeds", "1", "--out", {str(tmp_path)!r}]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 130
    err = [line for line in messages(result.stderr).splitlines() if "INFO" not in line and "WARNING" not in line]
    assert err == [f"pyro-grad: interrupted; finished fits are kept in {tmp_path / 'fits.sqlite'}"], result.stderr
    import sqlite3

    with sqlite3.connect(tmp_path / "fits.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM fits").fetchone()[0] == 1
        assert db.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0


def test_diagnose_uses_a_registry_benchmarks_guide_or_the_one_given(capsys):
    assert main(["diagnose", "coin", "--samples", "50"]) == 0
    out = capsys.readouterr().out
    assert "alpha_q" in out and "beta_q" in out  # the ELBO gradient of the benchmark's guide
    assert main(["diagnose", "pyro_grad.harness.models.coin:model", "--guide", "pyro_grad.harness.models.coin:guide", "--arg", "data=1",
                 "--samples", "50"]) == 2  # data is a tensor argument, not a number
    capsys.readouterr()
    assert main(["diagnose", "test_cli:scalar_model", "--guide", "test_cli:scalar_guide", "--samples", "50"]) == 0
    assert "q_loc" in capsys.readouterr().out


def test_the_console_script_imports_a_users_module_from_the_current_directory(tmp_path):
    # As `python -m` does: the console script's own sys.path[0] is its bin directory.
    (tmp_path / "user_program.py").write_text(textwrap.dedent("""
        import pyro, pyro.distributions as dist, torch
        def model():
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(0.5))
        def guide():
            pyro.sample("z", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))
    """))
    script = Path(sys.executable).parent / "pyro-grad"
    result = subprocess.run([str(script), "diagnose", "user_program:model", "--guide", "user_program:guide",
                             "--samples", "20"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Reparam()" in result.stdout


def scalar_model(x=1.0):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    pyro.sample("x", dist.Normal(z, 1.0), obs=torch.as_tensor(x).detach())


def scalar_guide(x=1.0):
    pyro.sample("z", dist.Normal(pyro.param("q_loc", torch.tensor(0.0)), 1.0))


def test_help_shows_defaults_and_estimator_names_and_the_version(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # argparse wraps at the terminal width
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = capsys.readouterr().out
    assert "(default: 200)" in out and "(default: compare-out)" in out
    assert "reparam, score, enumerate" in out and "disarm" in out
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == "pyro-grad 0.1.0"


def test_compare_prints_the_summary_and_writes_the_page(tmp_path, capsys):
    code = main(["compare", "coin", "--config", "rep=reparam", "--config", "loo=f=score:loo",
                 "--steps", "20", "--seeds", "1", "--out", str(tmp_path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "| rep" in out and "| loo" in out
    assert (tmp_path / "report.html").exists() and (tmp_path / "fits.sqlite").exists()


def test_report_passes_steps_and_samples_to_every_page_and_leaves_them_to_the_defaults_otherwise(monkeypatch, tmp_path):
    import pyro_grad.harness.presentation.main_job as main_job

    asked = []
    monkeypatch.setattr(main_job, "build_reports", lambda out, **kw: asked.append(kw) or tmp_path / "index.html")
    assert main(["report", "--steps", "300", "--samples", "7", "--out", str(tmp_path)]) == 0
    assert main(["report", "--out", str(tmp_path)]) == 0
    assert (asked[0]["num_steps"], asked[0]["num_samples"]) == (300, 7)
    assert (asked[1]["num_steps"], asked[1]["num_samples"]) == (None, None)


def test_report_builds_only_the_models_named(tmp_path, capsys):
    # `pyro-grad report --models coin`: one page, linked from the index with its recommendation.
    # --workers 2: the page is built in a process of its own (1 builds it in this one).
    assert main(["report", "--models", "coin", "--steps", "2", "--samples", "10", "--workers", "2",
                 "--out", str(tmp_path)]) == 0
    index = (tmp_path / "index.html").read_text()
    assert 'href="coin.html"' in index and 'href="sbn.html"' not in index and "<th>recommended</th>" in index
    # The model's log line; its runs' lines stay in the process that built the page.
    assert capsys.readouterr().err.startswith("coin: SVI")
    assert main(["report", "--models", "nope", "--out", str(tmp_path)]) == 2
    err = messages(capsys.readouterr().err)
    assert "no built-in model named ['nope']" in err and len(err.splitlines()) == 1, err


def test_diagnose_takes_the_one_run_engine_as_an_estimators_argument(capsys):
    # measurevalued:one-run and disarm:one-run name MeasureValued(engine="one-run") and
    # DisARM(engine="one-run") at every site (two_bernoullis: exact ∂θ E[f] = 7).
    for name, shown in (("measurevalued:one-run", "MeasureValued(engine='one-run')"),
                        ("disarm:one-run", "DisARM(engine='one-run')")):
        assert main(["diagnose", "pyro_grad.harness.models.seeds:two_bernoullis", "--samples", "400",
                     "--estimator", name, "--reference", "exact"]) == 0
        out = capsys.readouterr().out
        assert shown in out
    assert main(["diagnose", "pyro_grad.harness.models.seeds:two_bernoullis", "--samples", "10",
                 "--estimator", "disarm:once"]) == 2
    assert "engine must be one of ['rerun', 'one-run']" in messages(capsys.readouterr().err)
