"""The pathwise (reparameterization) gradient."""

from dataclasses import dataclass
from typing import Any

from pyro_grad.paths.base import Estimator


@dataclass(frozen=True, repr=False)
class Reparam(Estimator):
    """Pathwise gradient: draw ``z = g_θ(ε)`` with ``ε`` parameter-free, so that
    ``∇θ E[f(z)] = E[∇θ f(g_θ(ε))]``.

    Uses ``rsample``, including torch's implicit reparameterization (Gamma, Beta,
    Dirichlet). Applies to distributions with ``has_rsample``. Cost: 1 evaluation.
    Gradients flow through the sampled value itself, so the surrogate term is zero.
    """

    unbiased = True
    cost = 1

    @classmethod
    def applies_to(cls, fn: Any) -> bool:
        return bool(getattr(fn, "has_rsample", False))
