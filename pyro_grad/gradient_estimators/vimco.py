"""VIMCO: the score-function gradient of the importance-weighted bound, with
leave-one-out learning signals."""

import math
from dataclasses import dataclass
from typing import List

import pyro.distributions as dist
import torch

from pyro_grad.distributions import leaf_distribution
from pyro_grad.engine.importance_weights import log_mean_exp
from pyro_grad.errors import EstimatorError
from pyro_grad.gradient_estimators.base import Example, ScoreEstimator, Site


def leave_one_out_bounds(log_weights: torch.Tensor) -> torch.Tensor:
    """``L^{-k} = log (1/K) (Σ_{j≠k} w_j + ŵ_{-k})`` for every particle ``k`` (axis 1 of
    ``log_weights``), where ``log ŵ_{-k}`` is the mean of the other log-weights: the bound
    with particle ``k``'s weight replaced by the others' geometric mean. ``O(K²)`` per
    element, as the authors compute it; stable where ``Σ w − w_k`` would cancel."""
    k = log_weights.shape[1]
    others_mean = (log_weights.sum(1, keepdim=True) - log_weights) / (k - 1)
    # (G, K, K, ...): row k holds every log-weight, its own replaced by the others' mean.
    rows = log_weights.unsqueeze(1).expand(log_weights.shape[:1] + (k,) + log_weights.shape[1:])
    own = torch.eye(k, dtype=torch.bool).reshape((1, k, k) + (1,) * (log_weights.dim() - 2))
    rows = torch.where(own, others_mean.unsqueeze(2), rows)
    return torch.logsumexp(rows, 2) - math.log(k)


@dataclass(frozen=True, repr=False)
class VIMCO(ScoreEstimator):
    """VIMCO (Mnih & Rezende, ICML 2016): the IWAE bound's score-function gradient with a
    per-particle baseline.

    ``∇L = Σ_k (L − L^{-k}) ∇log q(z_k) + Σ_k w̃_k ∇log w_k``, with ``L = log (1/K) Σ_j w_j``,
    ``w̃_k = w_k / Σ_j w_j``, and ``L^{-k}`` the bound with ``w_k`` replaced by the
    geometric mean of the other weights (:func:`leave_one_out_bounds`). ``L^{-k}`` does
    not depend on ``z_k``, so the estimate is unbiased.

    Applies in :class:`~pyro_grad.IWAE` only (the bound's learning signals), to every
    distribution with a density or mass function, with K ≥ 2 particles. Cost: 1
    evaluation; the signals add ``O(K²)`` work per plate element.
    """

    unbiased = True
    min_particles = 2
    objectives = frozenset({"iwae"})

    @classmethod
    def applies_to(cls, site: Site) -> bool:
        return not isinstance(leaf_distribution(site.fn), dist.Delta)

    @classmethod
    def examples_for(cls, site: Site, exact_value: bool = False) -> List[Example]:
        return [Example("VIMCO, K=4", cls(), 4)]

    def importance_signal(self, name: str, log_weights: torch.Tensor) -> torch.Tensor:
        """``L − L^{-k}`` for every particle, from the log-weights ``(G, K, ...)``."""
        if log_weights.shape[1] < 2:
            raise EstimatorError(
                f"VIMCO() at site '{name}' needs num_particles >= 2 for its leave-one-out bounds, got "
                f"{log_weights.shape[1]}; use Score() at one particle"
            )
        return log_mean_exp(log_weights, 1).unsqueeze(1) - leave_one_out_bounds(log_weights)
