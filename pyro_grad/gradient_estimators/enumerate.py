"""Exact enumeration of a discrete site over its finite support."""

from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import torch

from pyro_grad.errors import EstimatorError
from pyro_grad.gradient_estimators.base import CoupledRuns, DifferenceEstimator, Site, SiteDraw

#: The largest support enumerated per site.
MAX_SUPPORT = 64


@dataclass(frozen=True, repr=False)
class Enumerate(DifferenceEstimator):
    """Sum the site over its support: ``∂θ E[f] ∋ Σ_v ∂θ p_θ(v) · f(v)``, with ``f(v)`` the
    f of a run with the site set to ``v`` (every other site coupled to the first run).

    Exact through the site's distribution: that site contributes no variance (the
    pathwise part of ``f`` stays that of the sampled value). Applies to distributions
    with a finite support of at most :data:`MAX_SUPPORT` values (Bernoulli, Categorical,
    OneHotCategorical, Binomial with a small ``total_count``), one element per particle,
    or one per plate element when each element's terms of f stay in its plate (an ELBO's
    mixture assignments): one run per support value then serves every element at once.
    Elements that share one f (``pg.expectation``'s, or a batch outside any plate)
    have a joint support that grows exponentially, and are refused. Cost: 1 + the
    support size evaluations per particle (3 for a Bernoulli).

    In :class:`~pyro_grad.ELBO` it means ``TraceEnum_ELBO``'s parallel enumeration instead
    (:mod:`pyro_grad.objectives.enumeration`): the site is summed out, and every term
    downstream sees every value. Cost: one run, its tensors the support's size wider.
    """

    unbiased = True

    @classmethod
    def applies_to(cls, site: Site) -> bool:
        return cls._one_per_plate_element(site) and cls._finite_support(site.fn)

    @staticmethod
    def _one_per_plate_element(site: Site) -> bool:
        """One element per particle, or only those its plates account for; or a site
        summed out as TraceEnum does, whose other batch dims are enumerated values."""
        return site.summed_out or site.elements in (1, site.plated)

    @staticmethod
    def support_size(fn: Any) -> Optional[int]:
        """The number of values in ``fn``'s support, or None when it has no finite one."""
        if not getattr(fn, "has_enumerate_support", False):
            return None
        try:
            return fn.enumerate_support(expand=False).shape[0]
        except (NotImplementedError, ValueError):
            return None

    @classmethod
    def _finite_support(cls, fn: Any) -> bool:
        size = cls.support_size(fn)
        return size is not None and size <= MAX_SUPPORT

    def refusal(self, site: Site) -> Optional[str]:
        size = self.support_size(site.fn)
        if size is not None and size > MAX_SUPPORT:
            return f"its support has {size} values, more than the {MAX_SUPPORT} pg enumerates"
        if not self._one_per_plate_element(site) and self._finite_support(site.fn):
            return (
                f"site '{site.name}': {site.elements} elements per particle, a batch outside any "
                "plate, have a joint support too large to enumerate"
            )
        return super().refusal(site)

    def evaluations(self, site: Site) -> int:
        if site.summed_out:  # TraceEnum's way, in an ELBO: one run, tensors support-wide
            return 1
        return 1 + site.fn.enumerate_support(expand=False).shape[0]

    def alternatives(self, draw: SiteDraw) -> Tuple[List[torch.Tensor], Any]:
        fn, value = draw.fn, draw.value
        first = draw.layout.first(value, len(fn.event_shape))
        elements = first[0].numel() // max(1, fn.event_shape.numel())
        if elements != 1 and not draw.local:
            raise EstimatorError(
                f"Enumerate() at site '{draw.name}': {elements} elements per particle share one "
                "value of f (pg.expectation's one f per particle, or a term outside their plate), so "
                "their joint support is too large to enumerate; use MeasureValued(), ARM() or "
                "Score() there, or an ELBO whose terms stay in the plate"
            )
        # Every element takes each support value at once: with local terms each element
        # sees only its own value's f, so one run per value serves the whole plate.
        support = fn.enumerate_support(expand=False)  # (S, 1, ..., *event)
        values = [s.expand(value.shape).to(value.dtype) for s in support]
        return values, values

    def alternative_terms(self, runs: CoupledRuns) -> torch.Tensor:
        terms = 0.0
        for v, c in zip(runs.state, runs.alternative_f):
            p = runs.draw.fn.log_prob(v).exp()
            terms = terms + (p - p.detach()) * c.detach()
        return runs.draw.layout.reduce(terms)
