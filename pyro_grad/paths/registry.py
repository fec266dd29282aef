"""Every estimator pyro_grad ships, in the order listings show them.

Adding an estimator: write its module in ``paths/``, import its class here and add it
to ``REGISTRY``, and give it tests and a README row. ``pyro_grad`` and
``pyro_grad.paths`` export every registered class by name (``pg.Score``). The command
line names an estimator by its lower-case class name, so names are unique (checked by
the tests).
"""

from typing import Any, Dict, List, Tuple, Type, Union

from pyro_grad.distributions import describe
from pyro_grad.errors import EstimatorError
from pyro_grad.paths.arm import ARM, DisARM
from pyro_grad.paths.base import Estimator, Site
from pyro_grad.paths.double_cv import DoubleCV
from pyro_grad.paths.enumerate import Enumerate
from pyro_grad.paths.indecater import IndeCateR
from pyro_grad.paths.measure_valued import MeasureValued
from pyro_grad.paths.rebar import REBAR
from pyro_grad.paths.relax import RELAX
from pyro_grad.paths.relaxed import GumbelSoftmax, ReinMax, StraightThrough
from pyro_grad.paths.reparam import Reparam
from pyro_grad.paths.rodeo import RODEO
from pyro_grad.paths.score import Score

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
)


__all__ = ["REGISTRY", "applicable", "not_applicable", "registered_names", *(cls.__name__ for cls in REGISTRY)]


def registered_names() -> Dict[str, Type[Estimator]]:
    """``{lower-case class name: class}`` for every registered estimator."""
    return {cls.__name__.lower(): cls for cls in REGISTRY}


def applicable(site: Union[Site, Any]) -> List[Estimator]:
    """Default instances of every registered estimator that applies to ``site`` (a
    :class:`Site`, or a bare distribution, whose batch is one particle's)."""
    if not isinstance(site, Site):
        site = Site.of_distribution(site)
    return [cls.example_for(site) for cls in REGISTRY if cls.applies_to(site)]


def not_applicable(estimator: Estimator, site: Site, reason: str = "") -> EstimatorError:
    """The error for ``estimator`` at a site it does not apply to: the site, its
    distribution, why (when known), and what does apply."""
    options = ", ".join(repr(e) for e in applicable(site)) or "none"
    why = f": {reason}" if reason else ""
    return EstimatorError(
        f"{estimator!r} does not apply to site '{site.name}' ({describe(site.fn)}){why}; "
        f"estimators that apply: {options}"
    )
