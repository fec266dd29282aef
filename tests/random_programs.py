"""Random stochastic programs with exact gradients, for the property-based exactness suite.

A :class:`Program` is a small straight-line stochastic program: 1–4 sample sites drawn
from Normal, Bernoulli, Categorical, Binomial, Poisson, Geometric and Multinomial, each
either a single draw, two draws in ``pyro.plate("p", 2)`` or two draws as one
``.to_event(1)`` site; every parameter is a function of θ and of earlier draws; f
is a polynomial of the draws (plus a pathwise term in θ), and a single Normal's value may
also reach f through a jump (``floor``, ``round``, a threshold, ``sign``, a ``where``). Optionally one plated site is
masked, and one draw-dependent loop (``while``, stopping on a Bernoulli's ``.item()``)
counts its iterations.

The same code runs in two modes. Under Pyro, ``pg.expectation`` estimates the gradient.
For the reference, every site takes every value of its support at once, on a grid: each
discrete site enumerates its (truncated) support, each Normal takes Gauss–Hermite nodes
``loc + scale·√2·x_j`` (a Normal whose value jumps: fixed cells of width 1/16, weighted
by the CDF's differences, each jump on a cell edge); the grid's weights ``Π p(v)`` (quadrature weights for Normals)
give ``E[f] = Σ_grid w·f`` in float64, and autograd differentiates it in θ.
"""

import itertools
import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np
import pyro
import pyro.distributions as dist
import torch

PLATE = 2  # elements of a plated or event site
CATEGORIES = 3
BINOMIAL_N = 2
MULTINOMIAL_N = 2
POISSON_MAX = 20  # P(X > 20) < 1e-12 for rates ≤ 2.5
GEOMETRIC_MAX = 40  # P(X > 40) < 1e-10 for probs ≥ 0.45
LOOP_MAX = 4  # iterations of the draw-dependent loop
HERMITE_NODES = 20
MAX_GRID = 20_000

FAMILIES = ("normal", "bernoulli", "categorical", "binomial", "poisson", "geometric", "multinomial")

#: Jumps a Normal site's value may reach the cost through; each jumps only at multiples of ½.
STEPS = {
    "floor": torch.floor,
    "round": torch.round,
    "threshold": lambda s: (s > 0).to(s.dtype),
    "sign": torch.sign,
    "where": lambda s: torch.where(s > 0.5, s + 1, s),
}
#: The reference's cells for a Normal whose value jumps: width 1/16 on [-13, 13] (every
#: jump falls on an edge), each weighted by the difference of the CDF at its edges.
JUMP_EDGES = np.arange(-13 * 16, 13 * 16 + 1) / 16.0


@dataclass(frozen=True)
class Site:
    family: str
    placement: str  # "single", "plate" or "event"
    #: (constant, coefficient of θ, coefficient of each earlier site's summary)
    coefficients: Tuple[float, ...]
    masked: bool = False
    #: Cost: coefficient of the summary and of its square.
    linear: float = 1.0
    square: float = 0.0
    #: A jump in the cost (single Normal sites): ``jump · STEPS[step](summary)``.
    jump: float = 0.0
    step: str = "floor"


@dataclass(frozen=True)
class Loop:
    coefficients: Tuple[float, ...]  # of the stopping Bernoulli's logit, as for a site
    linear: float = 1.0


@dataclass(frozen=True)
class Program:
    sites: Tuple[Site, ...]
    loop: Optional[Loop] = None
    #: Cost coefficient of the product of the first two summaries, and of θ·(first summary).
    cross: float = 0.0
    pathwise: float = 0.0

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        return run(self, theta, pyro_draws(pyro.plate("p", PLATE, dim=-1)))

    @property
    def nesting(self) -> int:
        return 1 if any(s.placement == "plate" for s in self.sites) else 0

    def describe(self) -> str:
        parts = [f"{s.family}[{s.placement}{', masked' if s.masked else ''}]{s.coefficients}"
                 + (f" + {s.jump}·{s.step}" if s.jump else "") for s in self.sites]
        if self.loop is not None:
            parts.append(f"loop{self.loop.coefficients}")
        costs = [(s.linear, s.square) for s in self.sites]
        return "; ".join(parts) + f"; f ({costs}, cross {self.cross}, θ {self.pathwise})"


def _sigmoid(x):
    return torch.sigmoid(x) if torch.is_tensor(x) else 1 / (1 + math.exp(-x))


def distribution(site: Site, a: torch.Tensor):
    """The site's distribution for a linear predictor ``a`` (any shape)."""
    if site.family == "normal":
        return dist.Normal(a, 0.5 + 0.5 * _sigmoid(a))
    if site.family == "bernoulli":
        return dist.Bernoulli(0.05 + 0.9 * _sigmoid(a))
    if site.family == "categorical":
        return dist.Categorical(logits=torch.stack([a, -a, 0.5 * a], -1))
    if site.family == "binomial":
        return dist.Binomial(BINOMIAL_N, 0.1 + 0.8 * _sigmoid(a))
    if site.family == "poisson":
        return dist.Poisson(0.2 + 2.3 * _sigmoid(a))
    if site.family == "geometric":
        return dist.Geometric(0.45 + 0.5 * _sigmoid(a))
    if site.family == "multinomial":
        return dist.Multinomial(MULTINOMIAL_N, logits=torch.stack([a, -a, 0.5 * a], -1))
    raise ValueError(site.family)


def summary(site: Site, value: torch.Tensor) -> torch.Tensor:
    """One number per particle from a site's value, shaped like a single site's value."""
    if site.family == "multinomial":
        value = value @ torch.arange(CATEGORIES, dtype=value.dtype)
    if site.placement == "plate":
        return value.sum(-1, keepdim=True)
    if site.placement == "event":
        return value.sum(-1)
    return value


Draw = Callable[[int, str, object, Site], torch.Tensor]


def run(program: Program, theta: torch.Tensor, draw: Draw) -> torch.Tensor:
    """The program, drawing each site with ``draw(index, name, distribution, site)``."""
    summaries: List[torch.Tensor] = []
    for i, site in enumerate(program.sites):
        a = site.coefficients[0] + site.coefficients[1] * theta
        for c, s in zip(site.coefficients[2:], summaries):
            a = a + c * torch.tanh(s)  # bounded, so parameters stay in range
        if site.placement == "single":
            fn = distribution(site, a)
        elif site.placement == "plate":
            fn = distribution(site, a.expand(torch.broadcast_shapes(a.shape, (PLATE,))))
        else:  # two elements as one event, right of the batch dims
            fn = distribution(site, a.unsqueeze(-1).expand(a.shape + (PLATE,))).to_event(1)
        if site.masked:
            fn = fn.mask(torch.tensor([True, False]) if site.placement == "plate" else torch.tensor(False))
        summaries.append(summary(site, draw(i, f"s{i}", fn, site)))
    f = program.pathwise * theta * summaries[0]
    for site, s in zip(program.sites, summaries):
        f = f + site.linear * s + site.square * s * s
        if site.jump:
            f = f + site.jump * STEPS[site.step](s)
    if len(summaries) > 1:
        f = f + program.cross * summaries[0] * summaries[1]
    if program.loop is not None:
        f = f + program.loop.linear * draw(len(program.sites), "loop", loop_probability(program, theta, summaries), None)
    return f


def loop_probability(program: Program, theta, summaries) -> torch.Tensor:
    c = program.loop.coefficients
    a = c[0] + c[1] * theta
    for coefficient, s in zip(c[2:], summaries):
        a = a + coefficient * torch.tanh(s)
    return 0.2 + 0.6 * _sigmoid(a)


def pyro_draws(plate) -> Draw:
    """Draw with ``pyro.sample``; plated sites share the one ``plate``."""

    def draw(index: int, name: str, fn, site: Optional[Site]) -> torch.Tensor:
        if site is None:  # the loop: draws until a Bernoulli says stop, read by Python
            n = 0
            while n < LOOP_MAX:
                b = pyro.sample(f"loop{n}", dist.Bernoulli(fn))
                if b.item() == 0:
                    break
                n += 1
            return torch.tensor(float(n))
        if site.placement == "plate":
            with plate:
                return pyro.sample(name, fn)
        return pyro.sample(name, fn)

    return draw


# ---------------------------------------------------------------- the exact reference


def element_support(site: Site) -> np.ndarray:
    """Each element's values (rows); Normals: Gauss–Hermite nodes, or for a Normal whose
    value jumps, the midpoints of fixed cells (:data:`JUMP_EDGES`): nodes that move with
    the parameters would carry no derivative through the jump."""
    if site.family == "normal" and site.jump:
        return ((JUMP_EDGES[1:] + JUMP_EDGES[:-1]) / 2)[:, None]
    if site.family == "normal":
        return np.polynomial.hermite.hermgauss(HERMITE_NODES)[0][:, None]
    if site.family == "bernoulli":
        return np.arange(2.0)[:, None]
    if site.family == "categorical":
        return np.arange(float(CATEGORIES))[:, None]
    if site.family == "binomial":
        return np.arange(BINOMIAL_N + 1.0)[:, None]
    if site.family == "poisson":
        return np.arange(POISSON_MAX + 1.0)[:, None]
    if site.family == "geometric":
        return np.arange(GEOMETRIC_MAX + 1.0)[:, None]
    counts = [c for c in itertools.product(range(MULTINOMIAL_N + 1), repeat=CATEGORIES) if sum(c) == MULTINOMIAL_N]
    return np.array(counts, dtype=float)


def site_support(site: Site) -> np.ndarray:
    """Every value of the whole site, shape ``(S, elements, event)``."""
    one = element_support(site)
    if site.placement == "single":
        return one[:, None, :]
    pairs = list(itertools.product(range(len(one)), repeat=PLATE))
    return np.stack([one[list(p)] for p in pairs])


def grid_size(program: Program) -> int:
    size = math.prod(len(site_support(s)) for s in program.sites)
    return size * (LOOP_MAX + 1 if program.loop is not None else 1)


def exact_gradient(program: Program, theta: float) -> Tuple[float, float]:
    """``(E[f], dE[f]/dθ)`` by summing over the grid of every site's values, in float64."""
    supports = [site_support(s) for s in program.sites]
    sizes = [len(s) for s in supports] + ([LOOP_MAX + 1] if program.loop is not None else [])
    index = np.indices(sizes).reshape(len(sizes), -1)
    t = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    log_w = torch.zeros(index.shape[1], dtype=torch.float64)

    def draw(i, name, fn, site):
        nonlocal log_w
        if site is None:  # the loop's count n: P(n) = q^n (1 − q) for n < max, q^max at max
            n = torch.as_tensor(index[i], dtype=torch.float64).reshape(fn.shape)
            log_q = torch.log(fn)
            log_w = log_w + (n * log_q + torch.where(n < LOOP_MAX, torch.log1p(-fn), 0.0)).reshape(-1)
            return n
        values = torch.as_tensor(supports[i][index[i]], dtype=torch.float64)  # (N, elements, event)
        if site.family != "multinomial":
            values = values.squeeze(-1)  # (N, elements)
        if site.placement == "single":
            values = values.squeeze(1)
        values = values.reshape(values.shape[:1] + (1,) * (program.nesting if site.placement != "plate" else 0) + values.shape[1:])
        if site.family == "normal" and site.jump:  # fixed midpoints, weighted by the CDF's differences
            edges = torch.as_tensor(JUMP_EDGES, dtype=torch.float64)
            cell = torch.as_tensor(index[i])
            lower, upper = edges[cell].reshape(values.shape), edges[cell + 1].reshape(values.shape)
            # Cells far in the tails have weight 0: clamped, so that their log has a zero gradient.
            leaf = fn.base_dist if isinstance(fn, dist.MaskedDistribution) else fn  # a mask never changes the draw
            log_w = log_w + torch.log((leaf.cdf(upper) - leaf.cdf(lower)).clamp(min=1e-300)).reshape(-1)
            return values
        if site.family == "normal":
            leaf = fn
            while hasattr(leaf, "base_dist"):
                leaf = leaf.base_dist
            x = values
            values = leaf.loc + leaf.scale * math.sqrt(2) * x
            node_weights = torch.as_tensor(np.polynomial.hermite.hermgauss(HERMITE_NODES)[1], dtype=torch.float64)
            weights = torch.log(node_weights / math.sqrt(math.pi))
            # the node's weight replaces the density: w_j/√π per element
            node_index = torch.as_tensor(_node_indices(supports[i], index[i]))
            log_w = log_w + weights[node_index].sum(-1)
            return values
        log_p = unmasked_log_prob(fn, values)
        log_w = log_w + log_p.reshape(log_p.shape[0], -1).sum(-1)
        return values

    f = run(program, _grid_theta(t, program, index.shape[1]), draw)
    value = (log_w.exp() * f.reshape(-1)).sum()
    (grad,) = torch.autograd.grad(value, t)
    return float(value.detach()), float(grad)


def _node_indices(support: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Which Gauss–Hermite node each element of each grid row took, shape ``(N, elements)``."""
    nodes = np.polynomial.hermite.hermgauss(HERMITE_NODES)[0]
    values = support[rows][..., 0]  # (N, elements)
    return np.abs(values[..., None] - nodes).argmin(-1)


def _grid_theta(t: torch.Tensor, program: Program, rows: int) -> torch.Tensor:
    """θ broadcast over the grid rows, shaped like a single site's value."""
    return t.expand((rows,) + (1,) * program.nesting)


def unmasked_log_prob(fn, value: torch.Tensor) -> torch.Tensor:
    """In an expectation a mask never changes what is drawn: score without it."""
    if isinstance(fn, dist.MaskedDistribution):
        fn = fn.base_dist
    return fn.log_prob(value)
