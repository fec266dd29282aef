"""ARM and DisARM for Bernoulli sites: antithetic pairs, two evaluations, unbiased.

With ``u ~ U(0, 1)``, ``b = 1[u < σ(φ)]`` (the sampled value) and its antithetic twin
``b̃ = 1[1 − u < σ(φ)]`` (the alternative run), both Bernoulli(σ(φ)), the gradient with
respect to the logits ``φ`` is

* ARM (Yin & Zhou 2019): ``(f(b̃) − f(b)) (u − ½)``;
* DisARM (Dong, Mnih & Tucker 2020): ``½ (f(b) − f(b̃)) (−1)^b̃ 1[b ≠ b̃] σ(|φ|)``,
  ARM with ``u`` integrated out given ``(b, b̃)``: never more variance.

Several Bernoulli elements (a plate, or a batch) share one pair of runs, with an
independent ``u`` each: the multivariate estimators. In an ELBO each element's ``f`` is
only the part of f that element can change (its own plate element's terms, and any term
outside the plate), by the plate's conditional independence: a ``to_event`` latent in
a data plate gets the papers' per-datum estimator, whose variance does not grow with
the batch. ``u`` is drawn at derivative time
given the sampled ``b`` (``u | b`` is uniform on the side of ``σ(φ)`` that ``b`` fell on),
which has the same joint law as drawing it first. Cost: 2 evaluations per particle.

``engine="one-run"`` (``pg.expectation`` and ``pg.ELBO``): every element is its own univariate pair
instead (the others held at their draws, later sites redrawn on common random numbers),
and offers its twin as a jump to the one-run engine (:mod:`pyro_grad.engine.one_run`),
which keeps one element per particle among every one-run site's: the element's term is
``c · (f(b̃) − f(b)) · ∂θ φ`` with ``c = u − ½`` (ARM) or ``c = −½ (−1)^b̃ σ(|φ|)``
(DisARM), and ``c = 0`` where ``b̃ = b``, which changes nothing. 2 evaluations per
particle in all, whatever the number of sites.
"""

from dataclasses import dataclass
from typing import Any, List, Tuple

import pyro.distributions as dist
import torch

from pyro_grad.distributions import leaf_distribution, logits_of, probs_of, uniform_given_bernoulli
from pyro_grad.engine.one_run import Perturbation
from pyro_grad.gradient_estimators.base import CoupledRuns, EngineChoice, Site, SiteDraw


@dataclass(frozen=True, repr=False)
class _Antithetic(EngineChoice):
    unbiased = True

    @classmethod
    def applies_to(cls, site: Site) -> bool:
        fn = site.fn
        return isinstance(leaf_distribution(fn), dist.Bernoulli) and not isinstance(fn, dist.MaskedDistribution)

    def alternatives(self, draw: SiteDraw) -> Tuple[List[torch.Tensor], Any]:
        value = draw.value
        p = probs_of(leaf_distribution(draw.fn)).detach().expand(value.shape)
        u = uniform_given_bernoulli(value, p)
        twin = (1 - u < p).to(value.dtype)
        return [twin], (u, twin)

    def alternative_terms(self, runs: CoupledRuns) -> torch.Tensor:
        fn, value, layout = runs.draw.fn, runs.draw.value, runs.draw.layout
        logits = logits_of(leaf_distribution(fn)).expand(value.shape)
        u, twin = runs.state
        g = self.logit_gradient(runs.at_value(runs.f), runs.at_value(runs.alternative_f[0]), value, u, twin,
                                logits.detach())
        return layout.reduce((logits - logits.detach()) * g.detach(), len(fn.event_shape))

    def perturbations(self, draw: SiteDraw) -> List[Perturbation]:
        """Each element's twin, its logit and ``c`` (the module docs' one-run form)."""
        (twin,), (u, _) = self.alternatives(draw)
        value = draw.value
        logits = logits_of(leaf_distribution(draw.fn)).expand(value.shape)
        c = self.twin_coefficient(value, u, twin, logits.detach()) * (twin != value).to(value.dtype)
        return [Perturbation(twin, logits, c)]

    def logit_gradient(self, f, f_twin, b, u, twin, logits) -> torch.Tensor:
        """The per-element estimate of ∂f/∂φ from the pair's values (module docs)."""
        raise NotImplementedError

    def twin_coefficient(self, b, u, twin, logits) -> torch.Tensor:
        """``c`` in ``∂f/∂φ = c · (f(b̃) − f(b))`` per element, where ``b̃ ≠ b``."""
        raise NotImplementedError


@dataclass(frozen=True, repr=False)
class ARM(_Antithetic):
    """Augment-REINFORCE-merge: ``∇φ E[f(b)] = E[(f(b̃) − f(b))(u − ½)]`` (module docs)."""

    def logit_gradient(self, f, f_twin, b, u, twin, logits) -> torch.Tensor:
        return (f_twin - f) * (u - 0.5)

    def twin_coefficient(self, b, u, twin, logits) -> torch.Tensor:
        return u - 0.5


@dataclass(frozen=True, repr=False)
class DisARM(_Antithetic):
    """``∇φ E[f(b)] = E[½ (f(b) − f(b̃)) (−1)^b̃ 1[b ≠ b̃] σ(|φ|)]`` (module docs)."""

    def logit_gradient(self, f, f_twin, b, u, twin, logits) -> torch.Tensor:
        return 0.5 * (f - f_twin) * (1 - 2 * twin) * (b != twin).to(b.dtype) * torch.sigmoid(logits.abs())

    def twin_coefficient(self, b, u, twin, logits) -> torch.Tensor:
        return -0.5 * (1 - 2 * twin) * torch.sigmoid(logits.abs())
