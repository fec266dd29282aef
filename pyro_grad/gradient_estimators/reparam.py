"""The pathwise (reparameterization) gradient."""

from dataclasses import dataclass
from pyro_grad.gradient_estimators.base import PathwiseEstimator, Site


@dataclass(frozen=True, repr=False)
class Reparam(PathwiseEstimator):
    """Pathwise gradient: draw ``z = g_θ(ε)`` with ``ε`` parameter-free, so that
    ``∇θ E[f(z)] = E[∇θ f(g_θ(ε))]``.

    Uses ``rsample``, including torch's implicit reparameterization (Gamma, Beta,
    Dirichlet). Applies to distributions with ``has_rsample``. Cost: 1 evaluation.
    Gradients flow through the sampled value itself, so the surrogate term is zero.

    Right only where f is smooth (or kinked) in the value: where f jumps in it the
    derivative misses the jump, so the objectives refuse the site (``jumps="raise"``)
    unless ``jumps="ignore"`` (see :class:`~pyro_grad.gradient_estimators.base.PathwiseEstimator`).
    """

    unbiased = True
    objectives = frozenset({"expectation", "elbo", "iwae"})

    @classmethod
    def applies_to(cls, site: Site) -> bool:
        return bool(getattr(site.fn, "has_rsample", False))
