"""Core speed: pg.ELBO against Pyro's ELBOs, and vectorized against looped expectation.

Run: ``.venv/bin/python benchmarks/bench_core.py``. Everything is timed side by side in
one run, interleaved over repeats, and reported as ratios: the machine is shared, so
absolute times drift but ratios hold. Targets: pg.ELBO no slower than TraceGraph_ELBO;
``pg.expectation(..., num_particles=10_000)`` at least 100× faster than a Python loop of
10,000 single-particle calls. Last, ``pg.expectation``'s fixed per-call overhead: one
call (value and backward) beside the hand-written vectorized torch of the same
estimator, at 2 particles (nearly all overhead) and at 100 and 10,000. And ``compile=``:
the same calls uncompiled, recorded (``{"backend": "trace"}``) and compiled (``True``)
beside the hand-written torch at 100 particles, and pg.ELBO's SVI step on the coin beside
Trace_ELBO, with the first calls' times and how many calls a recording takes to pay for
itself (``--only compile`` runs this part alone).
"""

import statistics
import time
import warnings
from typing import Callable, Dict, List

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO

import pyro_grad as pg
from pyro_grad.harness.models import coin
from pyro_grad.harness.models.seeds import parameterized_noise, two_bernoullis

warnings.filterwarnings("ignore")
coin_model, DATA = coin.model, coin.DATA


def coin_guide(data, reparameterized=True, tracegraph_baseline=False):
    """models/coin.py's guide, with the switches Pyro's own ELBOs need for a score-function run."""
    alpha = pyro.param("alpha_q", torch.tensor(coin.ALPHA_Q), constraint=constraints.positive)
    beta = pyro.param("beta_q", torch.tensor(coin.BETA_Q), constraint=constraints.positive)
    d = dist.Beta(alpha, beta)
    infer = {"baseline": {"use_decaying_avg_baseline": True}} if tracegraph_baseline else {}
    pyro.sample("f", d if reparameterized else d.has_rsample_(False), infer=infer)


def step_time(loss, guide, steps=200):
    pyro.clear_param_store()
    svi = SVI(coin_model, guide, pyro.optim.Adam({"lr": 0.01}), loss=loss)
    svi.step(DATA)  # warm-up (and plate-nesting guess)
    start = time.perf_counter()
    for _ in range(steps):
        svi.step(DATA)
    return (time.perf_counter() - start) / steps


def elbo_benchmark(repeats=5):
    score_guide_pyro = lambda d: coin_guide(d, reparameterized=False, tracegraph_baseline=True)  # noqa: E731
    cases = {
        "reparameterized guide, K=1": {
            "Trace_ELBO": (Trace_ELBO(), coin_guide),
            "TraceGraph_ELBO": (TraceGraph_ELBO(), coin_guide),
            "pg.ELBO": (pg.ELBO(), coin_guide),
        },
        "score-function guide, decaying baseline, K=1": {
            "TraceGraph_ELBO": (TraceGraph_ELBO(), score_guide_pyro),
            "pg.ELBO": (pg.ELBO(), pg.estimators(coin_guide, {"f": pg.Score("decay")})),
        },
        "score-function guide, K=8 (pg: leave-one-out, vectorized)": {
            "TraceGraph_ELBO": (TraceGraph_ELBO(num_particles=8), score_guide_pyro),
            "pg.ELBO": (
                pg.ELBO(num_particles=8, vectorize_particles=True),
                pg.estimators(coin_guide, {"f": pg.Score("loo")}),
            ),
        },
    }
    for case, contenders in cases.items():
        times = {name: [] for name in contenders}
        for _ in range(repeats):
            for name, (loss, guide) in contenders.items():
                times[name].append(step_time(loss, guide))
        medians = {name: statistics.median(t) for name, t in times.items()}
        print(f"\n{case}: median step time")
        for name, t in medians.items():
            ratio = t / medians["TraceGraph_ELBO"]
            print(f"  {name:16s} {t * 1e3:8.3f} ms   {ratio:5.2f}× TraceGraph_ELBO")


def expectation_benchmark(num_particles=10_000):
    print(f"\npg.expectation with {num_particles} particles: vectorized vs a loop of single calls")
    for label, program, theta0 in (
        ("parameterized_noise, Reparam", pg.estimators(parameterized_noise, {"z": pg.Reparam()}), 2.0),
        ("parameterized_noise, Score(decay)", pg.estimators(parameterized_noise, {"z": pg.Score("decay")}), 2.0),
        ("two_bernoullis, Score(decay)", pg.estimators(two_bernoullis, default=pg.Score("decay")), 0.1),
    ):
        theta = torch.tensor(theta0, requires_grad=True)
        pg.expectation(program, theta, num_particles=num_particles).backward()  # warm-up
        start = time.perf_counter()
        theta.grad = None
        pg.expectation(program, theta, num_particles=num_particles).backward()
        vectorized = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(num_particles):
            pg.expectation(program, theta, num_particles=1).backward()
        looped = time.perf_counter() - start
        print(
            f"  {label:34s} vectorized {vectorized * 1e3:8.1f} ms   loop {looped:6.2f} s   "
            f"speed-up {looped / vectorized:7.0f}×"
        )


def handwritten_two_bernoullis_loo(theta: torch.Tensor, num_particles: int) -> torch.Tensor:
    """``pg.Score("loo")`` on two_bernoullis, in plain torch: the limit for one call."""
    pa, pb = 3 * theta, theta
    a = torch.bernoulli(pa.detach().expand(num_particles))
    b = torch.bernoulli(pb.detach().expand(num_particles))
    f = 2 * a + b
    baseline = (f.sum() - f) / (num_particles - 1) if num_particles > 1 else torch.zeros_like(f)
    log_q = dist.Bernoulli(probs=pa).log_prob(a) + dist.Bernoulli(probs=pb).log_prob(b)
    return (f + (f - baseline).detach() * (log_q - log_q.detach())).mean()


def handwritten_noise_reparam(theta: torch.Tensor, num_particles: int) -> torch.Tensor:
    """``pg.Reparam()`` on parameterized_noise, in plain torch."""
    z = theta + 2.0 * torch.randn(num_particles)
    return (theta**2 * (z + 4)).mean()


def overhead_benchmark(repeats: int = 200) -> None:
    print("\npg.expectation's per-call overhead: median call (value and backward), interleaved")
    cases = (
        ("two_bernoullis, Score(loo)", pg.estimators(two_bernoullis, default=pg.Score("loo")),
         handwritten_two_bernoullis_loo, 0.1),
        ("parameterized_noise, Reparam", pg.estimators(parameterized_noise, {"z": pg.Reparam()}),
         handwritten_noise_reparam, 2.0),
    )
    for label, program, handwritten, theta0 in cases:
        for num_particles in (2, 100, 10_000):
            theta = torch.tensor(theta0, requires_grad=True)
            calls = {
                "pg": lambda: pg.expectation(program, theta, num_particles=num_particles,
                                             max_plate_nesting=0).backward(),
                "torch": lambda: handwritten(theta, num_particles).backward(),
            }
            medians = interleaved_medians(calls, repeats)
            pg_ms, torch_ms = 1e3 * medians["pg"], 1e3 * medians["torch"]
            print(f"  {label:30s} K={num_particles:<6d} pg {pg_ms:7.3f} ms   hand-written torch {torch_ms:7.3f} ms"
                  f"   {pg_ms / torch_ms:6.1f}×   overhead {pg_ms - torch_ms:6.3f} ms")


def first_calls(call: Callable[[], None], calls: int = 3) -> List[float]:
    """Seconds of each of the first ``calls`` calls (a compiled objective's first call
    runs uncompiled, its second records, and its third compiles)."""
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - start)
    return seconds


def interleaved_medians(calls: Dict[str, Callable[[], None]], repeats: int) -> Dict[str, float]:
    """Median seconds per call of each, timed in turn, so drift falls on all alike."""
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def compile_benchmark(repeats: int = 200, num_particles: int = 100) -> None:
    """``compile=``: pg.expectation at 100 particles and pg.ELBO on the coin, uncompiled,
    recorded (``"trace"``) and compiled (``True``, inductor), beside hand-written torch;
    the first calls' seconds and the calls a recording takes to pay for itself."""
    print(f"\ncompile=: median call, interleaved ({repeats} rounds); first calls: uncompiled, recording, compiling")
    trace = {"backend": "trace"}
    cases = (
        ("two_bernoullis, Score(loo)", two_bernoullis, pg.Score("loo"), handwritten_two_bernoullis_loo, 0.1),
        ("parameterized_noise, Reparam", parameterized_noise, pg.Reparam(), handwritten_noise_reparam, 2.0),
    )
    for label, fn, estimator, handwritten, theta0 in cases:
        theta = torch.tensor(theta0, requires_grad=True)
        programs = {name: pg.estimators(fn, default=estimator) for name in ("uncompiled", "trace", "inductor")}
        settings = {"uncompiled": False, "trace": trace, "inductor": True}

        def call(name):
            return lambda: pg.expectation(programs[name], theta, num_particles=num_particles, max_plate_nesting=0,
                                          compile=settings[name]).backward()
        first = {name: first_calls(call(name)) for name in settings}
        calls = {name: call(name) for name in settings}
        calls["hand-written torch"] = lambda: handwritten(theta, num_particles).backward()
        medians = interleaved_medians(calls, repeats)
        print(f"  pg.expectation, {label}, K={num_particles}")
        report(medians, first, "hand-written torch")
    elbo_cases = {
        "coin, reparameterized guide, K=1": (coin_guide, {}),
        "coin, score-function guide, Score(loo), K=8": (pg.estimators(coin_guide, {"f": pg.Score("loo")}),
                                                       {"num_particles": 8, "vectorize_particles": True}),
    }
    for label, (guide, options) in elbo_cases.items():
        pyro.clear_param_store()
        losses = {name: pg.ELBO(max_plate_nesting=1, compile=settings[name], **options) for name in settings}
        svis = {name: SVI(coin_model, guide, pyro.optim.Adam({"lr": 0.001}), loss=loss)
                for name, loss in losses.items()}
        first = {name: first_calls(lambda s=svi: s.step(DATA)) for name, svi in svis.items()}
        calls = {name: (lambda s=svi: s.step(DATA)) for name, svi in svis.items()}
        calls["Trace_ELBO"] = (lambda s=SVI(coin_model, coin_guide, pyro.optim.Adam({"lr": 0.001}),
                                            loss=Trace_ELBO()): s.step(DATA))
        medians = interleaved_medians(calls, repeats)
        print(f"  pg.ELBO in SVI, {label}")
        report(medians, first, "uncompiled")


def report(medians: Dict[str, float], first: Dict[str, List[float]], against: str) -> None:
    for name, t in medians.items():
        line = f"    {name:20s} {t * 1e3:8.3f} ms   {t / medians[against]:5.2f}× {against}"
        if name in first:
            line += "   first calls " + " / ".join(f"{s * 1e3:.1f}" for s in first[name]) + " ms"
            saved = medians["uncompiled"] - t
            if name != "uncompiled" and saved > 0:
                # What the first calls cost beyond uncompiled calls, in calls' savings.
                extra = sum(first[name]) - 3 * medians["uncompiled"]
                line += f"   pays for itself after {max(0.0, extra) / saved:,.0f} calls"
        print(line)


if __name__ == "__main__":
    import sys

    if "--only" not in sys.argv or "compile" not in sys.argv:
        elbo_benchmark()
        expectation_benchmark()
        overhead_benchmark()
    compile_benchmark()
