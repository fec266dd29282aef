"""Small discrete programs with exact gradients (the discrete-estimator test bench)."""

from typing import Dict

import pyro
import pyro.distributions as dist
import torch

from pyro_grad.harness.models.benchmark import Benchmark

#: The target of the REBAR/RELAX/DisARM toy problem.
TARGET = 0.49


def bernoulli_target(phi: torch.Tensor) -> torch.Tensor:
    """b ~ Bernoulli(σ(φ)), f = (b − 0.49)². ∂φ E[f] = σ'(φ)·((1 − t)² − t²)."""
    b = pyro.sample("b", dist.Bernoulli(logits=phi))
    return (b - TARGET) ** 2


def bernoulli_target_gradient(phi) -> Dict[str, torch.Tensor]:
    s = torch.sigmoid(torch.as_tensor(phi, dtype=torch.float))
    return {"phi": s * (1 - s) * ((1 - TARGET) ** 2 - TARGET**2)}


def poisson_square(lam: torch.Tensor) -> torch.Tensor:
    """X ~ Poisson(λ), f = (X + 1)². ∂λ E[f] = 3 + 2λ."""
    x = pyro.sample("x", dist.Poisson(lam))
    return (x + 1) ** 2


def poisson_square_gradient(lam) -> Dict[str, torch.Tensor]:
    return {"lam": 3 + 2 * torch.as_tensor(lam, dtype=torch.float)}


BINOMIAL_COUNT = 5


def binomial_square(p: torch.Tensor) -> torch.Tensor:
    """X ~ Binomial(5, p), f = (X + 1)². ∂p E[f] = n(1 − 2p) + 2n²p + 2n."""
    x = pyro.sample("x", dist.Binomial(BINOMIAL_COUNT, p))
    return (x + 1) ** 2


def binomial_square_gradient(p) -> Dict[str, torch.Tensor]:
    p, n = torch.as_tensor(p, dtype=torch.float), BINOMIAL_COUNT
    return {"p": n * (1 - 2 * p) + 2 * n**2 * p + 2 * n}


def geometric_failures(p: torch.Tensor) -> torch.Tensor:
    """X ~ Geometric(p), counting failures, f = X. ∂p E[f] = −1/p²."""
    return pyro.sample("x", dist.Geometric(p))


def geometric_failures_gradient(p) -> Dict[str, torch.Tensor]:
    return {"p": -1 / torch.as_tensor(p, dtype=torch.float) ** 2}


def categorical_square(p: torch.Tensor) -> torch.Tensor:
    """X ∈ {1, 2} with probabilities [p², 1 − p²], f = (X + 1)². ∂p E[f] = −10p."""
    c = pyro.sample("x", dist.Categorical(torch.stack([p**2, 1 - p**2], -1)))
    return (c + 2) ** 2


def categorical_square_gradient(p) -> Dict[str, torch.Tensor]:
    return {"p": -10 * torch.as_tensor(p, dtype=torch.float)}


def state_walk(p: torch.Tensor, n: int) -> torch.Tensor:
    """StochasticAD.jl's walk (Arya et al., NeurIPS 2022): X_0 = 0, n steps of ±1, +1 with
    probability exp(−X/p) (so X ≥ 0), one Bernoulli site per step; f = X_n²."""
    x = torch.zeros(())
    for t in range(n):
        # No name holds the step itself: a value the program still holds keeps a jump
        # alive for lazy pruning (pyro_grad.engine.lazy_pruning) after its path rejoined.
        x = x + 2 * pyro.sample(f"step_{t}", dist.Bernoulli(torch.exp(-x / p).clamp(max=1.0))) - 1
    return x**2


def state_walk_derivative(p: float, n: int) -> float:
    """∂p E[X_n²] of :func:`state_walk` by the forward dynamic program over X ∈ {0, ..., n},
    differentiated by autograd (float64)."""
    p_ = torch.tensor(float(p), dtype=torch.float64, requires_grad=True)
    x = torch.arange(n + 2, dtype=torch.float64)
    probs = torch.zeros(n + 2, dtype=torch.float64)
    probs[0] = 1.0
    for _ in range(n):
        up = torch.exp(-x / p_).clamp(max=1.0)
        moved_up = torch.cat([probs.new_zeros(1), (probs * up)[:-1]])
        moved_down = torch.cat([(probs * (1 - up))[1:], probs.new_zeros(1)])
        probs = moved_up + moved_down
    (gradient,) = torch.autograd.grad((probs * x**2).sum(), p_)
    return float(gradient)


def state_walk_pruned_by_hand(p: float, n: int, num: int, lazy: bool = False,
                              weights: str = "engine", paths: int = 1) -> torch.Tensor:
    """``num`` one-sample derivative estimates of ∂p E[X_n²] on :func:`state_walk`, written
    by hand in vectorized torch: the reference the one-run engine is measured against.

    Each step draws ``up = 1{U < q}``, ``q = exp(−X/p)``, and may offer its flip;
    ``∂p q = q·X/p² ≥ 0``. ``weights`` says which steps offer, with what coefficient ``c``
    and weight ``π``:

    * ``"engine"``, ``MeasureValued(engine="one-run")``'s for a scalar parameter: every step
      that can move offers its flip, ``c = 1 − 2·up``, weighted by the defensive mixture
      ``π = 0.1·|c|/Σ|c| + 0.9·|c|·∂p q/Σ|c|·∂p q`` (sums over the path);
    * ``"one-sided"``, ``MeasureValued(engine="one-run", one_sided=True)``'s: StochasticAD's
      one-sided form (only a down step offers, ``c = 1/(1 − q)``), the same mixture;
    * ``"stochastic-ad"``, StochasticAD.jl's (Arya et al., NeurIPS 2022): one-sided, weighted
      ``|c|·∂p q = ∂p q/(1 − q)`` alone.

    ``lazy=False`` keeps one step per path at once, with probability in proportion to the
    weights, and re-runs the path with it flipped; ``lazy=True`` runs the alternative path
    beside the first: each new flip competes with the carried one in proportion to the
    weights, and a carried one whose path has rejoined the first is dropped first. The
    estimate is ``W · c/π · ∂p q · (X'² − X²)``, ``W`` the summed weight of the flips that
    competed (the weights' total, at once).

    ``paths`` alternative paths per sample, each pruned on its own, are averaged
    (``MeasureValued(engine="one-run", paths=...)``). An alternative path's step after
    its flip is drawn on a uniform coupled to the first path's step: with one path the
    step's own ``U``; with more, a fresh ``U | up`` per path (uniform below ``q`` where
    the step went up, above it elsewhere), as the engine's redraw does, so that the
    paths are independent given the first path. Either gives each path the same joint
    law with the first.
    """
    dtype = torch.float64
    uniforms = torch.rand(n, num, dtype=dtype)
    x, states, ups = torch.zeros(num, dtype=dtype), [], []
    for t in range(n):
        states.append(x)
        up = (uniforms[t] < torch.exp(-x / p).clamp(max=1.0)).to(dtype)
        ups.append(up)
        x = x + 2 * up - 1
    state, up = torch.stack(states), torch.stack(ups)
    q = torch.exp(-state / p).clamp(max=1.0)
    rate = torch.where((q > 0) & (q < 1), q * state / p**2, torch.zeros_like(q))  # ∂p q
    movable = (rate != 0).to(dtype)
    if weights in ("one-sided", "stochastic-ad"):
        c = movable * (up == 0).to(dtype) / (1 - q).clamp(min=1e-300)
        defensive = 0.1 if weights == "one-sided" else 0.0
    elif weights == "engine":
        c, defensive = movable * (1 - 2 * up), 0.1
    else:
        raise ValueError(f"weights must be 'engine', 'one-sided' or 'stochastic-ad', got {weights!r}")
    size = c.abs()
    by_size = size.sum(0).clamp(min=1e-300)
    by_sensitivity = (size * rate).sum(0).clamp(min=1e-300)
    weight = defensive * size / by_size + (1 - defensive) * size * rate / by_sensitivity
    coefficient_over_weight = torch.where(weight > 0, c / weight.clamp(min=1e-300), torch.zeros_like(q))

    def coupled_uniform(t: int) -> torch.Tensor:  # (paths, num): an alternative path's U at step t
        if paths == 1:
            return uniforms[t].expand(1, num)
        fresh = torch.rand(paths, num, dtype=dtype)
        return torch.where(up[t] > 0, fresh * q[t], q[t] + fresh * (1 - q[t]))

    shape = (paths, num)
    total = torch.zeros(shape, dtype=dtype)
    kept = torch.full(shape, -1, dtype=torch.long)
    alternative = torch.zeros(shape, dtype=dtype)
    if not lazy:
        movable = weight.sum(0) > 0
        chosen = torch.multinomial((weight + (~movable).to(dtype)).T, paths, replacement=True).T  # (paths, num)
        kept = torch.where(movable, chosen, -1)
        total = weight.sum(0).expand(shape)
        for t in range(n):
            step = (coupled_uniform(t) < torch.exp(-alternative / p).clamp(max=1.0)).to(dtype)
            step = torch.where(kept == t, 1 - up[t], step)
            alternative = alternative + 2 * step - 1
    else:
        for t in range(n):
            alive = (total > 0) & (alternative != state[t])
            carried = torch.where(alive, total, torch.zeros_like(total))
            take = torch.rand(shape, dtype=dtype) * (carried + weight[t]).clamp(min=1e-300) < weight[t]
            kept = torch.where(take, t, torch.where(alive, kept, -1))
            total = torch.where(take | alive, carried + weight[t], torch.zeros_like(total))
            step = (coupled_uniform(t) < torch.exp(-alternative / p).clamp(max=1.0)).to(dtype)
            alternative = torch.where(take, state[t] + 2 * (1 - up[t]) - 1,
                                      torch.where(alive, alternative + 2 * step - 1, state[t + 1] if t + 1 < n else x))
    index, samples = kept.clamp(min=0), torch.arange(num)
    estimate = total * coefficient_over_weight[index, samples] * rate[index, samples] * (alternative**2 - x**2)
    return torch.where(kept >= 0, estimate, torch.zeros_like(estimate)).mean(0)


#: The discrete test bench as benchmarks (for ``benchmarks/discrete_table.py``); not in
#: the registry, whose pages and tests cover the models a user would pick.
BENCHMARKS = (
    Benchmark("(b−0.49)², φ=0", "Bernoulli(σ(φ)) with f = (b − 0.49)², the REBAR/RELAX toy.",
              bernoulli_target, (0.0,), ("phi",), bernoulli_target_gradient),
    Benchmark("(b−0.49)², φ=−2", "The same toy where the Bernoulli is rarely 1.",
              bernoulli_target, (-2.0,), ("phi",), bernoulli_target_gradient),
    Benchmark("Poisson(λ=2): (X+1)²", "A Poisson count, squared.", poisson_square, (2.0,), ("lam",),
              poisson_square_gradient),
    Benchmark("Binomial(5, 0.3): (X+1)²", "A binomial count, squared.", binomial_square, (0.3,), ("p",),
              binomial_square_gradient),
    Benchmark("Geometric(0.4): X", "Failures before the first success.", geometric_failures, (0.4,), ("p",),
              geometric_failures_gradient),
    Benchmark("Categorical([p², 1−p²]), p=0.6", "A category index, shifted and squared.",
              categorical_square, (0.6,), ("p",), categorical_square_gradient),
)
