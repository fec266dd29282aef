"""diagnose's speed: against a Python loop of single gradient calls, and against
hand-written vectorized torch code computing the same per-sample gradients.

Run: ``.venv/bin/python benchmarks/bench_diagnose.py``. Timings are medians of
interleaved repeats in one run, reported as ratios. Targets: diagnose with 10,000
samples at least 100× faster than the loop, and within 3× of the hand-written code.
"""

import math
import os
import statistics
import time
import warnings

import torch
from torch.distributions import Bernoulli, Normal

import pyro_grad as pg
from pyro_grad.harness.models.seeds import fixed_noise, parameterized_noise, two_bernoullis

warnings.filterwarnings("ignore")
N = 10_000
LOOP = os.environ.get("SKIP_LOOP") is None  # the loop takes ~30 s in all


def by_hand_fixed_noise(t):
    theta = torch.full((N,), t, requires_grad=True)
    z = Normal(1.0, 2.0).sample((N,))
    (theta**2 * (z + 4)).sum().backward()
    return theta.grad


def by_hand_parameterized_noise(t):
    theta = torch.full((N,), t, requires_grad=True)
    z = Normal(theta, 2.0).rsample()
    (theta**2 * (z + 4)).sum().backward()
    return theta.grad


def by_hand_two_bernoullis(t):
    # Score function, no baseline (the decaying average starts at zero).
    theta = torch.full((N,), t, requires_grad=True)
    pa, pb = Bernoulli(3 * theta), Bernoulli(theta)
    a, b = pa.sample(), pb.sample()
    f = 2 * a + b
    log_q = pa.log_prob(a) + pb.log_prob(b)
    (f + (log_q - log_q.detach()) * f).sum().backward()
    return theta.grad


CASES = [
    ("fixed_noise (Reparam)", fixed_noise, 2.0, by_hand_fixed_noise),
    ("parameterized_noise (Reparam)", parameterized_noise, 2.0, by_hand_parameterized_noise),
    ("two_bernoullis (Score)", two_bernoullis, 0.1, by_hand_two_bernoullis),
]


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(repeats=7):
    print(f"diagnose with {N} samples (medians of {repeats} interleaved repeats)")
    for label, program, t, by_hand in CASES:
        theta = torch.tensor(t, requires_grad=True)

        def diagnose_params():
            return pg.diagnose(program, theta, num_samples=N, sites=False)

        def diagnose_all():
            return pg.diagnose(program, theta, num_samples=N)

        def loop():
            grads = []
            for _ in range(N):
                th = torch.tensor(t, requires_grad=True)
                pg.expectation(program, th).backward()
                grads.append(th.grad)
            return torch.stack(grads)

        diagnose_params(), diagnose_all(), by_hand(t)  # warm-up
        report = diagnose_params()
        hand = by_hand(t)
        times = {
            "diagnose (params)": timed(diagnose_params, repeats),
            "diagnose (params + sites)": timed(diagnose_all, repeats),
            "hand-written torch": timed(lambda: by_hand(t), repeats),
        }
        times["loop of single calls"] = timed(loop, 1) if LOOP else math.nan
        print(f"\n{label}: path={report.mode}, mean {report.params.iloc[0]['mean']:.3f} "
              f"(hand-written {float(hand.mean()):.3f}), variance {report.params.iloc[0]['variance']:.2f} "
              f"(hand-written {float(hand.var()):.2f})")
        base = times["diagnose (params)"]
        for name, seconds in times.items():
            print(f"  {name:27s} {seconds * 1e3:9.2f} ms   {seconds / base:8.2f}× diagnose (params)")


if __name__ == "__main__":
    main()
