"""compare on an executor: a real Dask cluster (``distributed.LocalCluster``, two worker
processes) and a process pool. Each run is one task; results are bit for bit the serial
runs'; only the caller writes the store; a run whose worker dies is retried once, then
recorded failed; whatever cannot travel is named."""

import concurrent.futures as cf
import logging
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import dask
import psutil
import pytest
import torch

import pyro_grad as pg
from pyro_grad.cli import main
from pyro_grad.harness.models import coin

distributed = pytest.importorskip("distributed")

# Every test here runs on one pytest-xdist worker (pyproject's --dist loadgroup), so
# that one Dask cluster serves them all instead of one per xdist worker.
pytestmark = pytest.mark.xdist_group("executor")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"reparam": pg.Reparam(), "loo": {"f": pg.Score("loo")}}
SETTINGS = dict(num_steps=20, diagnose_every=10, checkpoint_samples=10)
#: A guide run with this seed kills the worker process running it, every time.
KILLING_SEED = 13
#: A guide run with this seed kills its worker once: while the file named by the
#: environment variable PYRO_GRAD_TEST_DIED is absent (the dying process creates it).
KILLING_ONCE_SEED = 14


def guide_that_kills_its_worker(data):
    """coin's guide, except in a worker process (a child of another Python process, never
    the test's own) running one of the killing seeds."""
    if multiprocessing.parent_process() is not None:
        seed = torch.initial_seed()  # pyro.set_rng_seed(seed) at the start of every run
        marker = os.environ.get("PYRO_GRAD_TEST_DIED", "")
        if seed == KILLING_SEED or (seed == KILLING_ONCE_SEED and marker and not os.path.exists(marker)):
            if seed == KILLING_ONCE_SEED:
                open(marker, "w").close()
            os._exit(1)
    coin.guide(data)


def serial(configs=CONFIGS, seeds=(0, 1), guide=coin.guide, **settings):
    return pg.compare(coin.model, guide, coin.DATA, configs=configs, seeds=seeds, **{**SETTINGS, **settings})


def same_numbers(first: dict, second: dict) -> None:
    """Everything each run computes, bit for bit; only its timings may differ."""
    assert first.keys() == second.keys()
    for key in first:
        a, b = first[key], second[key]
        for field in ("status", "reason", "step", "elbo", "checkpoints", "evaluations", "posterior", "notes"):
            assert a[field] == b[field], (key, field)


def rows(out, table: str) -> int:
    """Rows of a table of the store at ``out``. The file appears (sqlite's connect) before
    the transaction that creates its tables commits: a store still being created, which
    another process may be watching, has no rows yet."""
    with sqlite3.connect(out / "fits.sqlite") as db:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone():
            return 0
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def stored_fits(out) -> int:
    return rows(out, "fits")


def claims(out) -> int:
    return rows(out, "claims")


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes of one thread each. Dask retries a task whose worker died
    (allowed-failures, 3 by default) before it reports KilledWorker; 0 here, so that each
    death reaches compare. Each worker holds one task at a time (worker-saturation 1), so
    that a death is charged to the task it ran, not to one queued behind it."""
    with dask.config.set({"distributed.scheduler.allowed-failures": 0, "distributed.scheduler.worker-saturation": 1.0}):
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as local:
            with distributed.Client(local) as client:
                yield client


def test_runs_on_a_dask_cluster_are_bit_for_bit_the_serial_runs_and_only_the_caller_stores_them(
        cluster, tmp_path, caplog):
    # sbn's model and guide read the module's network NET, and its reset is NET.reset.
    # sbn's module travels by value, so each task's reset re-initializes the network its
    # model trains: 4 runs on 2 workers (2 each) equal the serial runs bit for bit.
    from pyro_grad.harness.models import registry

    client = cluster
    bench = registry()["sbn"]
    settings = dict(configs={"loo": {"h": pg.Score("loo")}}, num_steps=5, seeds=(0, 1, 2, 3), reset=bench.reset,
                    diagnose_every=5, checkpoint_samples=10)
    expected = pg.compare(bench.program, bench.guide, *bench.arguments(), **settings)
    with caplog.at_level(logging.INFO, logger="pyro_grad.harness.comparison"):
        result = pg.compare(bench.program, bench.guide, *bench.arguments(), executor=client.get_executor(),
                            out=str(tmp_path), **settings)
    same_numbers(result.fits, expected.fits)
    assert set(result.origin.values()) == {"new"} and stored_fits(tmp_path) == 4 and claims(tmp_path) == 0
    # One log line per run as it is stored, for logs where no progress bar shows.
    lines = [r.getMessage() for r in caplog.records if r.name == "pyro_grad.harness.comparison"]
    assert len(lines) == 4 and lines[-1].startswith("fit 4 of 4: config 'loo', seed ")
    # A second call reuses every stored run and sends no task.
    again = pg.compare(bench.program, bench.guide, *bench.arguments(), executor=client.get_executor(),
                       out=str(tmp_path), **settings)
    assert set(again.origin.values()) == {"reused"}
    same_numbers(again.fits, expected.fits)


def test_a_task_runs_under_the_callers_thread_count_dtype_and_validation(cluster):
    from pyro_grad.harness.comparison.executor import ProcessSettings

    here = ProcessSettings.here()
    other = ProcessSettings(here.threads + 1, torch.float64, not here.validation)
    with other.applied():
        assert ProcessSettings.here() == other and torch.zeros(1).dtype == torch.float64
    assert ProcessSettings.here() == here
    # A caller in float64: the workers (float32 by default) compute its runs in float64 too,
    # so the ELBOs agree bit for bit with the serial float64 runs, not only to float32.
    client = cluster
    configs = {"reparam": pg.Reparam()}
    torch.set_default_dtype(torch.float64)
    try:
        data = coin.DATA.double()
        expected = pg.compare(coin.model, coin.guide, data, configs=configs, seeds=(0,), **SETTINGS)
        result = pg.compare(coin.model, coin.guide, data, configs=configs, seeds=(0,),
                            executor=client.get_executor(), **SETTINGS)
    finally:
        torch.set_default_dtype(torch.float32)
    same_numbers(result.fits, expected.fits)


def test_a_process_pool_gives_the_serial_runs_and_a_dying_process_fails_only_its_own_run(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_GRAD_TEST_DIED", str(tmp_path / "died"))  # before the pool's process starts
    configs, seeds = {"reparam": pg.Reparam()}, (KILLING_ONCE_SEED, KILLING_SEED)
    with cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        result = serial(configs, seeds, guide=guide_that_kills_its_worker, executor=pool, out=str(tmp_path))
        # The caller's pool stays broken: the next call says so rather than retrying every run.
        with pytest.raises(pg.EstimatorError, match="the executor is broken .*pass a new one"):
            serial(configs, (5,), executor=pool, out=str(tmp_path))
    # The pool broke when its process died. Each run it lost was retried once, alone in a
    # pool of its own: seed 14 (which kills its process once) finished, bit for bit the
    # serial run, and seed 13 failed after its second death.
    assert (tmp_path / "died").exists()
    killed = result.fits[("reparam", KILLING_SEED)]
    assert killed["status"] == "failed" and killed["reason"].startswith("its worker died twice (BrokenProcessPool")
    retried = {("reparam", KILLING_ONCE_SEED): result.fits[("reparam", KILLING_ONCE_SEED)]}
    same_numbers(retried, serial(configs, (KILLING_ONCE_SEED,)).fits)
    assert stored_fits(tmp_path) == 2 and claims(tmp_path) == 0


def test_a_killed_caller_keeps_every_finished_run_and_a_rerun_resumes(tmp_path):
    # The caller runs `pyro-grad compare --workers 1` (4 runs on one local process) and is
    # killed (SIGKILL: no cleanup) once its first run is stored.
    command = [sys.executable, "-m", "pyro_grad.cli", "compare", "coin", "--config", "loo=f=score:loo",
               "--config", "half=f=score:0.5", "--seeds", "2", "--steps", "100", "--workers", "1",
               "--out", str(tmp_path)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        if (tmp_path / "fits.sqlite").exists() and stored_fits(tmp_path) >= 1:
            break
        time.sleep(0.02)
    workers = psutil.Process(process.pid).children(recursive=True)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    kept = stored_fits(tmp_path)
    assert 1 <= kept < 4, "the caller finished before it was killed; give it more steps"
    assert claims(tmp_path) >= 1  # the dead caller's, expired: its pid is gone
    # Its worker process ends with it (a process pool's would otherwise wait forever).
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert workers and not alive
    # The same comparison (the CLI's settings) in this process: the kept runs are reused
    # (stored under the serial runs' digests), the others computed, and nothing is left claimed.
    rerun = pg.compare(coin.model, coin.guide, coin.DATA, configs={"loo": {"f": pg.Score("loo")},
                                                                   "half": {"f": pg.Score(0.5)}},
                       seeds=(0, 1), num_steps=100, num_particles=4, diagnose_every=50, out=str(tmp_path))
    assert sorted(rerun.origin.values()).count("reused") == kept
    assert all(run["status"] == "finished" for run in rerun.fits.values())
    assert stored_fits(tmp_path) == 4 and claims(tmp_path) == 0


def test_what_cannot_travel_is_named_before_anything_is_sent(cluster, tmp_path):
    client = cluster
    lock = threading.Lock()

    def model_holding_a_lock(data):
        with lock:
            coin.model(data)

    with pytest.raises(pg.EstimatorError, match=r"the model cannot be pickled \(TypeError: cannot pickle "
                                                r"'_thread.lock' object\)"):
        pg.compare(model_holding_a_lock, coin.guide, coin.DATA, configs=CONFIGS, seeds=(0,),
                   executor=client.get_executor(), out=str(tmp_path), **SETTINGS)
    assert stored_fits(tmp_path) == 0 and claims(tmp_path) == 0


def test_a_module_only_this_process_can_import_is_named_by_the_worker(cluster, tmp_path, monkeypatch):
    # The model's, guide's and reset's modules travel by value; optim's is imported by the worker.
    client = cluster
    (tmp_path / "only_here.py").write_text("import pyro\n\ndef adam():\n    return pyro.optim.Adam({'lr': 0.01})\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # after the workers started: they cannot import it
    import only_here

    with pytest.raises(pg.EstimatorError, match="a worker cannot load the fits .*No module named 'only_here'"):
        pg.compare(coin.model, coin.guide, coin.DATA, configs=CONFIGS, seeds=(0,), optim=only_here.adam,
                   executor=client.get_executor(), out=str(tmp_path / "out"), **SETTINGS)
    assert stored_fits(tmp_path / "out") == 0 and claims(tmp_path / "out") == 0


@pytest.mark.parametrize("executor", ["dask", 2, cf.ProcessPoolExecutor])
def test_an_executor_that_is_not_one_is_refused(executor):
    with pytest.raises(pg.EstimatorError, match="executor must be None or a concurrent.futures.Executor"):
        serial(executor=executor)


def test_the_cli_runs_on_a_dask_scheduler_and_takes_one_kind_of_worker(cluster, tmp_path, capsys):
    client = cluster
    # --workers runs in test_a_killed_caller_keeps_every_finished_run_and_a_rerun_resumes.
    common = ["compare", "coin", "--config", "rep=reparam", "--steps", "10", "--seeds", "2"]
    assert main(common + ["--scheduler", client.scheduler.address, "--out", str(tmp_path / "dask")]) == 0
    assert stored_fits(tmp_path / "dask") == 2
    assert main(common + ["--workers", "2", "--scheduler", client.scheduler.address]) == 2
    assert "--workers and --scheduler" in capsys.readouterr().err


def test_a_dask_worker_that_dies_loses_only_its_run_which_is_retried_once(cluster, tmp_path):
    # Last in the file: the workers it kills restart, and import pyro_grad again. Dask
    # fails every task a dead worker held (allowed-failures 0 here), so seed 0 may be
    # lost beside seed 13 once; its retry runs alone and finishes.
    client = cluster
    configs = {"reparam": pg.Reparam()}
    result = serial(configs, (0, KILLING_SEED), guide=guide_that_kills_its_worker, executor=client.get_executor(),
                    out=str(tmp_path))
    runs = result.fits
    assert runs[("reparam", 0)]["status"] == "finished", runs[("reparam", 0)]["reason"]
    same_numbers({("reparam", 0): runs[("reparam", 0)]}, serial(configs, (0,)).fits)
    killed = runs[("reparam", KILLING_SEED)]
    assert killed["status"] == "failed" and killed["reason"].startswith("its worker died twice (KilledWorker")
    assert stored_fits(tmp_path) == 2 and claims(tmp_path) == 0
    # A run lost with its worker is computed again by the next call, never reused.
    again = serial(configs, (0, KILLING_SEED), guide=guide_that_kills_its_worker, executor=client.get_executor(),
                   out=str(tmp_path))
    assert again.origin == {("reparam", 0): "reused", ("reparam", KILLING_SEED): "recomputed"}
