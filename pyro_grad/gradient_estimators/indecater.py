"""IndeCateR for Bernoulli and Categorical sites: every category of every coordinate, unbiased.

For ``x = (x_1, …, x_D)`` with independent coordinates ``x_d ~ Cat(π_d)`` (a Bernoulli is
two categories), De Smet, Sansone & Zuidberg Dos Martires (NeurIPS 2023) write

    ∇ E[f(x)] = Σ_d E_x[ Σ_c ∇π_{d,c} · f(x_{−d}, c) ],

each coordinate's own category summed out exactly while the others keep their sampled
values. Since ``Σ_c ∇π_{d,c} = 0`` the sampled category's term can be replaced by
``f(x)``, so only the ``C − 1`` other categories need a run per coordinate: the
estimate is ``Σ_d Σ_{c ≠ x_d} ∇π_{d,c} · (f(x_{−d}, c) − f(x))``.

``num_coordinates=m`` runs only ``m`` of the ``D`` coordinates per particle, chosen
uniformly without replacement, each weighted by ``D/m``: still unbiased, for sites
too large to sum. In an ELBO whose terms stay in the site's plates each plate element
sees only its own difference, so the elements of a plate share their runs and ``D``
counts the coordinates of one element's event.

Cost: ``1 + min(m, D)·(C − 1)`` evaluations per particle (``m = D`` when not given),
with ``D`` the site's elements per particle times its event size.
"""

import numbers
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import pyro.distributions as dist
import torch

from pyro_grad.distributions import leaf_distribution, probs_of
from pyro_grad.errors import EstimatorError
from pyro_grad.gradient_estimators.base import CoupledRuns, DifferenceEstimator, Example, Site, SiteDraw
from pyro_grad.one_hot import one_hot

SUPPORTED = (dist.Bernoulli, dist.Categorical)
#: The benchmark suite runs the exact sum up to this many extra runs per particle.
EXACT_RUNS = 16


def categories(leaf: Any) -> int:
    """The number of categories of a Bernoulli (2) or Categorical site."""
    return 2 if isinstance(leaf, dist.Bernoulli) else probs_of(leaf).shape[-1]


def probability_of(leaf: Any, value: torch.Tensor) -> torch.Tensor:
    """``π_{d, value_d}`` for every element: the probability of the given categories."""
    if isinstance(leaf, dist.Bernoulli):
        p = probs_of(leaf).expand(value.shape)
        return torch.where(value == 1, p, 1 - p)
    probs = probs_of(leaf)
    probs = probs.expand(value.shape + probs.shape[-1:])
    return probs.gather(-1, value.long().unsqueeze(-1)).squeeze(-1)


def coordinate_masks(units: torch.Size, chosen: Optional[int]) -> Tuple[List[torch.Tensor], float]:
    """Masks over a ``(N, D)`` view, one per run: the exact sum's one-hot per coordinate,
    or ``chosen`` coordinates drawn per row without replacement; and each run's weight."""
    rows, coordinates = units
    if chosen is None or chosen >= coordinates:
        eye = torch.eye(coordinates, dtype=torch.bool)
        return [eye[d].expand(rows, coordinates) for d in range(coordinates)], 1.0
    picks = torch.rand(rows, coordinates).argsort(1)[:, :chosen]
    return [one_hot(picks[:, r], coordinates) for r in range(chosen)], coordinates / chosen


@dataclass(frozen=True, repr=False)
class IndeCateR(DifferenceEstimator):
    """IndeCateR (De Smet et al. 2023): ``Σ_d Σ_{c≠x_d} ∇π_{d,c} (f(x_{−d}, c) − f(x))``,
    every coordinate or ``num_coordinates`` of them at random (module docs). Unbiased.
    Cost: ``1 + min(m, D)·(C − 1)`` evaluations per particle."""

    num_coordinates: Optional[int] = None

    unbiased = True

    def __post_init__(self) -> None:
        m = self.num_coordinates
        if m is not None and (isinstance(m, bool) or not isinstance(m, numbers.Real) or m < 1 or m != int(m)):
            raise EstimatorError(f"IndeCateR(num_coordinates={m!r}): num_coordinates must be None or a positive integer")
        if m is not None:
            object.__setattr__(self, "num_coordinates", int(m))

    @classmethod
    def applies_to(cls, site: Site) -> bool:
        fn = site.fn
        return isinstance(leaf_distribution(fn), SUPPORTED) and not isinstance(fn, dist.MaskedDistribution)

    @classmethod
    def examples_for(cls, site: Site, exact_value: bool = False) -> List[Example]:
        # The exact sum where it is cheap; else one coordinate per particle, whose cost
        # (2 evaluations for a Bernoulli) matches the pairs of DisARM and MeasureValued.
        runs = (site.elements // max(site.plated, 1)) * site.fn.event_shape.numel()
        runs *= categories(leaf_distribution(site.fn)) - 1
        if runs > EXACT_RUNS:
            return [Example("IndeCateR(num_coordinates=1)", cls(1), 1)]
        return [Example("IndeCateR", cls(), 1)]

    def evaluations(self, site: Site) -> int:
        coordinates = site.elements * site.fn.event_shape.numel()
        if self.num_coordinates is not None:
            coordinates = min(coordinates, self.num_coordinates)
        return 1 + coordinates * (categories(leaf_distribution(site.fn)) - 1)

    def alternatives(self, draw: SiteDraw) -> Tuple[List[torch.Tensor], Any]:
        value, layout = draw.value, draw.layout
        event_dim = len(draw.fn.event_shape)
        count = categories(leaf_distribution(draw.fn))
        if draw.local:  # the plate elements share runs: coordinates are one element's event
            batch = value.shape[: value.dim() - event_dim]
            masks, weight = coordinate_masks(torch.Size((batch.numel(), draw.fn.event_shape.numel())),
                                             self.num_coordinates)
            masks = [m.reshape(value.shape) for m in masks]
        else:  # coordinates are every element of a particle
            first = layout.first(value, event_dim)
            masks, weight = coordinate_masks(torch.Size((first.shape[0], first[0].numel())), self.num_coordinates)
            masks = [layout.natural(m.reshape(first.shape), value, event_dim) for m in masks]
        moved = [torch.where(mask, (value + shift) % count, value) for mask in masks for shift in range(1, count)]
        return moved, (masks, moved, weight)

    def alternative_terms(self, runs: CoupledRuns) -> torch.Tensor:
        fn, layout = runs.draw.fn, runs.draw.layout
        masks, moved, weight = runs.state
        leaf = leaf_distribution(fn)
        shifts = len(moved) // len(masks)
        term = torch.zeros(())
        for i, (alternative, f) in enumerate(zip(moved, runs.alternative_f)):
            mask = masks[i // shifts]
            p = probability_of(leaf, alternative)
            difference = runs.at_value(f - runs.f).detach()
            term = term + torch.where(mask, (p - p.detach()) * difference, torch.zeros(()))
        return layout.reduce(term * weight, len(fn.event_shape))
