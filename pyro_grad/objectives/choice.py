"""Which objective a diagnosis or comparison differentiates, and its per-sample surrogates.

``objective`` is :func:`pyro_grad.expectation` (``E[fn]``, no guide) or an ELBO class,
:class:`pyro_grad.ELBO` or a subclass (model and guide; later multi-sample bounds).
"""

import math
from typing import Any, Callable, Optional

from pyro_grad.engine.surrogate import Estimates
from pyro_grad.errors import EstimatorError
from pyro_grad.objectives.elbo import ELBO
from pyro_grad.objectives.expectation import expectation, expectation_estimates

#: ``samples(args, G)``: ``G`` independent surrogates of an objective.
SampleFn = Callable[[tuple, int], Estimates]


def is_elbo(objective: Any) -> bool:
    return isinstance(objective, type) and issubclass(objective, ELBO)


def resolve_objective(objective: Any, guide: Optional[Callable]) -> Any:
    """``objective`` checked against ``guide``; None means ``pg.expectation`` without a
    guide and ``pg.ELBO`` with one."""
    if objective is None:
        return expectation if guide is None else ELBO
    if objective is expectation:
        if guide is not None:
            raise EstimatorError(
                "objective=pg.expectation differentiates E[fn] and takes no guide; "
                "for model and guide use objective=pg.ELBO"
            )
        return objective
    if is_elbo(objective):
        if guide is None:
            raise EstimatorError(f"objective={objective.__name__} needs a guide: pass guide=")
        return objective
    raise EstimatorError(
        f"objective must be pg.expectation or an ELBO class such as pg.ELBO, got {objective!r}"
    )


def sampler(
    objective: Any,
    fn: Callable,
    guide: Optional[Callable],
    kwargs: dict,
    num_particles: int,
    vectorize: bool,
    max_plate_nesting: Optional[int] = None,
) -> SampleFn:
    """``samples(args, G)``: ``G`` independent surrogates of ``K = num_particles``
    particles each, of ``E[fn]`` or of the ELBO of model ``fn`` and ``guide``."""
    if objective is expectation:
        return lambda a, g: expectation_estimates(fn, a, kwargs, num_particles, g, vectorize, max_plate_nesting)
    elbo = objective(
        num_particles=num_particles,
        vectorize_particles=vectorize,
        max_plate_nesting=math.inf if max_plate_nesting is None else max_plate_nesting,
    )
    return lambda a, g: elbo.estimates(fn, guide, a, kwargs, num_samples=g)
