"""The one-run engine against the re-run engine and the score function, on StochasticAD.jl's
random walk: cost per gradient draw, one sample's spread, and work-normalized variance.

The walk (Arya et al., NeurIPS 2022, and StochasticAD.jl's docs): X_0 = 0, n steps of ±1,
+1 with probability exp(−X/p) (so X ≥ 0), f = X²; it and its exact ∂p E[f], by the
dynamic program over X, are ``state_walk`` and ``state_walk_derivative`` in
``pyro_grad.harness.models.discrete``. For each n and estimator this prints, side by side
in one run (one thread):

* the median seconds per call of ``pg.expectation`` + backward at ``--particles``
  particles (``--reps`` calls, interleaved across the estimators so that drift falls on
  all alike; the re-run engine's, a quarter as many);
* one sample's standard deviation, from ``--samples`` independent gradient samples
  (``pg.diagnose``; the re-run engine's from ``--rerun-samples``; ``Score("loo")``'s
  particles share a baseline, so its samples are means of ``--particles``, × √particles;
  the hand-written rows: 100,000 draws);
* the mean's distance from the exact derivative, in standard errors;
* work-normalized variance (variance × seconds per call), relative to ``Score("loo")``'s,
  and last, per n, the engine with the lowest.

Estimators: ``Score("loo")``, ``MeasureValued()`` (the re-run engine: one re-run per step)
and ``MeasureValued(engine="one-run")`` (the alternative paths carried beside the run,
perturbations pruned lazily: 16 paths per particle by default, also one path, and the
one-sided form), beside hand-written vectorized torch versions
(``state_walk_pruned_by_hand``): the one-run engine's estimator chosen at once (what it
does where the path cannot be carried) and lazily with one path and with 16 (the limit of
its speed, and the variance to match), the one-sided form lazily, and StochasticAD.jl's
own weights, lazily with one path (their triples' variance).

Last, seconds per call on the agent-based SIR at ``--sir-agents`` agents (its cost
should grow linearly in the agents: the sites are vectorized over them).

Run: ``.venv/bin/python benchmarks/bench_one_run.py [--n 25,50,100,200,400] [--p-per-n 2]
[--particles 200] [--reps 9] [--samples 2000] [--rerun-samples 400] [--rerun-max-n 400]
[--only NAMES] [--sir-agents 1000,3000,10000]`` (the re-run engine's cost grows as n²:
above ``--rerun-max-n`` it is left out). StochasticAD.jl's figure for one sample's
standard deviation at n = 100, p = 200 is about 6.5 (their docs).
"""

import argparse
import math
import time
from typing import Callable, Dict, Tuple

import pyro
import torch

import pyro_grad as pg
from bench_core import interleaved_medians  # this script's directory is on the path
from pyro_grad.harness.models.discrete import state_walk as walk
from pyro_grad.harness.models.discrete import state_walk_derivative as exact_derivative
from pyro_grad.harness.models.discrete import state_walk_pruned_by_hand
from pyro_grad.harness.models import sir

STOCHASTIC_AD_STD = 6.5  # one sample's standard deviation at n = 100, p = 200 (their docs)


ESTIMATORS: Dict[str, Callable[[], pg.Estimator]] = {
    "Score(loo)": lambda: pg.Score("loo"),
    "MeasureValued (re-run)": lambda: pg.MeasureValued(),
    "MeasureValued (one-run)": lambda: pg.MeasureValued(engine="one-run"),
    "MeasureValued (one-run, one path)": lambda: pg.MeasureValued(engine="one-run", paths=1),
    "MeasureValued (one-run, one-sided)": lambda: pg.MeasureValued(engine="one-run", one_sided=True),
}


#: Hand-written vectorized torch: name → (lazy pruning or not, the flips' weights, paths).
BY_HAND = {"by hand: one-run's, at once": (False, "engine", 1), "by hand: one-run's, lazy": (True, "engine", 1),
           "by hand: one-run's, lazy, 16 paths": (True, "engine", 16),
           "by hand: one-sided, lazy, 16 paths": (True, "one-sided", 16),
           "by hand: StochasticAD's": (True, "stochastic-ad", 1)}


def spread(name: str, n: int, p: float, particles: int, samples: int) -> Tuple[float, float, float]:
    """One sample's standard deviation of ``name``'s gradient, its mean's distance from the
    exact derivative in standard errors, and the samples' count. The engines'
    particles are independent, so each is a sample (``pg.diagnose``, ``samples``
    particles in one vectorized pass); ``Score("loo")``'s share a baseline, so its
    samples are ``samples // 10`` means of ``particles``, × √particles. The hand-written
    rows: 100,000 draws."""
    exact = exact_derivative(p, n)
    if name in BY_HAND:
        draws = state_walk_pruned_by_hand(p, n, 100_000, *BY_HAND[name])
        return float(draws.std()), float((draws.mean() - exact) / (draws.std() / math.sqrt(len(draws)))), len(draws)
    independent = name != "Score(loo)"
    count, per = (samples, 1) if independent else (max(2, samples // 10), particles)
    report = pg.diagnose(lambda q: walk(q, n), torch.tensor(float(p), requires_grad=True),
                         estimators=ESTIMATORS[name](), num_samples=count, num_particles=per, sites=False, seed=n)
    draws = report.samples["q"]
    z = float((draws.mean() - exact) / (draws.std() / math.sqrt(count)))
    return float(draws.std()) * math.sqrt(per), z, count


def one_call(name: str, n: int, p: float, particles: int) -> Callable[[], None]:
    """One call of ``pg.expectation`` + backward at ``particles`` particles (the
    hand-written rows: their ``particles`` draws)."""
    if name in BY_HAND:
        return lambda: state_walk_pruned_by_hand(p, n, particles, *BY_HAND[name])
    program = pg.estimators(lambda q: walk(q, n), default=ESTIMATORS[name]())

    def call() -> None:
        pg.expectation(program, torch.tensor(float(p), requires_grad=True), num_particles=particles).backward()

    return call


def sir_seconds(name: str, agents: int, particles: int, reps: int) -> float:
    """Seconds per call of ``pg.expectation`` + backward on the agent-based SIR (10 days,
    1% infected at first, the gradient in β and γ) with ``agents`` agents."""
    program = pg.estimators(sir.weighted_infections, default=ESTIMATORS[name]())
    start = time.perf_counter()
    for rep in range(reps):
        pyro.set_rng_seed(rep)
        beta, gamma = torch.tensor(0.6, requires_grad=True), torch.tensor(0.2, requires_grad=True)
        pg.expectation(program, beta, gamma, agents, max(1, agents // 100), 10, num_particles=particles).backward()
    return (time.perf_counter() - start) / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="25,50,100,200,400")
    parser.add_argument("--p-per-n", type=float, default=2.0, help="p = this × n (StochasticAD's setup: 2)")
    parser.add_argument("--particles", type=int, default=200)
    parser.add_argument("--reps", type=int, default=9, help="calls timed per estimator (the median, interleaved)")
    parser.add_argument("--samples", type=int, default=2000, help="gradient samples per estimator")
    parser.add_argument("--rerun-samples", type=int, default=400, help="the re-run engine's samples")
    parser.add_argument("--rerun-max-n", type=int, default=400)
    parser.add_argument("--only", default="", help="comma-separated estimator names")
    parser.add_argument("--sir-agents", default="1000,3000,10000",
                        help="agents of the SIR cost table ('' to skip it)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = [e for e in [*ESTIMATORS, *BY_HAND] if not args.only or e in args.only.split(",")]
    print(f"walk: n steps, p = {args.p_per_n:g}·n, f = X²; median seconds per call of {args.particles} particles "
          f"({args.reps} calls, interleaved; re-run: {max(1, args.reps // 4)}); one sample's std from {args.samples} "
          f"samples (re-run: {args.rerun_samples})")
    print(f"{'n':>4s} {'estimator':36s} {'s/call':>8s} {'sample std':>11s} {'mean−exact (SE)':>16s} "
          f"{'work-norm. var ÷ Score(loo)':>28s}")
    winners = {}
    for n in [int(v) for v in args.n.split(",") if v]:
        p = args.p_per_n * n
        exact = exact_derivative(p, n)
        rows, calls = {}, {}
        for name in names:
            rerun = "re-run" in name
            if rerun and n > args.rerun_max_n:
                continue
            std, z, _ = spread(name, n, p, args.particles, args.rerun_samples if rerun else args.samples)
            rows[name] = (std, z)
            calls[name] = one_call(name, n, p, args.particles)
        for call in calls.values():  # a first call outside the timing (caches, lazy imports)
            call()
        slow = [name for name in calls if "re-run" in name]
        seconds = interleaved_medians({name: calls[name] for name in calls if name not in slow}, args.reps)
        seconds.update(interleaved_medians({name: calls[name] for name in slow}, max(1, args.reps // 4)))
        rows = {name: (seconds[name], std, z, std**2 * seconds[name]) for name, (std, z) in rows.items()}
        base = rows.get("Score(loo)", (None, None, None, None))[3]
        for name, (seconds, std, z, work) in rows.items():
            relative = f"{work / base:.3g}" if base else "—"
            print(f"{n:4d} {name:36s} {seconds:8.3f} {std:11.2f} {z:16.1f} {relative:>28s}")
        engines = {name: row[3] for name, row in rows.items() if name in ESTIMATORS}
        if engines:
            winners[n] = min(engines, key=engines.get)
        if n == 100 and args.p_per_n == 2:
            print(f"     StochasticAD.jl's stochastic triples (their docs): sample std ≈ {STOCHASTIC_AD_STD}")
        print(f"     exact ∂p E[f] = {exact:.4f}")
    if winners:
        print("lowest work-normalized variance: " + ", ".join(f"n={n}: {name}" for n, name in winners.items()))
    if args.sir_agents:
        agents = [int(v) for v in args.sir_agents.split(",")]
        print(f"\nagent-based SIR, 10 days, {args.particles // 10} particles: seconds per call (÷ agents × 1,000)")
        for name in names:
            if name in BY_HAND:
                continue
            cells = []
            for count in agents:
                seconds = sir_seconds(name, count, args.particles // 10, 3)
                cells.append(f"{count}: {seconds:.3f} s ({seconds / count * 1000:.4f})")
            print(f"     {name:28s} " + "   ".join(cells))


if __name__ == "__main__":
    main()
