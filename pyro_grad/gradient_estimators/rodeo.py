"""RODEO: control variates from a discrete Stein operator, unbiased.

Shi, Zhou, Hwang, Titsias & Mackey (NeurIPS 2022). For a Markov kernel that leaves
``q`` invariant, ``(A h)(x) = E_{y ~ K(x, ·)}[h(y)] − h(x)`` has ``E_q[A h] = 0`` for every
``h``. With the random-scan Gibbs kernel on ``D`` independent coordinates, each a
one-hot vector over ``C`` categories (a Bernoulli is ``C = 2``):

    (A h)(x) = (1/D) Σ_i Σ_{c ≠ x_i} π_{i,c} (h(y⁽ⁱᶜ⁾) − h(x)),

where ``y⁽ⁱᶜ⁾`` is ``x`` with coordinate ``i`` set to category ``c``, and ``π_{i,c}`` its
probability (for a Bernoulli, the one neighbour per coordinate is the flipped bit). For
K particles:

    ĝ = (1/K) Σ_k [ (f_k − mean_{j≠k}(f_j + α·(A h⁰_j)(x_j))) ∇log q(x_k) + β·(A H_k)(x_k) ],

``H_k(x) = h¹_k(x)·(x − π)`` on the logits (``∇_logits log q(x) = x − π``), so that

    (A H)(x)_d = (1/D) [ (x_d − π_d) Σ_{i,c≠x_i} π_{i,c}(h¹(y⁽ⁱᶜ⁾) − h¹(x)) + Σ_{c≠x_d} π_{d,c} h¹(y⁽ᵈᶜ⁾)(e_c − x_d) ].

The surrogate ``h_k = (h⁰_k, h¹_k)`` is a network of two scalars: a linearization of f
around the *other* particles, ``s_k(x) = mean_{j≠k} g_j·(x − x_j)`` with ``g_j = ∇_x f(x_j)``,
and ``c_k = mean_{j≠k} f_j``: the authors' ``avg`` inputs, which they use at K = 2. For
K > 2 they average the network's outputs over j instead (``output_avg``); that costs
K − 1 times the network evaluations and memory (it ran out of memory on our SIR model's
diagnostics), so we keep the inputs' average at every K. Because ``h_k`` never sees
``x_k``, each Stein term has mean zero given the other particles: unbiased for every α,
β and network, either way. The neighbours go through the network only, never through f.

The authors' code is binary (single bit flips); the categorical form is the same Gibbs
operator over every other category of each coordinate. A ``OneHotCategorical`` site's
value gradient is ∇ of f in the one-hot value. A ``Categorical`` site's draw reaches
the program as a float index (exact integers), so that f can be differentiated in it:
the linearization is then in the index, ``g_{j,c} = c·∂f/∂x_j``; a program that indexes
with the draw is told to use a ``OneHotCategorical`` instead.

``α`` and ``β`` start at 0 (RLOO) and, with the network (one hidden layer of 100
leaky-ReLU units, Glorot-uniform weights, as the authors'), train online to minimize
the variance by an auxiliary loss ``Σ ĝ²`` on the logits (zero in value) that reaches
them alone. State: the ``pyro.param``s ``_pyro_grad_rodeo_<site>.alpha``, ``.beta``,
``.w1``, ``.b1``, ``.w2``, ``.b2``, saved with the param store and reset by
``pyro.clear_param_store()``.

Cost: 1 evaluation per particle, as RLOO, plus one backward for the value gradients and
the network at ``K·(1 + D·(C − 1))`` points per unit; needs K ≥ 2 particles.
"""

from dataclasses import dataclass
from typing import List, NamedTuple, Tuple

import pyro
import pyro.distributions as dist
import torch

from pyro_grad.baselines import leave_one_out
from pyro_grad.gradient_estimators.base import ScoreSite, ValueGradient
from pyro_grad.gradient_estimators.value_gradient import LeaveOneOutWithGradients, per_unit_f, units
from pyro_grad.one_hot import one_hot

PREFIX = "_pyro_grad_rodeo_"
HIDDEN = 100


def glorot(fan_in: int, fan_out: int) -> torch.Tensor:
    limit = (6 / (fan_in + fan_out)) ** 0.5
    return (2 * torch.rand(fan_in, fan_out) - 1) * limit


class OneHot(NamedTuple):
    """A site's particles in one-hot form, grouped into units: the draws ``x``, their
    probabilities ``pi`` (detached) and value gradients ``g``, each ``(G, K, U, D, C)``;
    the values of f, ``(G, K, U, 1)``, and their shape before grouping into units
    (``f_shape``, broadcastable to the draws); the site's ``logits`` as units
    (``(G, K, U, D)`` for a Bernoulli, else with ``C`` last); and whether the site is
    ``binary``."""

    x: torch.Tensor
    pi: torch.Tensor
    g: torch.Tensor
    f: torch.Tensor
    f_shape: torch.Size
    logits: torch.Tensor
    binary: bool

    def on_logits(self, t: torch.Tensor) -> torch.Tensor:
        """A ``(…, D, C)`` gradient on the one-hot logits as one on the site's own: a
        Bernoulli's logit is category 1's, category 0's held at zero."""
        return t[..., 1] if self.binary else t

    @classmethod
    def of(cls, draw: ValueGradient, f: torch.Tensor) -> "OneHot":
        if draw.family == "bernoulli":
            f = per_unit_f(f, draw.value)
            shape = torch.broadcast_shapes(draw.value.shape, draw.probs.shape)
            b, theta, g, logits = (units(t.expand(shape), f.shape) for t in
                                   (draw.value, draw.probs.detach(), draw.gradient, draw.logits))
            return cls(torch.stack([1 - b, b], -1), torch.stack([1 - theta, theta], -1),
                       torch.stack([torch.zeros_like(g), g], -1), units(f, f.shape), f.shape, logits, True)
        pi = draw.probs.detach()
        categories = pi.shape[-1]
        if draw.family == "one_hot":
            x, g = draw.value, draw.gradient
            f = per_unit_f(f, x[..., 0])
        else:  # an index drawn as a float, linearized in the index: ∂f/∂x_c = c·∂f/∂index
            x = one_hot(draw.value, categories, pi.dtype)
            g = draw.gradient.unsqueeze(-1) * torch.arange(categories, dtype=pi.dtype)
            f = per_unit_f(f, draw.value)
        shape = torch.broadcast_shapes(x.shape, pi.shape)
        x, pi, g, logits = (units(t.expand(shape), f.shape, categories=True) for t in (x, pi, g, draw.logits))
        return cls(x, pi, g, units(f, f.shape), f.shape, logits, False)


@dataclass(frozen=True, repr=False)
class RODEO(LeaveOneOutWithGradients):
    """RODEO (Shi et al. 2022): RLOO with a Gibbs-Stein control variate in the baseline
    (α) and on the gradient (β), from a learned surrogate of the other particles'
    linearization of f (module docs). Bernoulli, Categorical and OneHotCategorical
    sites. Unbiased. Cost: 1 evaluation per particle; K ≥ 2."""

    families = (dist.Bernoulli, dist.Categorical, dist.OneHotCategorical)

    def surrogate(self, site: ScoreSite) -> Tuple[torch.Tensor, torch.Tensor]:
        name, score, f, draw = site.name, site.score, site.f, site.draw
        num_particles = site.num_particles
        self.check_particles(name, num_particles)
        alpha, beta, weights = self._parameters(name)
        one_hot = OneHot.of(draw, f)
        x, pi, f_units = one_hot.x, one_hot.pi, one_hot.f
        dimension, categories = x.shape[-2:]
        centered = x - pi  # ∇_logits log q(x)
        # The neighbours y⁽ⁱᶜ⁾ of x: every other category c = x_i + 1, …, x_i + C − 1 (mod C)
        # of every coordinate i, (G, K, U, D, C − 1); a Bernoulli's one flipped bit.
        other = (x.argmax(-1, keepdim=True) + torch.arange(1, categories)) % categories
        w = pi.gather(-1, other)  # π_{i,c}
        # s_k at x_k and at its neighbours, and c_k: the network's two inputs.
        slope = leave_one_out(one_hot.g)  # (G, K, U, D, C)
        own_slope = (slope * x).sum(-1, keepdim=True)  # at each coordinate's own category
        s_at_x = own_slope.sum(-2) - leave_one_out((one_hot.g * x).sum((-2, -1)).unsqueeze(-1))
        s_at_y = s_at_x.unsqueeze(-1) + slope.gather(-1, other) - own_slope
        s = torch.cat([s_at_x, s_at_y.flatten(-2)], -1)  # (G, K, U, 1 + D·(C − 1))
        c = leave_one_out(f_units).expand(s.shape)
        h = self._network(weights, s, c)  # (G, K, U, 1 + D·(C − 1), 2), differentiable in the weights

        def estimate(a: torch.Tensor, bt: torch.Tensor, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
            h0_x, h0_y = h[..., :1, 0].unsqueeze(-1), h[..., 1:, 0].unflatten(-1, other.shape[-2:])
            h1_x, h1_y = h[..., :1, 1].unsqueeze(-1), h[..., 1:, 1].unflatten(-1, other.shape[-2:])
            stein_baseline = (w * (h0_y - h0_x)).sum((-2, -1)).unsqueeze(-1) / dimension  # (A h⁰)(x)
            # (A H)(x)_d = (1/D)[(x_d − π_d) Σ_{i,c≠x_i} π_{i,c}(h¹(y⁽ⁱᶜ⁾) − h¹(x))
            #                    + Σ_{c≠x_d} π_{d,c} h¹(y⁽ᵈᶜ⁾)(e_c − x_d)]
            spread = (w * (h1_y - h1_x)).sum((-2, -1))[..., None, None]
            moved = torch.zeros_like(x).scatter(-1, other, w * h1_y)  # π_{d,c} h¹(y⁽ᵈᶜ⁾) at category c
            stein_gradient = (centered * spread + moved - x * moved.sum(-1, keepdim=True)) / dimension
            return f_units - leave_one_out(f_units + a * stein_baseline), bt * one_hot.on_logits(stein_gradient)

        def per_group(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(score.shape[0], -1).sum(1)

        advantage, stein_gradient = estimate(alpha.detach(), beta.detach(), h.detach())
        per_element = advantage.reshape(one_hot.f_shape).reshape(one_hot.f_shape[: score.dim()])
        term = per_group((score - score.detach()) * per_element)
        term = term + per_group((one_hot.logits - one_hot.logits.detach()) * stein_gradient)
        term = term / num_particles
        # The variance of ĝ on the logits, differentiable in α, β and the network alone.
        advantage, stein_gradient = estimate(alpha, beta, h)
        if not one_hot.binary:  # a category axis on the logits
            advantage = advantage.unsqueeze(-1)
        on_logits = advantage * one_hot.on_logits(centered) + stein_gradient
        return term, on_logits.mean(1).pow(2).reshape(score.shape[0], -1).sum(1)

    @staticmethod
    def _network(weights: List[torch.Tensor], s: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = weights
        inputs = torch.stack([s, c], -1)
        return torch.nn.functional.leaky_relu(inputs @ w1 + b1, 0.3) @ w2 + b2

    @staticmethod
    def _parameters(site: str) -> Tuple[torch.Tensor, torch.Tensor, List[torch.Tensor]]:
        name = PREFIX + site
        alpha = pyro.param(f"{name}.alpha", lambda: torch.zeros(()))
        beta = pyro.param(f"{name}.beta", lambda: torch.zeros(()))
        weights = [
            pyro.param(f"{name}.w1", lambda: glorot(2, HIDDEN)),
            pyro.param(f"{name}.b1", lambda: torch.zeros(HIDDEN)),
            pyro.param(f"{name}.w2", lambda: glorot(HIDDEN, 2)),
            pyro.param(f"{name}.b2", lambda: torch.zeros(2)),
        ]
        return alpha, beta, weights
