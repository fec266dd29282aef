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


__all__ = ["REGISTRY", "applicable", "derived_for", "not_applicable", "registered_names", *(cls.__name__ for cls in REGISTRY)]


def registered_names() -> Dict[str, Type[Estimator]]:
    """``{lower-case class name: class}`` for every registered estimator."""
    return {cls.__name__.lower(): cls for cls in REGISTRY}


#: How errors name each objective an estimator may be derived for.
OBJECTIVES = {"expectation": "pg.expectation", "elbo": "pg.ELBO", "iwae": "pg.IWAE"}


def applicable(site: Union[Site, Any], objective: Optional[str] = None) -> List[Estimator]:
    """Default instances of every registered estimator that applies to ``site`` (a
    :class:`Site`, or a bare distribution, whose batch is one particle's); with
    ``objective`` (``"expectation"``, ``"elbo"`` or ``"iwae"``), only those derived for it."""
    if objective is not None and objective not in OBJECTIVES:
        raise EstimatorError(f"objective must be one of {sorted(OBJECTIVES)}, got {objective!r}")
    if not isinstance(site, Site):
        site = Site.of_distribution(site)
    return [
        cls.example_for(site) for cls in REGISTRY
        if cls.applies_to(site) and (objective is None or objective in cls.objectives)
    ]


def derived_for(objective: str) -> List[Type[Estimator]]:
    """The registered estimator classes derived for ``objective`` (``"expectation"``,
    ``"elbo"`` or ``"iwae"``), in registry order."""
    if objective not in OBJECTIVES:
        raise EstimatorError(f"objective must be one of {sorted(OBJECTIVES)}, got {objective!r}")
    return [cls for cls in REGISTRY if objective in cls.objectives]


def not_applicable(estimator: Estimator, site: Site, reason: str = "", objective: Optional[str] = None) -> EstimatorError:
    """The error for ``estimator`` at a site it does not apply to: the site, its
    distribution, why (when known), and what does apply (in ``objective``, if given)."""
    options = ", ".join(repr(e) for e in applicable(site, objective)) or "none"
    why = f": {reason}" if reason else ""
    return EstimatorError(
        f"{estimator!r} does not apply to site '{site.name}' ({describe(site.fn)}){why}; "
        f"estimators that apply: {options}"
    )
