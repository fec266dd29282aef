"""MeasureValued on a Normal against Score("loo") and Reparam: Figure 2 of Mohamed, Rosca,
Figurnov & Mnih, "Monte Carlo Gradient Estimation in Machine Learning", JMLR 2020.

Run: ``.venv/bin/python benchmarks/bench_measure_valued.py`` (under a minute on 2 cores).

For ``z ~ N(μ, σ)`` and ``f`` in {x², cos(x), 1[x > 0]}, the derivative of ``E[f(z)]`` in
the mean μ (at σ = 1) and in the scale σ (at μ = 0.5 and μ = 0), over a grid of the
parameter as in the paper's figure. Each estimator's per-sample variance is ``var``;
``var×ev`` is it times the program evaluations one sample costs (1 + the extra runs,
times the particles: MeasureValued 3 for a loc, 2 for a scale; Score("loo") 2, as it
needs 2 particles; Reparam 1), the variance at equal program evaluations. ``hand``
is the variance of the same weak derivative written directly in vectorized torch (the
same coupling; it must agree with MeasureValued within sampling error), and ``indep``
the paper's estimator for the scale with the Maxwell draw independent of the site's
draw. Reparam's derivative of a step is 0 almost surely (biased): where pg detects
the jump it refuses the site, printed as ``refused (jump)``.
"""

import math
import time
import warnings

import pyro
import pyro.distributions as dist
import torch

import pyro_grad as pg

warnings.filterwarnings("ignore")
torch.set_num_threads(1)

SAMPLES = 20_000
FUNCTIONS = {
    "x^2": lambda x: x * x,
    "cos(x)": torch.cos,
    "1[x>0]": lambda x: (x > 0).to(x.dtype),
}
CANDIDATES = {
    "MeasureValued": (pg.MeasureValued(), 1),
    "Score(loo)": (pg.Score("loo"), 2),
    "Reparam": (pg.Reparam(), 1),
}


def exact(parameter, name, mu, sigma):
    """∂ of E[x²] = μ² + σ², E[cos x] = cos μ·e^{−σ²/2}, E[1[x > 0]] = Φ(μ/σ)."""
    damping = math.exp(-sigma**2 / 2)
    density = math.exp(-((mu / sigma) ** 2) / 2) / math.sqrt(2 * math.pi)
    if parameter == "loc":
        return {"x^2": 2 * mu, "cos(x)": -math.sin(mu) * damping, "1[x>0]": density / sigma}[name]
    return {"x^2": 2 * sigma, "cos(x)": -math.cos(mu) * sigma * damping, "1[x>0]": -density * mu / sigma**2}[name]


def handwritten(parameter, f, mu, sigma, n, generator, coupled=True):
    """The weak derivative in plain vectorized torch: loc, (f(μ + σR) − f(μ − σR))/(σ√(2π)),
    R = sqrt(2E); scale, (f(μ + σM) − f(μ + σε))/σ, M = sign(ε)·sqrt(ε² + 2E) (coupled) or
    an independent double-sided Maxwell (the paper's)."""
    e = torch.empty(n, dtype=torch.float64).exponential_(generator=generator)
    if parameter == "loc":
        r = torch.sqrt(2 * e)
        return (f(mu + sigma * r) - f(mu - sigma * r)) / (sigma * math.sqrt(2 * math.pi))
    eps = torch.randn(n, dtype=torch.float64, generator=generator)
    if coupled:
        m = torch.where(eps < 0, -1.0, 1.0) * torch.sqrt(eps**2 + 2 * e)
    else:
        chi3 = torch.randn(n, 3, dtype=torch.float64, generator=generator).norm(dim=-1)
        m = torch.where(torch.rand(n, generator=generator, dtype=torch.float64) < 0.5, -1.0, 1.0) * chi3
    return (f(mu + sigma * m) - f(mu + sigma * eps)) / sigma


def program(parameter, f, mu, sigma):
    def run(t):
        fn = dist.Normal(t, sigma) if parameter == "loc" else dist.Normal(mu, t)
        return f(pyro.sample("z", fn))
    return run


def rows():
    """(parameter, μ, σ): the loc at σ = 1 over a grid of μ; the scale at μ ∈ {0, 0.5} over σ."""
    for mu in (0.0, 0.5, 1.0, 2.0):
        yield "loc", mu, 1.0
    for mu in (0.5, 0.0):
        for sigma in (0.5, 1.0, 2.0):
            yield "scale", mu, sigma


def main():
    start = time.perf_counter()
    header = (f"{'param':5s} {'mu':>4s} {'sig':>4s} {'f':7s} {'exact':>8s} | "
              + " | ".join(f"{label + ' mean':>18s} {'var':>9s} {'var×ev':>9s}" for label in CANDIDATES)
              + f" | {'hand':>9s} {'indep':>9s}")
    print(f"Per-sample gradient variance, {SAMPLES} samples each; var×ev = variance × program evaluations")
    print(header)
    print("-" * len(header))
    generator = torch.Generator().manual_seed(0)
    for parameter, mu, sigma in rows():
        value = mu if parameter == "loc" else sigma
        for name, f in FUNCTIONS.items():
            cells = []
            for label, (estimator, particles) in CANDIDATES.items():
                try:
                    report = pg.diagnose(program(parameter, f, mu, sigma), torch.tensor(value, requires_grad=True),
                                         estimators=estimator, num_particles=particles, num_samples=SAMPLES,
                                         sites=False)
                except pg.EstimatorError:  # Reparam refuses a jump of f in the value
                    cells.append(f"{'refused (jump)':>38s}")
                    continue
                row = report.params.iloc[0]
                cells.append(f"{row['mean']:+18.3f} {row['variance']:9.3g} {row['variance'] * row['cost']:9.3g}")
            hand = float(handwritten(parameter, f, mu, sigma, SAMPLES, generator).var())
            indep = (f"{float(handwritten(parameter, f, mu, sigma, SAMPLES, generator, coupled=False).var()):9.3g}"
                     if parameter == "scale" else f"{'-':>9s}")
            print(f"{parameter:5s} {mu:4.1f} {sigma:4.1f} {name:7s} {exact(parameter, name, mu, sigma):+8.3f} | "
                  + " | ".join(cells) + f" | {hand:9.3g} {indep}")
    print(f"\n{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
