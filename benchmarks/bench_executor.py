"""A comparison grid on 2 local worker processes against the same grid in one process.

Run: ``.venv/bin/python benchmarks/bench_executor.py [--steps N] [--model NAME]``. The grid
is 2 configs × 4 seeds of a built-in SVI model (the sigmoid belief net by default, with
Score(loo) and DisARM), computed three ways in one run, side by side:

* serially, in this process (``executor=None``);
* on a ``ProcessPoolExecutor`` of 2 spawned processes;
* on a Dask ``LocalCluster`` of 2 worker processes of one thread each
  (``Client.get_executor()``).

Each executor is started and its workers have imported pyro_grad before the clock starts
(a cluster is running before a comparison is sent to it); the start-up is printed apart.
Every run uses the caller's torch thread count, set to one worker's share of the cores
(1 on 2 cores), as ``pyro-grad compare --workers 2`` sets it; the serial grid at torch's
default thread count is printed too. The speed-up is serial seconds (at the same thread
count) ÷ parallel seconds; every run is checked bit for bit against its serial twin.
Expect about 1.8× on 2 idle cores.
"""

import argparse
import concurrent.futures as cf
import importlib
import multiprocessing
import time
import warnings

import pandas as pd
import torch

import pyro_grad as pg
from pyro_grad.harness.models import registry

SEEDS = (0, 1, 2, 3)
CONFIGS = {"sbn": {"Score(loo)": {"h": pg.Score("loo")}, "DisARM": {"h": pg.DisARM()}}}


def warm() -> None:
    """A worker's one-time start-up: importing pyro_grad (torch, Pyro, pandas)."""
    importlib.import_module("pyro_grad.harness.comparison.executor")


def warm_one(_: int) -> None:
    warm()


def grid(bench, configs, steps, executor=None):
    start = time.perf_counter()
    result = pg.compare(bench.program, bench.guide, *bench.arguments(), configs=configs, num_steps=steps,
                        seeds=SEEDS, reset=bench.reset, executor=executor)
    return result, time.perf_counter() - start


def identical(first, second) -> bool:
    fields = ("status", "elbo", "checkpoints", "evaluations", "posterior")
    return all(first.fits[key][f] == second.fits[key][f] for key in first.fits for f in fields)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--model", default="sbn", choices=sorted(CONFIGS))
    ns = parser.parse_args()
    warnings.filterwarnings("ignore")
    bench = registry()[ns.model]
    configs = CONFIGS[ns.model]
    default_threads, threads = torch.get_num_threads(), max(1, multiprocessing.cpu_count() // 2)
    _, default_seconds = grid(bench, configs, ns.steps)
    # A run's bits depend on torch's thread count, and every task runs at the caller's:
    # one worker's share of the cores, as `pyro-grad compare --workers 2` sets it.
    torch.set_num_threads(threads)
    serial, serial_seconds = grid(bench, configs, ns.steps)
    rows = [{"executor": f"serial, {default_threads} torch threads (torch's default)", "start-up (s)": 0.0,
             "grid (s)": default_seconds, "speed-up": serial_seconds / default_seconds, "bit for bit": None},
            {"executor": f"serial, {threads} torch thread(s)", "start-up (s)": 0.0, "grid (s)": serial_seconds,
             "speed-up": 1.0, "bit for bit": True}]

    start = time.perf_counter()
    with cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(time.sleep, [0.5, 0.5]))  # both processes up
        list(pool.map(warm_one, range(2)))
        started = time.perf_counter() - start
        result, seconds = grid(bench, configs, ns.steps, pool)
    rows.append({"executor": "ProcessPoolExecutor(2)", "start-up (s)": started, "grid (s)": seconds,
                 "speed-up": serial_seconds / seconds, "bit for bit": identical(result, serial)})

    import distributed

    start = time.perf_counter()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        client.run(warm)
        started = time.perf_counter() - start
        result, seconds = grid(bench, configs, ns.steps, client.get_executor())
    rows.append({"executor": "Dask LocalCluster(2 workers)", "start-up (s)": started, "grid (s)": seconds,
                 "speed-up": serial_seconds / seconds, "bit for bit": identical(result, serial)})

    print(f"{ns.model}: {len(configs)} configs × {len(SEEDS)} seeds, {ns.steps} steps per run, "
          f"{multiprocessing.cpu_count()} cores")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".2f"))


if __name__ == "__main__":
    main()
