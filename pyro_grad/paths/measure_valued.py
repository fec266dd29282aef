"""Measure-valued (coupled-jump) derivatives of discrete sites, in the spirit of StochasticAD.jl.

For each distribution the derivative of ``E[f(X)]`` with respect to its parameter is a
weighted difference between f at the sampled value and at one coupled
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
uniformly among those that can move, moved per particle, and its difference weighted by
their number: still unbiased. In an ELBO whose terms stay in the plate (each element's
terms depend only on its own value), every element moves in the same re-run and sees
only its own difference of f (one coordinate of an event per element). An element with probability exactly 0 or 1 is taken as
fixed (as a masked agent is); a parameter that sits exactly at 0 or 1 yet moves with θ
would be missed. Cost: 2 evaluations per particle (1 + the number of categories for
a Categorical).
"""

from dataclasses import dataclass
from typing import Any, List, Tuple

import pyro.distributions as dist
import torch

from pyro_grad.distributions import leaf_distribution, probs_of
from pyro_grad.paths.base import CoupledRuns, DifferenceEstimator, Site, SiteDraw

SUPPORTED = (dist.Bernoulli, dist.Binomial, dist.Categorical, dist.Poisson, dist.Geometric)


def choose_elements(
    value: torch.Tensor, active: torch.Tensor, layout: Any, event_dim: int = 0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """A mask picking, per particle, one *active* element of ``value`` uniformly, and the
    number of active elements per particle (aligned to broadcast against ``value``)."""
    active = active.expand(value.shape)
    shape = layout.first(value, event_dim).shape
    first = layout.first(active, event_dim).reshape(shape[0], -1).float()
    count = first.sum(1)
    if first.shape[1] == 1:
        return active.clone(), layout.align(count, event_dim)
    index = torch.multinomial(first + (count == 0).to(first.dtype).unsqueeze(1), 1).squeeze(1)
    mask = torch.nn.functional.one_hot(index, first.shape[1]).bool() & first.bool()
    return layout.natural(mask.reshape(shape), value, event_dim), layout.align(count, event_dim)


def choose_in_events(value: torch.Tensor, active: torch.Tensor, event_dim: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """A mask picking, per batch element (each particle's plate elements alike), one
    *active* coordinate of its event uniformly, and their number (shaped to broadcast
    against ``value``). Without event dims every active element is picked, once."""
    active = active.expand(value.shape)
    if event_dim == 0:
        return active.clone(), torch.ones(())
    batch = value.shape[: value.dim() - event_dim]
    flat = active.reshape(batch.numel(), -1).float()
    count = flat.sum(1)
    index = torch.multinomial(flat + (count == 0).to(flat.dtype).unsqueeze(1), 1).squeeze(1)
    mask = torch.nn.functional.one_hot(index, flat.shape[1]).bool() & flat.bool()
    return mask.reshape(value.shape), count.reshape(batch + (1,) * event_dim)


def active_elements(leaf: Any, value: torch.Tensor) -> torch.Tensor:
    """Elements that can move: a Bernoulli, Binomial or Geometric whose probability is
    exactly 0 or 1 is deterministic here, and is treated as fixed (its derivative is
    taken to be zero, as for a masked agent)."""
    if isinstance(leaf, (dist.Bernoulli, dist.Binomial, dist.Geometric)):
        p = probs_of(leaf).detach().expand(value.shape)
        return (p > 0) & (p < 1)
    return torch.ones(value.shape, dtype=torch.bool)


@dataclass(frozen=True, repr=False)
class MeasureValued(DifferenceEstimator):
    """Measure-valued derivative of a discrete site (table in the module docs).
    Unbiased; cost 2 evaluations per particle (a Categorical: one per category, plus 1)."""

    unbiased = True

    @classmethod
    def applies_to(cls, site: Site) -> bool:
        fn = site.fn
        return isinstance(leaf_distribution(fn), SUPPORTED) and not isinstance(fn, dist.MaskedDistribution)

    def runs(self, site: Site) -> int:
        leaf = leaf_distribution(site.fn)
        return 1 + probs_of(leaf).shape[-1] if isinstance(leaf, dist.Categorical) else 2

    def alternatives(self, draw: SiteDraw) -> Tuple[List[torch.Tensor], Any]:
        fn, value = draw.fn, draw.value
        leaf = leaf_distribution(fn)
        active, event_dim = active_elements(leaf, value), len(fn.event_shape)
        if draw.local:  # each plate element sees only its own move: move them all at once
            mask, elements = choose_in_events(value, active, event_dim)
        else:
            mask, elements = choose_elements(value, active, draw.layout, event_dim)
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

    def alternative_terms(self, runs: CoupledRuns) -> torch.Tensor:
        fn, value, layout = runs.draw.fn, runs.draw.value, runs.draw.layout
        mask, elements = runs.state
        leaf = leaf_distribution(fn)
        e = len(fn.event_shape)
        weight = mask.float() * elements
        if isinstance(leaf, dist.Categorical):
            probs = probs_of(leaf)  # (batch..., k)
            f = torch.stack([runs.at_value(c) * weight for c in runs.alternative_f], -1)
            return layout.reduce(((probs - probs.detach()) * f.detach()).sum(-1), e)
        delta = runs.at_value(runs.alternative_f[0] - runs.f) * weight
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
        return layout.reduce((eta - eta.detach()) * d.detach(), e)
