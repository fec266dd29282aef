"""Measure-valued (coupled-jump) derivatives of discrete sites, in the spirit of StochasticAD.jl.

For each distribution the derivative of ``E[f(X)]`` with respect to its parameter is a
weighted difference between the cost at the sampled value and at one coupled
alternative, derived from the jump the inverse-CDF coupling makes under a small change
of the parameter:

=============================  ================  ==========================================
distribution                   parameter η       ∂η E[f(X)]
=============================  ================  ==========================================
Bernoulli(p)                   probs             E[f(1) − f(0)]  (alternative 1 − X)
Binomial(n, p)                 probs             E[(n − X)/(1 − p) · (f(X + 1) − f(X))]
Poisson(λ)                     rate              E[f(X + 1) − f(X)]
Geometric(p) (failures)        probs             E[X/(p(1 − p)) · (f(X − 1) − f(X))]
Categorical(π)                 probs             ∂π_k: f(k), every category run (E over X
                                                 is exact: Σ_k ∂π_k f(k))
=============================  ================  ==========================================

No score function: when the alternative run shares the first run's randomness the
difference has low variance, and it is exactly 0 where f does not depend on the site.
A site with several elements per particle (inside a plate) has one element, chosen
uniformly, moved per particle, and its difference weighted by the number of elements:
still unbiased. Cost: 2 evaluations per particle (1 + the number of categories for
a Categorical).
"""

from dataclasses import dataclass
from typing import Any, List, Tuple

import pyro.distributions as dist
import torch

from pyro_grad.paths.base import DifferenceEstimator
from pyro_grad.paths.parameters import probs_of
from pyro_grad.site_tangent import leaf_distribution

SUPPORTED = (dist.Bernoulli, dist.Binomial, dist.Categorical, dist.Poisson, dist.Geometric)


def choose_elements(value: torch.Tensor, layout: Any) -> Tuple[torch.Tensor, int]:
    """A mask picking one element of ``value`` per particle, uniformly, and the number of
    elements per particle."""
    first = layout.first(value)
    elements = first[0].numel() if first.dim() > 1 else 1
    if elements == 1:
        return torch.ones_like(value, dtype=torch.bool), 1
    index = torch.randint(elements, (first.shape[0],))
    mask = torch.nn.functional.one_hot(index, elements).bool().reshape(first.shape)
    return layout.natural(mask, value), elements


@dataclass(frozen=True, repr=False)
class MeasureValued(DifferenceEstimator):
    """Measure-valued derivative of a discrete site (table in the module docs).
    Unbiased; cost 2 evaluations per particle (a Categorical: one per category, plus 1)."""

    unbiased = True
    cost = 2

    @classmethod
    def applies_to(cls, fn: Any) -> bool:
        return isinstance(leaf_distribution(fn), SUPPORTED) and not isinstance(fn, dist.MaskedDistribution)

    def alternatives(self, name: str, fn: Any, value: torch.Tensor, layout: Any) -> Tuple[List[torch.Tensor], Any]:
        leaf = leaf_distribution(fn)
        mask, elements = choose_elements(value, layout)
        if isinstance(leaf, dist.Categorical):
            categories = leaf.probs.shape[-1]
            alts = [torch.where(mask, torch.full_like(value, k), value) for k in range(categories)]
            return alts, (mask, elements)
        if isinstance(leaf, dist.Bernoulli):
            moved = 1 - value
        elif isinstance(leaf, dist.Geometric):
            moved = (value - 1).clamp(min=0)
        elif isinstance(leaf, dist.Binomial):
            moved = torch.minimum(value + 1, leaf.total_count.expand(value.shape).to(value.dtype))
        else:  # Poisson
            moved = value + 1
        return [torch.where(mask, moved, value)], (mask, elements)

    def alternative_terms(self, name, fn, value, cost, alternative_costs, state, layout) -> torch.Tensor:
        mask, elements = state
        leaf = leaf_distribution(fn)
        weight = mask.to(value.dtype) * elements
        if isinstance(leaf, dist.Categorical):
            probs = probs_of(leaf)  # (batch..., k)
            f = torch.stack([layout.align(c) * weight for c in alternative_costs], -1)
            return layout.reduce(((probs - probs.detach()) * f.detach()).sum(-1))
        delta = layout.align(alternative_costs[0] - cost) * weight
        if isinstance(leaf, dist.Poisson):
            eta, d = leaf.rate, delta
        else:
            eta = p = probs_of(leaf)
            if isinstance(leaf, dist.Bernoulli):
                d = (1 - 2 * value) * delta
            elif isinstance(leaf, dist.Binomial):
                d = (leaf.total_count - value) / (1 - p.detach()) * delta
            else:  # Geometric
                d = value / (p.detach() * (1 - p.detach())) * delta
        eta = eta.expand(value.shape)
        return layout.reduce((eta - eta.detach()) * d.detach())
