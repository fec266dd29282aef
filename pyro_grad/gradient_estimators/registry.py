"""Every estimator pyro_grad ships, in the order listings show them.

Adding an estimator: write its module in ``paths/``, import its class here and add it
to ``REGISTRY``, and give it tests and a README row. ``pyro_grad`` and
``pyro_grad.gradient_estimators`` export every registered class by name (``pg.Score``). The command
line names an estimator by its lower-case class name, so names are unique (checked by
the tests).
"""

from typing import Any, Dict, List, Optional, Tuple, Type, Union

from pyro_grad.distributions import describe
from pyro_grad.errors import EstimatorError
from pyro_grad.gradient_estimators.arm import ARM, DisARM
from pyro_grad.gradient_estimators.base import Estimator, Site
from pyro_grad.gradient_estimators.double_cv import DoubleCV
from pyro_grad.gradient_estimators.dreg import DReG
from pyro_grad.gradient_estimators.enumerate import Enumerate
from pyro_grad.gradient_estimators.indecater import IndeCateR
from pyro_grad.gradient_estimators.measure_valued import MeasureValued
from pyro_grad.gradient_estimators.rebar import REBAR
from pyro_grad.gradient_estimators.relax import RELAX
from pyro_grad.gradient_estimators.relaxed import GumbelSoftmax, ReinMax, StraightThrough
from pyro_grad.gradient_estimators.reparam import Reparam
from pyro_grad.gradient_estimators.rodeo import RODEO
from pyro_grad.gradient_estimators.score import Score
from pyro_grad.gradient_estimators.stl import STL
from pyro_grad.gradient_estimators.vimco import VIMCO

REGISTRY: Tuple[Type[Estimator], ...] = (
    Reparam,
    Score,
    Enumerate,
    MeasureValued,
    ARM,
    DisARM,
    DoubleCV,
    RODEO,
    IndeCateR,
    REBAR,
    RELAX,
    GumbelSoftmax,
    StraightThrough,
    ReinMax,
    # Derived for one objective: the ELBO's (STL) and the importance-weighted bound's.
    STL,
    DReG,
    VIMCO,
)


__all__ = ["NotApplicable", "REGISTRY", "applicable", "derived_for", "not_applicable", "registered_names", *(cls.__name__ for cls in REGISTRY)]


def registered_names() -> Dict[str, Type[Estimator]]:
    """``{lower-case class name: class}`` for every registered estimator."""
    return {cls.__name__.lower(): cls for cls in REGISTRY}


#: How errors name each objective an estimator may be derived for.
OBJECTIVES = {"expectation": "pg.expectation", "elbo": "pg.ELBO", "iwae": "pg.IWAE"}


def applicable(site: Union[Site, Any], objective: Optional[str] = None) -> List[Estimator]:
    """Default instances of every registered estimator that applies to ``site`` (a
    :class:`Site`, or a bare distribution, whose batch is one particle's) and would not
    refuse it there; with ``objective`` (``"expectation"``, ``"elbo"`` or ``"iwae"``),
    only those derived for it."""
    if objective is not None and objective not in OBJECTIVES:
        raise EstimatorError(f"objective must be one of {sorted(OBJECTIVES)}, got {objective!r}")
    if not isinstance(site, Site):
        site = Site.of_distribution(site)
    found = []
    for cls in derived_for(objective) if objective is not None else REGISTRY:
        if cls.applies_to(site):
            example = cls.example_for(site)
            if example.refusal(site) is None and (objective is None or
                                                  example.objective_refusal(site, objective) is None):
                found.append(example)
    return found


def derived_for(objective: str) -> List[Type[Estimator]]:
    """The registered estimator classes derived for ``objective`` (``"expectation"``,
    ``"elbo"`` or ``"iwae"``), in registry order."""
    if objective not in OBJECTIVES:
        raise EstimatorError(f"objective must be one of {sorted(OBJECTIVES)}, got {objective!r}")
    return [cls for cls in REGISTRY if objective in cls.objectives]


class NotApplicable(EstimatorError):
    """An estimator that does not apply at a site (:func:`not_applicable` builds it). The
    message lists what does apply: in ``objective`` when known, else in each objective.
    An objective that meets one raised without it (by a handler, which cannot know the
    objective) raises it again for itself (:meth:`for_objective`). Pyro re-raises an
    error from inside a trace with its message alone, so every field but the message
    may be None."""

    def __init__(self, message: str, estimator: Optional[Estimator] = None, site: Optional[Site] = None,
                 reason: str = "", objective: Optional[str] = None):
        super().__init__(message)
        self.estimator, self.site, self.reason, self.objective = estimator, site, reason, objective

    def for_objective(self, objective: str) -> "NotApplicable":
        return not_applicable(self.estimator, self.site, self.reason, objective)


def _options(site: Site, objective: Optional[str]) -> str:
    """``": A(), B()"`` in ``objective``; without one, those of every objective, then
    those derived only for some (named by the objectives they are derived for)."""
    if objective is not None:
        return ": " + (", ".join(repr(e) for e in applicable(site, objective)) or "none")
    found = applicable(site)
    everywhere = [e for e in found if e.objectives >= set(OBJECTIVES) - {"iwae"}]
    some = [e for e in found if e not in everywhere]
    text = ": " + (", ".join(repr(e) for e in everywhere) or "none")
    if some:
        named = ", ".join(f"{e!r} ({' and '.join(OBJECTIVES[o] for o in sorted(e.objectives))} only)" for e in some)
        text += f"; and {named}"
    return text


def not_applicable(estimator: Estimator, site: Site, reason: str = "", objective: Optional[str] = None) -> NotApplicable:
    """The error for ``estimator`` at a site it does not apply to: the site, its
    distribution, why (when known), and what does apply (in ``objective``, if given)."""
    why = f": {reason}" if reason else ""
    return NotApplicable(
        f"{estimator!r} does not apply to site '{site.name}' ({describe(site.fn)}){why}; "
        f"estimators that apply{_options(site, objective)}",
        estimator, site, reason, objective,
    )
