"""Programs that jump in a continuous draw: what the default gives, and what it costs.

Run: ``.venv/bin/python benchmarks/bench_jumps.py [--particles N] [--draws G]``.

Three tables, side by side in one run:

1. The issue's table redone: each program's exact ∇θ E[f] (closed form), the pathwise
   derivative (``Reparam(jumps="ignore")``: what pyro_grad's default gave before it
   watched for jumps) and the default now, at ``N`` particles, with the estimator the
   default chose and the standard error of the default's estimate (from ``G`` draws).
2. The variance of the two unbiased estimators that need no smoothness, at equal
   program evaluations: continuous ``MeasureValued()`` (K = 1) against ``Score("loo")``
   (K = 2), as variance × evaluations per draw of ``pg.diagnose``'s draws.
3. Speed: a call of ``pg.expectation`` with the default on ``round(z)`` against the
   same measure-valued estimator hand-written in vectorized torch (the limit), and the
   watch's own cost on a smooth program (the same call with and without a jump in f).
"""

import argparse
import math
import time

import pyro
import pyro.distributions as dist
import torch

import pyro_grad as pg

THETA = 0.3
PHI = math.exp(-THETA**2 / 2) / math.sqrt(2 * math.pi)


def normal(theta):
    return pyro.sample("z", dist.Normal(theta, 1.0))


def floor_exact(shift: float) -> float:
    """∂θ E[floor(z + shift)] = Σ_k φ(k − shift − θ)."""
    return sum(math.exp(-(k - shift - THETA) ** 2 / 2) / math.sqrt(2 * math.pi) for k in range(-40, 41))


PROGRAMS = {
    "round(z)": (lambda t: torch.round(normal(t)), floor_exact(0.5)),
    "floor(z)": (lambda t: torch.floor(normal(t)), floor_exact(0.0)),
    "where(z > 0, 2 + z, z)": (lambda t: (lambda z: torch.where(z > 0, 2 + z, z))(normal(t)), 1 + 2 * PHI),
    "(z > 0).float()": (lambda t: (normal(t) > 0).float(), PHI),
    "Exponential(e^θ) draw, (z < 1).float()": (
        lambda t: (pyro.sample("z", dist.Exponential(t.exp())) < 1).float(),
        math.exp(THETA) * math.exp(-math.exp(THETA)),
    ),
    "(z > 0)·3 + 0.1 z": (lambda t: (lambda z: (z > 0).float() * 3 + 0.1 * z)(normal(t)), 3 * PHI + 0.1),
}


def one_call(f, particles: int, **options) -> float:
    theta = torch.tensor(THETA, requires_grad=True)
    pg.expectation(f, theta, num_particles=particles, **options).backward()
    return float(theta.grad)


def table_defaults(particles: int, draws: int) -> None:
    print(f"1. The default against the pathwise derivative, {particles} particles (θ = {THETA})")
    print(f"{'program':42s} {'exact':>7s} {'pathwise':>9s} {'default':>8s} {'± 1 se':>7s}  default chose")
    for name, (f, exact) in PROGRAMS.items():
        pyro.set_rng_seed(0)
        try:
            pathwise = one_call(pg.estimators(f, {"z": pg.Reparam(jumps="ignore")}), particles)
        except pg.EstimatorError:  # f reaches θ only through the jump: no pathwise gradient at all
            pathwise = float("nan")
        pyro.set_rng_seed(0)
        default = one_call(f, particles)
        report = pg.diagnose(f, torch.tensor(THETA, requires_grad=True), num_particles=particles // draws,
                             num_samples=draws, sites=False)
        (samples,) = report.samples.values()
        se = float(samples.std()) / math.sqrt(draws)
        print(f"{name:42s} {exact:7.3f} {pathwise:9.3f} {default:8.3f} {se:7.4f}  {report.estimators['z']!r}")
    print("(pathwise nan: no gradient at all; the old default raised 'depends on no tensor that requires grad')")


def table_variances(draws: int) -> None:
    print(f"\n2. Variance × evaluations per draw, {draws} draws each (lower is better)")
    print(f"{'program':42s} {'MeasureValued()':>16s} {'Score(loo), K=2':>16s} {'ratio':>7s}")
    for name, (f, _) in PROGRAMS.items():
        figures = []
        for estimator, k in ((pg.MeasureValued(), 1), (pg.Score("loo"), 2)):
            report = pg.diagnose(f, torch.tensor(THETA, requires_grad=True), estimators={"z": estimator},
                                 num_particles=k, num_samples=draws, sites=False, seed=0)
            figures.append(report.work_normalized_variance())
        print(f"{name:42s} {figures[0]:16.4f} {figures[1]:16.4f} {figures[0] / figures[1]:7.3f}")


def handwritten_round(theta: torch.Tensor, particles: int) -> torch.Tensor:
    """∂θ E[round(z)], z ~ N(θ, 1), by the loc's weak derivative, in vectorized torch: the
    surrogate's value is the plain estimate, its gradient (f(θ + R) − f(θ − R))/√(2π)."""
    z = theta.detach() + torch.randn(particles)
    r = torch.sqrt(2 * torch.empty(particles).exponential_())
    d = (torch.round(theta.detach() + r) - torch.round(theta.detach() - r)) / math.sqrt(2 * math.pi)
    return torch.round(z).mean() + ((theta - theta.detach()) * d).mean()


def seconds(call, repeats: int) -> float:
    call()  # warm up
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - start) / repeats


def table_speed(particles: int, repeats: int = 30) -> None:
    print(f"\n3. Seconds per call (value and backward), {particles} particles, interleaved")
    f = PROGRAMS["round(z)"][0]
    smooth = lambda t: normal(t) ** 2  # noqa: E731

    def ours():
        one_call(f, particles)

    def mine():
        theta = torch.tensor(THETA, requires_grad=True)
        handwritten_round(theta, particles).backward()

    def smooth_call():
        one_call(smooth, particles)

    times = {"pg.expectation, round(z), default": [], "hand-written torch, same estimator": [],
             "pg.expectation, z², default (watched)": []}
    for _ in range(3):
        times["pg.expectation, round(z), default"].append(seconds(ours, repeats))
        times["hand-written torch, same estimator"].append(seconds(mine, repeats))
        times["pg.expectation, z², default (watched)"].append(seconds(smooth_call, repeats))
    best = {k: min(v) for k, v in times.items()}
    limit = best["hand-written torch, same estimator"]
    for name, t in best.items():
        print(f"{name:42s} {t * 1e3:8.2f} ms  {t / limit:6.1f}× hand-written")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=20_000)
    parser.add_argument("--draws", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    table_defaults(args.particles, 20)
    table_variances(args.draws)
    table_speed(1000)


if __name__ == "__main__":
    main()
