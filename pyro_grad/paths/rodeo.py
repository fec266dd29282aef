"""RODEO for Bernoulli sites: control variates from a discrete Stein operator, unbiased.

Shi, Zhou, Hwang, Titsias & Mackey (NeurIPS 2022). For a Markov kernel that leaves
``q`` invariant, ``(A h)(x) = E_{y ~ K(x, ·)}[h(y)] − h(x)`` has ``E_q[A h] = 0`` for every
``h``. With the random-scan Gibbs kernel on ``D`` independent Bernoulli coordinates,
``(A h)(x) = (1/D) Σ_i w_i (h(y⁽ⁱ⁾) − h(x))``, where ``y⁽ⁱ⁾`` is ``x`` with bit ``i``
flipped and ``w_i = q(y⁽ⁱ⁾_i)`` the probability of its flipped value. For K particles:

    ĝ = (1/K) Σ_k [ (f_k − mean_{j≠k}(f_j + α·(A h⁰_j)(b_j))) ∇log q(b_k) + β·(A H_k)(b_k) ],

``H_k(x) = h¹_k(x)·(x − θ)`` on the logits. The surrogate ``h_k = (h⁰_k, h¹_k)`` is a
network of two scalars: a linearization of f around the *other* particles,
``s_k(x) = mean_{j≠k} g_j·(x − b_j)`` with ``g_j = ∇_b f(b_j)``, and ``c_k = mean_{j≠k} f_j``
(the authors' ``avg`` inputs). Because ``h_k`` never sees ``b_k``, each Stein term has
mean zero given the other particles: unbiased for every α, β and network. The
neighbours go through the network only, never through f.

``α`` and ``β`` start at 0 (RLOO) and, with the network (one hidden layer of 100
leaky-ReLU units, Glorot-uniform weights, as the authors'), train online to minimize
the variance by an auxiliary loss ``Σ ĝ²`` on the logits (zero in value) that reaches
them alone. State: the ``pyro.param``s ``_pyro_grad_rodeo_<site>.alpha``, ``.beta``,
``.w1``, ``.b1``, ``.w2``, ``.b2``, saved with the param store and reset by
``pyro.clear_param_store()``.

Cost: 1 evaluation per particle, as RLOO, plus one backward for the value gradients and
the network at ``K·(D + 1)`` points per unit; needs K ≥ 2 particles.
"""

from dataclasses import dataclass
from typing import List, Optional, Tuple

import pyro
import torch

from pyro_grad.baselines import RunningAverages, leave_one_out
from pyro_grad.paths.base import ValueGradient
from pyro_grad.paths.value_gradient import LeaveOneOutWithGradients, per_unit_f, units

PREFIX = "_pyro_grad_rodeo_"
HIDDEN = 100


def glorot(fan_in: int, fan_out: int) -> torch.Tensor:
    limit = (6 / (fan_in + fan_out)) ** 0.5
    return (2 * torch.rand(fan_in, fan_out) - 1) * limit


@dataclass(frozen=True, repr=False)
class RODEO(LeaveOneOutWithGradients):
    """RODEO (Shi et al. 2022): RLOO with a Gibbs-Stein control variate in the baseline
    (α) and on the gradient (β), from a learned surrogate of the other particles'
    linearization of f (module docs). Unbiased. Cost: 1 evaluation per particle; K ≥ 2."""

    def surrogate(
        self,
        name: str,
        score: torch.Tensor,
        f: torch.Tensor,
        args: tuple = (),
        kwargs: dict = None,
        averages: Optional[RunningAverages] = None,
        draw: Optional[ValueGradient] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        num_particles = score.shape[1]
        self.check_particles(name, num_particles)
        alpha, beta, weights = self._parameters(name)
        f = per_unit_f(f, draw.value)
        shape = torch.broadcast_shapes(draw.value.shape, draw.probs.shape)
        b, theta, g, logits = (units(t.expand(shape), f.shape) for t in
                               (draw.value, draw.probs.detach(), draw.gradient, draw.logits))
        f_units = units(f, f.shape)  # (G, K, U, 1)
        flip = 1 - 2 * b  # y⁽ⁱ⁾_i − b_i
        w = theta * (1 - b) + (1 - theta) * b  # q(flipped bit)
        centered = b - theta
        # s_k at b_k and at its D neighbours, and c_k: the network's two inputs.
        slope = leave_one_out(g)
        s_at_b = (slope * b).sum(-1, keepdim=True) - leave_one_out((g * b).sum(-1, keepdim=True))
        s = torch.cat([s_at_b, s_at_b + slope * flip], -1)  # (G, K, U, D + 1)
        c = leave_one_out(f_units).expand(s.shape)

        h = self._network(weights, s, c)  # (G, K, U, D + 1, 2), differentiable in the weights

        def estimate(a: torch.Tensor, bt: torch.Tensor, h: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
            h0_b, h0_y = h[..., :1, 0], h[..., 1:, 0]
            h1_b, h1_y = h[..., :1, 1], h[..., 1:, 1]
            dimension = b.shape[-1]
            stein_baseline = (w * (h0_y - h0_b)).sum(-1, keepdim=True) / dimension  # (A h⁰)(b)
            # (A H)(b)_d = (1/D)[(b_d − θ_d) Σ_i w_i (h¹(y⁽ⁱ⁾) − h¹(b)) + w_d h¹(y⁽ᵈ⁾) flip_d]
            stein_gradient = (centered * (w * (h1_y - h1_b)).sum(-1, keepdim=True) + w * h1_y * flip) / dimension
            return f_units - leave_one_out(f_units + a * stein_baseline), bt * stein_gradient

        advantage, stein_gradient = estimate(alpha.detach(), beta.detach(), h.detach())
        term = (score - score.detach()) * advantage.reshape(f.shape).reshape(f.shape[: score.dim()])
        term = term.reshape(score.shape[0], -1).sum(1)
        term = term + ((logits - logits.detach()) * stein_gradient).reshape(score.shape[0], -1).sum(1)
        term = term / num_particles
        # The variance of ĝ on the logits, differentiable in α, β and the network alone.
        advantage, stein_gradient = estimate(alpha, beta, h)
        on_logits = (advantage * centered + stein_gradient).mean(1)
        return term, on_logits.pow(2).reshape(score.shape[0], -1).sum(1)

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
