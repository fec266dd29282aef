"""Double control variates for Bernoulli sites: leave-one-out plus a Taylor term, unbiased.

Titsias & Shi (AISTATS 2022) add a second control variate to the leave-one-out
score function (RLOO). For K particles ``b_k`` of independent Bernoullis with
probabilities ``θ``, values ``f_k`` and value gradients ``g_k = ∇_b f(b_k)`` (f at the
discrete draw, differentiated as a function of a continuous input):

    c_k = α · ḡ_{−k} · (b_k − θ),           ḡ_{−k} = mean_{j≠k} g_j,
    ĝ   = (1/K) Σ_k (f_k + c_k − mean_{j≠k}(f_j + c_j)) ∇log q(b_k) − α · ḡ ⊙ ∂θ,

with ``ḡ = mean_k g_k``: a first-order Taylor expansion of f around θ whose slope is the
other particles' gradients, and its exact expectation ``E[c_k ∇log q(b_k)] = α ḡ ⊙ ∂θ``
subtracted. Unbiased for every α (``b_k − θ`` has mean zero given everything else, and
``E[ḡ] = E[ḡ_{−k}]``), and for any f: where f is not differentiable in the value its
gradient is zero and the estimator is RLOO. ``α`` starts at 0 (RLOO) and is trained
online to minimize the variance, by an auxiliary loss ``Σ ĝ²`` on the logits (zero in
value) that reaches α alone, as the authors' code does. It is the ``pyro.param``
``_pyro_grad_doublecv_<site>.alpha``: saved with the param store, reset by
``pyro.clear_param_store()``.

A term of f that stays in a plate element has its own Taylor term (the dot product
runs over the element's event), so a latent per datum gets the per-datum estimator.
Cost: 1 evaluation per particle, as RLOO, plus one backward for the value gradients;
needs K ≥ 2 particles.
"""

from dataclasses import dataclass
from typing import Tuple

import pyro
import torch

from pyro_grad.baselines import leave_one_out
from pyro_grad.gradient_estimators.base import ScoreSite
from pyro_grad.gradient_estimators.value_gradient import LeaveOneOutWithGradients, per_unit_f

#: Param-store prefix of the Taylor term's coefficient, followed by the site's name.
PREFIX = "_pyro_grad_doublecv_"


@dataclass(frozen=True, repr=False)
class DoubleCV(LeaveOneOutWithGradients):
    """Double control variates (Titsias & Shi 2022): RLOO with the Taylor term
    ``α ḡ_{−k}·(b_k − θ)`` and its expectation subtracted, α learned (module docs).
    Unbiased. Cost: 1 evaluation per particle; K ≥ 2."""

    def surrogate(self, site: ScoreSite) -> Tuple[torch.Tensor, torch.Tensor]:
        name, score, f, draw = site.name, site.score, site.f, site.draw
        num_particles = site.num_particles
        self.check_particles(name, num_particles)
        alpha = pyro.param(PREFIX + name + ".alpha", lambda: torch.zeros(()))
        probs = draw.probs
        theta = probs.detach()
        centered = draw.value - theta
        f = per_unit_f(f, centered)  # one f per unit of elements
        slope = leave_one_out(draw.gradient)  # ḡ_{−k}
        taylor = (slope * centered).sum_to_size(f.shape)

        def estimate(a: torch.Tensor) -> torch.Tensor:
            corrected = f + a * taylor
            return corrected - leave_one_out(corrected)

        def per_group(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], -1).sum(1) / num_particles

        # Each particle's own E[c_k ∇log q(b_k)] = α ḡ_{−k} ⊙ ∂θ_k, so θ may differ by
        # particle (when it depends on earlier draws).
        advantage = estimate(alpha.detach())
        term = per_group((score - score.detach()) * advantage.reshape(advantage.shape[: score.dim()]))
        term = term - per_group(alpha.detach() * slope * (probs - theta))
        # The variance of ĝ on the logits, differentiable in α alone.
        on_logits = (estimate(alpha) * centered - alpha * slope * theta * (1 - theta)).mean(1)
        return term, on_logits.pow(2).reshape(score.shape[0], -1).sum(1)
