"""ARM and DisARM for Bernoulli sites: antithetic pairs, two evaluations, unbiased.

With ``u ~ U(0, 1)``, ``b = 1[u < σ(φ)]`` (the sampled value) and its antithetic twin
``b̃ = 1[1 − u < σ(φ)]`` (the alternative run), both Bernoulli(σ(φ)), the gradient with
respect to the logits ``φ`` is

* ARM (Yin & Zhou 2019): ``(f(b̃) − f(b)) (u − ½)``;
* DisARM (Dong, Mnih & Tucker 2020): ``½ (f(b) − f(b̃)) (−1)^b̃ 1[b ≠ b̃] σ(|φ|)``,
  ARM with ``u`` integrated out given ``(b, b̃)``: never more variance.

Several Bernoulli elements (a plate, or a batch) share one pair of runs, with an
independent ``u`` each: the multivariate estimators. ``u`` is drawn at derivative time
given the sampled ``b`` (``u | b`` is uniform on the side of ``σ(φ)`` that ``b`` fell on),
which has the same joint law as drawing it first. Cost: 2 evaluations per particle.
"""

from dataclasses import dataclass
from typing import Any, List, Tuple

import pyro.distributions as dist
import torch

from pyro_grad.paths.base import CoupledRuns, DifferenceEstimator, Site
from pyro_grad.distributions import logits_of, probs_of
from pyro_grad.distributions import leaf_distribution


class _Antithetic(DifferenceEstimator):
    unbiased = True

    @classmethod
    def applies_to(cls, site: Site) -> bool:
        fn = site.fn
        return isinstance(leaf_distribution(fn), dist.Bernoulli) and not isinstance(fn, dist.MaskedDistribution)

    def alternatives(self, name: str, fn: Any, value: torch.Tensor, layout: Any) -> Tuple[List[torch.Tensor], Any]:
        p = probs_of(leaf_distribution(fn)).detach().expand(value.shape)
        v = torch.rand(value.shape)
        u = torch.where(value > 0.5, v * p, p + v * (1 - p))
        twin = (1 - u < p).to(value.dtype)
        return [twin], (u, twin)


@dataclass(frozen=True, repr=False)
class ARM(_Antithetic):
    """Augment-REINFORCE-merge: ``∇φ E[f(b)] = E[(f(b̃) − f(b))(u − ½)]`` (module docs)."""

    def alternative_terms(self, runs: CoupledRuns) -> torch.Tensor:
        u, _ = runs.state
        logits = logits_of(leaf_distribution(runs.fn)).expand(runs.value.shape)
        e = len(runs.fn.event_shape)
        g = runs.layout.align(runs.alternative_costs[0] - runs.cost, e) * (u - 0.5)
        return runs.layout.reduce((logits - logits.detach()) * g.detach(), e)


@dataclass(frozen=True, repr=False)
class DisARM(_Antithetic):
    """``∇φ E[f(b)] = E[½ (f(b) − f(b̃)) (−1)^b̃ 1[b ≠ b̃] σ(|φ|)]`` (module docs)."""

    def alternative_terms(self, runs: CoupledRuns) -> torch.Tensor:
        _, twin = runs.state
        logits = logits_of(leaf_distribution(runs.fn)).expand(runs.value.shape)
        sign = 1 - 2 * twin
        differ = (runs.value != twin).to(runs.value.dtype)
        e = len(runs.fn.event_shape)
        cost_difference = runs.layout.align(runs.cost - runs.alternative_costs[0], e)
        g = 0.5 * cost_difference * sign * differ * torch.sigmoid(logits.detach().abs())
        return runs.layout.reduce((logits - logits.detach()) * g.detach(), e)
