"""Weak (measure-valued) derivatives of continuous distributions, for :class:`~pyro_grad.MeasureValued`.

A weak derivative writes the derivative of a density in one parameter η as a constant
times the difference of two probability densities, ``∂η p(x; η) = c · (p⁺(x) − p⁻(x))``,
so that ``∂η E[f(X)] = c · E[f(X⁺) − f(X⁻)]`` with ``X⁺ ~ p⁺`` and ``X⁻ ~ p⁻`` drawn
on common random numbers (Pflug, "Optimization of Stochastic Models", 1996; Mohamed,
Rosca, Figurnov & Mnih, "Monte Carlo Gradient Estimation in Machine Learning", JMLR
21(132), 2020, §6 and Table 1). Where one of ``p⁺``, ``p⁻`` is ``p`` itself its draw is
the site's own draw ``X`` and its ``f`` is the first run's: one program run saved.

=================  ==========  ===========  ================================  ================================
distribution       η           c            X⁺                                X⁻
=================  ==========  ===========  ================================  ================================
Normal(μ, σ)       loc μ       1/(σ√(2π))   μ + σR                            μ − σR (the same R ~ Rayleigh(1))
Normal(μ, σ)       scale σ     1/σ          μ + σM (M double-sided Maxwell)   X
Exponential(λ)     rate λ      1/λ          X                                 X + E/λ  (~ Gamma(2, λ))
Gamma(α, β)        rate β      α/β          X                                 X + E/β  (~ Gamma(α + 1, β))
LogNormal(μ, σ)    loc, scale  as Normal    exp of the Normal's, on log X     exp of the Normal's, on log X
Uniform(a, b)      high b      1/(b − a)    b⁻ (a point mass at b)            X
Uniform(a, b)      low a       1/(b − a)    X                                 a (a point mass)
=================  ==========  ===========  ================================  ================================

with ``E ~ Exp(1)``, ``R = sqrt(2·E₁)`` and the Maxwell draw coupled to the site's own
standardized draw ``ε = (X − μ)/σ``: ``M = sign(ε)·sqrt(ε² + 2·E₂)``.

Each family draws all of its auxiliary random numbers (``E₁``, ``E₂``) whichever
parameters move, so that its use of the random stream does not depend on them.
A Gamma's concentration (and a Beta's parameters) have no such clean decomposition
here: the family names why, and :class:`~pyro_grad.MeasureValued` refuses the site.
"""

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, NamedTuple, Optional, Tuple

import pyro.distributions as dist
import torch
from torch.distributions.transforms import ExpTransform

from pyro_grad.distributions import given_parameters, moves
from pyro_grad.engine.provenance import plain

#: ``1/√(2π)``: the Normal density's constant, and the loc derivative's ``c·σ``.
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class WeakDerivative(NamedTuple):
    """``∂η E[f(X)] = constant · E[f(plus) − f(minus)]`` for the given parameter named
    ``parameter``: ``constant`` is detached and ``plus``, ``minus`` are alternative
    values shaped like the site's value, or None for the site's own draw ``X``."""

    parameter: str
    constant: torch.Tensor
    plus: Optional[torch.Tensor]
    minus: Optional[torch.Tensor]


Derive = Callable[[Dict[str, torch.Tensor], torch.Tensor, FrozenSet[str]], List[WeakDerivative]]


@dataclass(frozen=True)
class Family:
    """One continuous family: its ``name``, the alternative ``evaluations`` each parameter with
    a weak derivative here needs, ``derive(params, value, moving)`` (its parameters,
    detached and expanded to the value's shape, the value, and the names of those that
    move) and, for parameters with none here, why (``refused``)."""

    name: str
    evaluations: Mapping[str, int]
    derive: Derive
    refused: Mapping[str, str] = field(default_factory=dict)


def standard_exponential(value: torch.Tensor) -> torch.Tensor:
    """``E ~ Exp(1)``, shaped and typed like ``value``."""
    return torch.empty(value.shape, dtype=value.dtype, device=value.device).exponential_()


def normal(params: Dict[str, torch.Tensor], x: torch.Tensor, moving: FrozenSet[str]) -> List[WeakDerivative]:
    """Normal(μ, σ), Mohamed et al. (2020), §6.2 and Table 1.

    loc: ``∂μ N(x; μ, σ) = (x − μ)/σ² · N(x; μ, σ)``. Its positive part, on ``x > μ``, is
    ``1/(σ√(2π))`` times the density of ``μ + σR`` with ``R ~ Rayleigh(1)`` (density
    ``r·e^{−r²/2}``; ``∫₀^∞ u/σ² · e^{−u²/2σ²} du = 1``), its negative part the mirror
    image: ``∂μ E[f] = 1/(σ√(2π)) · E[f(μ + σR) − f(μ − σR)]``, one ``R = sqrt(2E₁)``
    for both (2 runs).

    scale: ``∂σ N(x; μ, σ) = (1/σ)·(ε²·φ(ε)/σ − φ(ε)/σ)`` with ``ε = (x − μ)/σ``: ``1/σ``
    times the density of ``μ + σM``, ``M`` double-sided Maxwell (density ``m²φ(m)``),
    minus the Normal itself: ``∂σ E[f] = (1/σ)·E[f(μ + σM) − f(X)]`` (1 run). The
    Maxwell draw is coupled to the site's own ``ε``: ``M = sign(ε)·sqrt(ε² + 2E₂)``.
    ``M² = ε² + χ²₂ ~ χ²₃`` independent of the sign, which is symmetric, so ``M`` is
    double-sided Maxwell; and it stays close to ``ε``, so ``f(X⁺) − f(X)`` is small.
    """
    loc, scale = params["loc"], params["scale"]
    e1, e2 = standard_exponential(x), standard_exponential(x)
    found = []
    if "loc" in moving:
        r = torch.sqrt(2 * e1)
        found.append(WeakDerivative("loc", INV_SQRT_2PI / scale, loc + scale * r, loc - scale * r))
    if "scale" in moving:
        eps = (x - loc) / scale
        sign = torch.where(eps < 0, -torch.ones_like(eps), torch.ones_like(eps))
        maxwell = sign * torch.sqrt(eps * eps + 2 * e2)
        found.append(WeakDerivative("scale", 1 / scale, loc + scale * maxwell, None))
    return found


def log_normal(params: Dict[str, torch.Tensor], x: torch.Tensor, moving: FrozenSet[str]) -> List[WeakDerivative]:
    """LogNormal(μ, σ) = exp of Normal(μ, σ) (torch's: a Normal base, one ExpTransform):
    ``E[f(X)] = E[f(exp Y)]``, so the Normal's weak derivatives of ``Y = log X``, with
    every alternative value mapped back by ``exp`` (same constants, same runs)."""
    return [
        WeakDerivative(d.parameter, d.constant, None if d.plus is None else torch.exp(d.plus),
                       None if d.minus is None else torch.exp(d.minus))
        for d in normal(params, torch.log(x), moving)
    ]


def exponential(params: Dict[str, torch.Tensor], x: torch.Tensor, moving: FrozenSet[str]) -> List[WeakDerivative]:
    """Exponential(λ), Mohamed et al. (2020), Table 1: ``∂λ (λe^{−λx}) = (1/λ)·(λe^{−λx} −
    λ²x·e^{−λx})``, the Exponential minus Gamma(2, λ): ``∂λ E[f] = (1/λ)·E[f(X) − f(X + X')]``
    with ``X' = E/λ ~ Exp(λ)`` independent of the site's draw ``X`` (1 run)."""
    rate = params["rate"]
    e = standard_exponential(x)
    return [WeakDerivative("rate", 1 / rate, None, x + e / rate)] if "rate" in moving else []


def gamma(params: Dict[str, torch.Tensor], x: torch.Tensor, moving: FrozenSet[str]) -> List[WeakDerivative]:
    """Gamma(α, β) in its rate β, Mohamed et al. (2020), Table 1: ``∂β p(x; α, β) =
    (α/β − x)·p(x; α, β) = (α/β)·(p(x; α, β) − p(x; α + 1, β))`` (``x·β/α·p(x; α, β)`` is
    Gamma(α + 1, β)'s density), and ``X + E/β ~ Gamma(α + 1, β)`` when ``X ~ Gamma(α, β)``:
    ``∂β E[f] = (α/β)·E[f(X) − f(X + E/β)]`` (1 run)."""
    concentration, rate = params["concentration"], params["rate"]
    e = standard_exponential(x)
    return [WeakDerivative("rate", concentration / rate, None, x + e / rate)] if "rate" in moving else []


def uniform(params: Dict[str, torch.Tensor], x: torch.Tensor, moving: FrozenSet[str]) -> List[WeakDerivative]:
    """Uniform(a, b), Mohamed et al. (2020), Table 1: ``E[f] = (1/(b − a))·∫_a^b f``, so
    ``∂b E[f] = (1/(b − a))·(f(b) − E[f(X)])`` and ``∂a E[f] = (1/(b − a))·(E[f(X)] − f(a))``:
    a point mass against the Uniform itself (1 run each).

    torch's Uniform draws and scores the half-open ``[a, b)`` (its log-density is −∞ at
    ``b``), so ``b`` is taken as ``b⁻``, the largest float below it: ``f(b⁻)``, the left
    limit, is what ``∂b ∫_a^b f`` takes, and an ELBO can score it."""
    low, high = params["low"], params["high"]
    constant = 1 / (high - low)
    found = []
    if "high" in moving:
        found.append(WeakDerivative("high", constant, torch.nextafter(high, low), None))
    if "low" in moving:
        found.append(WeakDerivative("low", constant, None, low.clone()))
    return found


NORMAL = Family("Normal", {"loc": 2, "scale": 1}, normal)
LOG_NORMAL = Family("LogNormal", {"loc": 2, "scale": 1}, log_normal)
EXPONENTIAL = Family("Exponential", {"rate": 1}, exponential)
GAMMA = Family(
    "Gamma", {"rate": 1}, gamma,
    refused={"concentration": "its concentration moves; only the rate has a measure-valued derivative here "
                              "(Mohamed et al. 2020, Table 1); use Reparam() or Score('loo')"},
)
UNIFORM = Family("Uniform", {"low": 1, "high": 1}, uniform)

#: Leaf distribution classes (exactly these: a Chi2 is a Gamma subclass, a HalfNormal
#: a transformed Normal) and their families.
LEAVES: Dict[type, Family] = {
    cls: family
    for family, classes in (
        (NORMAL, (torch.distributions.Normal, dist.Normal)),
        (EXPONENTIAL, (torch.distributions.Exponential, dist.Exponential)),
        (GAMMA, (torch.distributions.Gamma, dist.Gamma)),
        (UNIFORM, (torch.distributions.Uniform, dist.Uniform)),
    )
    for cls in classes
}
LOG_NORMALS = (torch.distributions.LogNormal, dist.LogNormal)
#: Wrappers that change neither the draw nor the parameters' meaning.
TRANSPARENT = (torch.distributions.Independent, dist.ExpandedDistribution)


def family_of(fn: Any) -> Optional[Tuple[Family, Any]]:
    """The continuous family of a site's distribution and the leaf distribution whose
    parameters it differentiates, or None. Through an estimator's path switch,
    ``Independent`` and expanded wrappers; a LogNormal only when it is exactly torch's
    (a Normal base and one ``ExpTransform``). Any other wrapper (a mask, another
    transformed distribution, a HalfNormal) is not one of these families."""
    while True:
        if getattr(fn, "path_wrapper", False) or isinstance(fn, TRANSPARENT):
            fn = fn.base_dist
            continue
        if type(fn) in LOG_NORMALS:
            base, transforms = fn.base_dist, fn.transforms
            exp = len(transforms) == 1 and type(transforms[0]) is ExpTransform
            return (LOG_NORMAL, base) if exp and LEAVES.get(type(base)) is NORMAL else None
        if getattr(fn, "base_dist", None) is not None:
            return None
        family = LEAVES.get(type(fn))
        return None if family is None else (family, fn)


def moving_parameters(leaf: Any) -> FrozenSet[str]:
    """Names of the leaf's given parameters that move (:func:`moves`)."""
    return frozenset(name for name, value in given_parameters(leaf).items() if moves(value))


def derivatives(family: Family, leaf: Any, value: torch.Tensor, moving: FrozenSet[str]) -> List[WeakDerivative]:
    """The family's weak derivatives at the site's ``value`` for the ``moving`` parameters
    (those it has one for), its parameters detached and expanded to the value's shape."""
    params = {
        name: plain(p).detach().to(value.dtype).expand(value.shape)
        for name, p in given_parameters(leaf).items()
    }
    return family.derive(params, value, frozenset(moving) & frozenset(family.evaluations))
