"""An agent-based SIR epidemic, vectorized over agents, with its exact expectation by DP.

``N`` agents, each susceptible, infected or recovered. Each day, all at once, a
susceptible agent is infected with probability ``1 − exp(−β·I/N·Δt)`` and an infected
agent recovers with probability ``1 − exp(−γ·Δt)``. Every agent's draw is a Bernoulli
sample site inside a plate, so the whole model runs as tensors over agents (and over
particles), and every discrete gradient estimator in pyro_grad applies to it.

The counts (S, I) form a Markov chain with Binomial transitions, so for small N and T
the expected daily new infections are computed exactly by dynamic programming over
the joint distribution of (S, I), differentiably in β and γ: the reference that the
estimators are checked against.
"""

from typing import Dict, Tuple

import pyro
import pyro.distributions as dist
import torch

from pyro_grad.harness.models.benchmark import Benchmark

DT = 1.0


def infection_probability(beta: torch.Tensor, infected: torch.Tensor, n: int) -> torch.Tensor:
    return 1 - torch.exp(-beta * infected / n * DT)


def recovery_probability(gamma: torch.Tensor) -> torch.Tensor:
    return 1 - torch.exp(-gamma * DT)


def program(beta: torch.Tensor, gamma: torch.Tensor, N: int = 20, I0: int = 2, T: int = 10) -> torch.Tensor:
    """Simulate ``T`` days; returns daily new infections, shape ``(..., T)`` (particles first).

    Sites ``infect_t`` and ``recover_t`` (t = 0..T−1) are Bernoulli per agent in plate
    ``agents``; agents not susceptible (not infected) get probability 0.
    """
    beta, gamma = torch.as_tensor(beta), torch.as_tensor(gamma)
    susceptible = torch.ones(N)
    susceptible[:I0] = 0.0
    infected = 1.0 - susceptible
    new_cases = []
    with pyro.plate("agents", N, dim=-1):
        for t in range(T):
            force = infection_probability(beta.unsqueeze(-1), infected.sum(-1, keepdim=True), N)
            infect = pyro.sample(f"infect_{t}", dist.Bernoulli(force * susceptible))
            recover = pyro.sample(f"recover_{t}", dist.Bernoulli(recovery_probability(gamma.unsqueeze(-1)) * infected))
            # Only susceptible agents can be infected and only infected ones recover, even
            # when an estimator's alternative run sets an impossible value.
            infect, recover = infect * susceptible, recover * infected
            new_cases.append(infect.sum(-1))
            susceptible = susceptible - infect
            infected = infected + infect - recover
    return torch.stack(new_cases, -1)


def exact_expected_infections(
    beta: torch.Tensor, gamma: torch.Tensor, N: int = 20, I0: int = 2, T: int = 10
) -> torch.Tensor:
    """E[daily new infections], shape ``(T,)``, by DP over the joint law of (S, I).

    From (S, I): new infections n ~ Binomial(S, p(I)), recoveries r ~ Binomial(I, q),
    independent, and (S, I) → (S − n, I + n − r). Cost O(T·N⁴) — for small N.
    """
    beta, gamma = torch.as_tensor(beta, dtype=torch.float64), torch.as_tensor(gamma, dtype=torch.float64)
    size = N + 1
    counts = torch.arange(size, dtype=torch.float64)
    s_idx, i_idx, n_idx, r_idx = torch.meshgrid(counts, counts, counts, counts, indexing="ij")
    valid = (s_idx + i_idx <= N) & (n_idx <= s_idx) & (r_idx <= i_idx)
    p_inf = infection_probability(beta, i_idx, N)
    q_rec = recovery_probability(gamma)

    def binomial_pmf(k, n, p):
        # Clamped so that p = 0 (no infected agents) has a finite derivative.
        p = p.clamp(1e-12, 1 - 1e-12)
        log_choose = torch.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
        return torch.exp(log_choose + k * p.log() + (n - k) * (-p).log1p())

    kernel = torch.where(
        valid, binomial_pmf(n_idx, s_idx, p_inf) * binomial_pmf(r_idx, i_idx, q_rec), torch.zeros(())
    )
    new_s = (s_idx - n_idx).long().clamp(0, N)
    new_i = (i_idx + n_idx - r_idx).long().clamp(0, N)
    target = (new_s * size + new_i).reshape(-1)
    law = torch.zeros(size, size, dtype=torch.float64)
    law[N - I0, I0] = 1.0
    expected = []
    for _ in range(T):
        mass = law[:, :, None, None] * kernel  # (S, I, n, r)
        expected.append((mass * n_idx).sum())
        law = torch.zeros(size * size, dtype=torch.float64).index_add(0, target, mass.reshape(-1)).reshape(size, size)
    return torch.stack(expected).to(torch.get_default_dtype())


#: Day weights of the benchmark's cost, a linear functional of the curve: its exact
#: gradient follows from the DP.
def _weights(T: int) -> torch.Tensor:
    return torch.linspace(1.0, 2.0, T)


def weighted_infections(beta: torch.Tensor, gamma: torch.Tensor, N: int = 20, I0: int = 2, T: int = 10) -> torch.Tensor:
    """Cost Σ_t w_t·new_t (w rising from 1 to 2): more weight on late infections."""
    return (program(beta, gamma, N, I0, T) * _weights(T)).sum(-1)


def weighted_infections_gradient(beta, gamma, N: int = 20, I0: int = 2, T: int = 10) -> Dict[str, torch.Tensor]:
    b = torch.tensor(float(beta), requires_grad=True)
    g = torch.tensor(float(gamma), requires_grad=True)
    value = (exact_expected_infections(b, g, N, I0, T) * _weights(T)).sum()
    db, dg = torch.autograd.grad(value, [b, g])
    return {"beta": db, "gamma": dg}


def calibrate(
    estimator,
    observed: torch.Tensor,
    N: int,
    I0: int,
    steps: int = 200,
    num_particles: int = 4,
    lr: float = 0.05,
    init: Tuple[float, float] = (0.4, 0.1),
    seed: int = 0,
) -> Dict[str, float]:
    """Fit (β, γ) to one observed curve by Adam on E[Σ_t (new_t − observed_t)²]/T,
    differentiated by ``estimator`` at every site. Parameters live on the log scale."""
    import pyro_grad as pg

    pyro.set_rng_seed(seed)
    log_beta = torch.tensor(float(torch.tensor(init[0]).log()), requires_grad=True)
    log_gamma = torch.tensor(float(torch.tensor(init[1]).log()), requires_grad=True)
    T = observed.shape[-1]

    def loss(lb, lg):
        return ((program(lb.exp(), lg.exp(), N, I0, T) - observed) ** 2).mean(-1)

    optimizer = torch.optim.Adam([log_beta, log_gamma], lr=lr)
    program_with = pg.estimators(loss, default=estimator)
    for _ in range(steps):
        optimizer.zero_grad()
        pg.expectation(program_with, log_beta, log_gamma, num_particles=num_particles).backward()
        optimizer.step()
    return {"beta": float(log_beta.exp()), "gamma": float(log_gamma.exp())}


BENCHMARK = Benchmark(
    name="sir",
    description=(
        "An agent-based SIR model (the tutorial's follow-up notebook): N = 20 agents over "
        "T = 10 days, every infection and recovery a per-agent Bernoulli site in a plate. "
        "Cost: the day-weighted sum of new infections, whose exact gradient in (β, γ) comes "
        "from dynamic programming over the (S, I) counts."
    ),
    program=weighted_infections,
    default_args=(0.6, 0.2),
    arg_names=("beta", "gamma"),
    reference_gradient=weighted_infections_gradient,
)
