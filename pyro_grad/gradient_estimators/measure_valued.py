"""Measure-valued derivatives: of discrete sites by coupled jumps, in the spirit of
StochasticAD.jl, and of continuous ones by weak derivatives (Mohamed et al. 2020).

For each distribution the derivative of ``E[f(X)]`` with respect to a parameter is a
weighted difference between f at coupled values of the site, one of which is often the
sampled value itself (whose f the first run already has).

Discrete sites: the alternative is the jump the inverse-CDF coupling makes under a small
change of the parameter:

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

Continuous sites: weak derivatives, ``∂η p = c·(p⁺ − p⁻)`` for two probability densities
(Pflug 1996; Mohamed, Rosca, Figurnov & Mnih, "Monte Carlo Gradient Estimation in
Machine Learning", JMLR 2020, §6 and Table 1), drawn on common random numbers
(:mod:`pyro_grad.gradient_estimators.weak_derivatives` derives each line); ``E, E₁, E₂ ~ Exp(1)``,
``R = sqrt(2E₁)``, ``ε = (X − μ)/σ``, ``M = sign(ε)·sqrt(ε² + 2E₂)``:

=============================  ================  ==========================================  ====
distribution                   parameter η       ∂η E[f(X)]                                  runs
=============================  ================  ==========================================  ====
Normal(μ, σ)                   loc               E[f(μ + σR) − f(μ − σR)] / (σ√(2π))         2
Normal(μ, σ)                   scale             E[f(μ + σM) − f(X)] / σ                     1
LogNormal(μ, σ)                loc, scale        as Normal, on log X, values mapped by exp   2, 1
Exponential(λ)                 rate              E[f(X) − f(X + E/λ)] / λ                    1
Gamma(α, β)                    rate              α/β · E[f(X) − f(X + E/β)]                  1
Uniform(a, b)                  high              E[f(b⁻) − f(X)] / (b − a)                   1
Uniform(a, b)                  low               E[f(X) − f(a)] / (b − a)                    1
=============================  ================  ==========================================  ====

Only parameters that move are differentiated (they require grad, or carry a
forward-mode tangent), and each costs its runs. A Gamma whose concentration moves is
refused (it has no such clean weak derivative here; nor has a Beta); a LogNormal only
when it is exactly torch's (a Normal base and an ``ExpTransform``).

No score function: when the alternative run shares the first run's randomness the
difference has low variance, and it is exactly 0 where f does not depend on the site.
A site with several elements per particle (inside a plate, or the coordinates of an
event) has one element, chosen uniformly among those that can move, moved per
particle, and its difference weighted by their number: still unbiased. In an ELBO whose
terms stay in the plate (each element's terms depend only on its own value), every
element moves in the same re-run and sees only its own difference of f (one coordinate
of an event per element). An element with probability exactly 0 or 1 is taken as fixed
(as a masked agent is); a parameter that sits exactly at 0 or 1 yet moves with θ would
be missed. Masked distributions are refused.

Cost, evaluations per particle: 2 for a discrete site (1 + the number of categories for
a Categorical); for a continuous one 1 + the runs of the parameters that move (4 for a
Normal whose loc and scale both move, 2 for an Exponential).

``engine="one-run"`` (``pg.expectation`` and ``pg.ELBO``): instead of a re-run per site and alternative,
every element of every such site offers its jumps (:meth:`MeasureValued.perturbations`:
a discrete element its coupled jump with coefficient ``c`` from the first table; a
continuous one ``X⁺`` with ``+c`` and ``X⁻`` with ``−c`` for each moving parameter's weak
derivative), one per particle is kept, drawn in proportion to ``|c|`` (and to its
sensitivity to a scalar parameter), and reweighted, and the program runs once more
(:mod:`pyro_grad.engine.one_run`): 2 evaluations per particle in all, whatever the
number of sites (Arya et al., NeurIPS 2022).
"""

from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import pyro.distributions as dist
import torch

from pyro_grad.distributions import describe, given_parameters, leaf_distribution, probs_of
from pyro_grad.engine.provenance import plain
from pyro_grad.errors import EstimatorError
from pyro_grad.gradient_estimators import weak_derivatives as weak
from pyro_grad.engine.one_run import Perturbation, choose
from pyro_grad.gradient_estimators.base import CoupledRuns, EngineChoice, Example, Site, SiteDraw
from pyro_grad.one_hot import one_hot

#: The continuous sites the tuner offers MeasureValued at: at most this many coordinates.
FEW_COORDINATES = 4

SUPPORTED = (dist.Bernoulli, dist.Binomial, dist.Categorical, dist.Poisson, dist.Geometric)


def choose_elements(
    value: torch.Tensor, active: torch.Tensor, layout: Any, event_dim: int = 0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """A mask picking, per particle, one *active* element of ``value`` uniformly, and the
    number of active elements per particle (aligned to broadcast against ``value``)."""
    mask, count = choose_in_proportion(active.expand(value.shape).float(), layout, event_dim)
    return mask, layout.align(count, event_dim)


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
    mask = one_hot(index, flat.shape[1]) & flat.bool()
    return mask.reshape(value.shape), count.reshape(batch + (1,) * event_dim)


def active_elements(leaf: Any, value: torch.Tensor) -> torch.Tensor:
    """Elements that can move: a Bernoulli, Binomial or Geometric whose probability is
    exactly 0 or 1 is deterministic here, and is treated as fixed (its derivative is
    taken to be zero, as for a masked agent)."""
    if isinstance(leaf, (dist.Bernoulli, dist.Binomial, dist.Geometric)):
        p = probs_of(leaf).detach().expand(value.shape)
        return (p > 0) & (p < 1)
    return torch.ones(value.shape, dtype=torch.bool)


def chosen_elements(draw: SiteDraw, active: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The elements to move (a mask shaped like the value) and their weight: one per
    particle, or every one at once when the site's terms of f are ``local``."""
    event_dim = len(draw.fn.event_shape)
    if draw.local:  # each plate element sees only its own move: move them all at once
        return choose_in_events(draw.value, active, event_dim)
    return choose_elements(draw.value, active, draw.layout, event_dim)


def _jumped(leaf: Any, value: torch.Tensor) -> torch.Tensor:
    """Every element of ``value`` after its coupled jump (first table of the module docs)."""
    if isinstance(leaf, dist.Bernoulli):
        return 1 - value
    if isinstance(leaf, dist.Geometric):
        return (value - 1).clamp(min=0)
    if isinstance(leaf, dist.Binomial):
        return torch.minimum(value + 1, leaf.total_count.expand(value.shape).to(value.dtype))
    return value + 1  # Poisson


def jump_coefficients(leaf: Any, value: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every element's jumped value, the parameter ``η`` its difference of f is the
    derivative in (differentiable, shaped like the value) and its coefficient ``c``
    (detached): ``∂η E[f] = E[c · (f(jumped) − f(X))]`` element by element (first table
    of the module docs; a Categorical jumps to one other category, uniformly, with
    ``c = K − 1`` and ``η = π_jumped``: ``Σ_k ∂π_k f(k) = Σ_{k≠X} ∂π_k (f(k) − f(X))``, as
    the probabilities sum to one)."""
    if isinstance(leaf, dist.Categorical):
        probs = probs_of(leaf)
        categories = probs.shape[-1]
        moved = torch.remainder(value + torch.randint(1, max(2, categories), value.shape), categories).to(value.dtype)
        eta = probs.expand(value.shape + (categories,)).gather(-1, moved.long().unsqueeze(-1)).squeeze(-1)
        return moved, eta, torch.full(value.shape, float(categories - 1))
    moved = _jumped(leaf, value)
    if isinstance(leaf, dist.Poisson):
        return moved, leaf.rate.expand(value.shape), torch.ones(value.shape)
    p = probs_of(leaf).expand(value.shape)
    q = p.detach()
    if isinstance(leaf, dist.Bernoulli):
        # Both sides jump (c = ±1): a lone site's difference is then f(1) − f(0) exactly.
        # (StochasticAD.jl jumps only 0 → 1, with c = 1/(1 − p): no better on its walk.)
        return moved, p, 1 - 2 * value
    if isinstance(leaf, dist.Binomial):
        return moved, p, (leaf.total_count - value) / (1 - q)
    return moved, p, value / (q * (1 - q))  # Geometric


def choose_in_proportion(weights: torch.Tensor, layout: Any, event_dim: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """A mask picking, per particle, one element of ``weights`` (≥ 0) with probability in
    proportion to it, and their sum per particle ``(P,)`` (0: nothing picked). With one
    element per particle no random number is drawn."""
    shape = layout.first(weights, event_dim).shape
    first = layout.first(weights, event_dim).reshape(shape[0], -1)
    total = first.sum(1)
    if first.shape[1] == 1:
        return weights > 0, total
    return layout.natural(choose(first).reshape(shape), weights, event_dim), total


def discrete(fn: Any) -> bool:
    """Whether ``fn`` is one of the discrete distributions (jumps, the first table)."""
    return isinstance(leaf_distribution(fn), SUPPORTED)


@dataclass(frozen=True, repr=False)
class MeasureValued(EngineChoice):
    """Measure-valued derivative of a site (tables in the module docs): coupled jumps
    of a discrete site; weak derivatives of a Normal, LogNormal, Exponential, Gamma
    (rate) or Uniform site (Mohamed et al. 2020, §6). Unbiased; cost 2 evaluations per
    particle for a discrete site (a Categorical: one per category, plus 1), 1 + the
    runs of the moving parameters for a continuous one (a Normal: loc 2, scale 1).
    With ``engine="one-run"`` every such site shares one alternative run, its jumps
    pruned with theirs (2 evaluations per particle in all; module docs); there
    ``one_sided=True`` takes StochasticAD.jl's one-sided jumps at Bernoulli sites
    (:func:`pyro_grad.engine.one_run.one_sided`)."""

    unbiased = True
    one_sided: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.one_sided is not False and (self.one_sided is not True or not self.one_run):
            raise EstimatorError(
                f"{self!r}: one_sided=True is a form of the one-run engine's jumps at Bernoulli sites; "
                "use MeasureValued(engine='one-run', one_sided=True)")

    @classmethod
    def applies_to(cls, site: Site) -> bool:
        fn = site.fn
        if isinstance(fn, dist.MaskedDistribution):
            return False
        return discrete(fn) or weak.family_of(fn) is not None

    @classmethod
    def examples_for(cls, site: Site, exact_value: bool = False) -> List[Example]:
        # On a continuous site one coordinate moves per particle, so its variance grows
        # with the site's coordinates (a 16×8×8 image: ×1024) where the pathwise
        # gradient's does not: the tuner and the benchmark suite offer it only at sites
        # of a few coordinates, where f may jump and it is the quietest that needs no
        # smoothness. A discrete site also offers the one-run engine, whose worth shows
        # when every such site takes it (tune then tries them together).
        if discrete(site.fn):
            return [*super().examples_for(site, exact_value),
                    Example("MeasureValued(one-run)", cls(engine="one-run"), 1)]
        if site.elements * max(1, site.fn.event_shape.numel()) <= FEW_COORDINATES:
            return super().examples_for(site, exact_value)
        return []

    def refusal(self, site: Site) -> Optional[str]:
        found = weak.family_of(site.fn) if self.applies_to(site) and not discrete(site.fn) else None
        if found is not None:
            reason = self._refused(*found)
            if reason is not None:
                return reason
        return super().refusal(site)

    @staticmethod
    def _refused(family: weak.Family, leaf: Any) -> Optional[str]:
        """Why a continuous site whose parameters move is refused, or None."""
        moving = weak.moving_parameters(leaf)
        return next((why for name, why in family.refused.items() if name in moving), None)

    def evaluations(self, site: Site) -> int:
        if self.one_run:  # the program's one alternative run is counted once, by the objective
            return 1
        if discrete(site.fn):
            leaf = leaf_distribution(site.fn)
            return 1 + probs_of(leaf).shape[-1] if isinstance(leaf, dist.Categorical) else 2
        found = weak.family_of(site.fn)
        if found is None:  # unsure: every parameter's runs
            return 1 + max(sum(family.evaluations.values()) for family in set(weak.LEAVES.values()))
        family, leaf = found
        moving = weak.moving_parameters(leaf)
        return 1 + sum(runs for name, runs in family.evaluations.items() if name in moving)

    def alternatives(self, draw: SiteDraw) -> Tuple[List[torch.Tensor], Any]:
        if discrete(draw.fn):
            return self._jumps(draw)
        return self._weak_alternatives(draw)

    def alternative_terms(self, runs: CoupledRuns) -> torch.Tensor:
        if discrete(runs.draw.fn):
            return self._jump_terms(runs)
        return self._weak_terms(runs)

    # Discrete sites: coupled jumps.

    def _jumps(self, draw: SiteDraw) -> Tuple[List[torch.Tensor], Any]:
        fn, value = draw.fn, draw.value
        leaf = leaf_distribution(fn)
        mask, elements = chosen_elements(draw, active_elements(leaf, value))
        if isinstance(leaf, dist.Categorical):
            categories = leaf.probs.shape[-1]
            alts = [torch.where(mask, torch.full_like(value, k), value) for k in range(categories)]
            return alts, (mask, elements)
        return [torch.where(mask, _jumped(leaf, value), value)], (mask, elements)

    def _jump_terms(self, runs: CoupledRuns) -> torch.Tensor:
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
        _, eta, coefficient = jump_coefficients(leaf, value)
        return layout.reduce((eta - eta.detach()) * (coefficient * delta).detach(), e)

    def perturbations(self, draw: SiteDraw) -> List[Perturbation]:
        """The one-run engine's jumps (:mod:`pyro_grad.engine.one_run`). A discrete site
        offers every element's coupled jump, the parameter its difference differentiates
        and its coefficient ``c`` (:func:`jump_coefficients`; 0 where the element cannot
        move). A continuous one offers, for each moving parameter's weak derivative
        ``c·(f(X⁺) − f(X⁻))``, ``X⁺`` with ``+c`` and ``X⁻`` with ``−c`` (each a jump from the
        site's own draw; one that is the draw itself is left out)."""
        value = draw.value
        leaf = leaf_distribution(draw.fn)
        if self.one_sided and not isinstance(leaf, dist.Bernoulli):
            raise EstimatorError(
                f"{self!r} at site '{draw.name}' ({describe(draw.fn)}): one_sided=True is a form of a "
                "Bernoulli's jumps; drop it here (pg.estimators can set it per site)")
        if discrete(draw.fn):
            moved, eta, coefficient = jump_coefficients(leaf, value)
            coefficient = torch.where(active_elements(leaf, value), coefficient, torch.zeros_like(coefficient))
            probability = probs_of(leaf).detach().expand(value.shape) if self.one_sided else None
            return [Perturbation(moved, eta, coefficient, probability)]
        family, leaf = weak.family_of(draw.fn)
        self._check_still_applies(draw, family, leaf)
        params = given_parameters(leaf)
        offers = []
        for d in weak.derivatives(family, leaf, value, weak.moving_parameters(leaf)):
            eta = plain(params[d.parameter]).expand(value.shape)
            for jumped, sign in ((d.plus, 1.0), (d.minus, -1.0)):
                if jumped is not None:
                    offers.append(Perturbation(jumped.to(value.dtype), eta, sign * d.constant.expand(value.shape)))
        return offers

    # Continuous sites: weak derivatives.

    def _check_still_applies(self, draw: SiteDraw, family: weak.Family, leaf: Any) -> None:
        """Refuse a parameter shifted to move after the handler's check (a diagnostic's
        shift of the site's own parameters)."""
        reason = self._refused(family, leaf)
        if reason is not None:
            raise EstimatorError(
                f"{self!r} does not apply to site '{draw.name}' ({describe(draw.fn)}): {reason}. The "
                "parameter was shifted after the estimator was chosen, as pg.diagnose shifts each site's "
                "own parameters: pass sites=False there to differentiate the arguments alone"
            )

    def _weak_alternatives(self, draw: SiteDraw) -> Tuple[List[torch.Tensor], Any]:
        """One run per alternative value of the moving parameters' weak derivatives (the
        site's own draw is the first run's); the state names, per parameter, its
        constant and which runs hold f at ``X⁺`` and ``X⁻`` (0: the first run)."""
        value = draw.value
        family, leaf = weak.family_of(draw.fn)
        moving = weak.moving_parameters(leaf)
        self._check_still_applies(draw, family, leaf)
        mask, elements = chosen_elements(draw, torch.ones(value.shape, dtype=torch.bool))
        alternatives, plan = [], []

        def run(moved: Optional[torch.Tensor]) -> int:
            if moved is None:
                return 0
            alternatives.append(torch.where(mask, moved.to(value.dtype), value))
            return len(alternatives)

        for d in weak.derivatives(family, leaf, value, moving):
            plan.append((d.parameter, d.constant, run(d.plus), run(d.minus)))
        return alternatives, (mask, elements, plan)

    def _weak_terms(self, runs: CoupledRuns) -> torch.Tensor:
        fn, value, layout = runs.draw.fn, runs.draw.value, runs.draw.layout
        mask, elements, plan = runs.state
        _, leaf = weak.family_of(fn)
        params = given_parameters(leaf)
        e = len(fn.event_shape)
        weight = mask.to(value.dtype) * elements
        f = [runs.f, *runs.alternative_f]  # f[0]: the first run, at the site's own draw
        terms = layout.reduce(torch.zeros(value.shape, dtype=value.dtype), e)
        for name, constant, plus, minus in plan:
            eta = plain(params[name]).expand(value.shape)
            d = (constant * runs.at_value(f[plus] - f[minus]) * weight).detach()
            terms = terms + layout.reduce((eta - eta.detach()) * d, e)
        return terms
