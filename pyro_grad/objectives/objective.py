"""``Objective``: what ``pg.expectation``, ``pg.ELBO`` and ``pg.IWAE`` share, and all that
diagnostics, references and tuning ask of an objective.

An objective differentiates one quantity of a program (``E[f]``) or of a model and
guide (a bound): per sample, its :meth:`~Objective.estimates` are ``G`` independent
surrogates whose gradients are the chosen estimators' estimates. Its ``name`` is how
``Estimator.objectives`` names the objectives an estimator is derived for.

The classes implementing it are :class:`~pyro_grad.objectives.expectation.Expectation`
(behind the function ``pg.expectation``), :class:`~pyro_grad.ELBO` and
:class:`~pyro_grad.IWAE`. Where a user names an objective (``objective=pg.expectation``,
``objective=pg.IWAE``), :func:`objective_type` finds the class.
"""

from typing import Any, Callable, ClassVar, List, Optional, Protocol, Type, runtime_checkable

import torch

from pyro_grad.engine.surrogate import Estimates
from pyro_grad.errors import EstimatorError
from pyro_grad.gradient_estimators import Estimator
from pyro_grad.objectives.elbo import ELBO
from pyro_grad.objectives.expectation import Expectation


@runtime_checkable
class Objective(Protocol):
    """An objective configured with its particles (``num_particles`` per estimate)."""

    #: How ``Estimator.objectives`` names it: ``"expectation"``, ``"elbo"`` or ``"iwae"``.
    name: ClassVar[str]
    #: Whether it takes a guide (its sites are the guide's) or one program ``fn``.
    takes_guide: ClassVar[bool]
    #: Whether an estimate is a mean over its particles, so that one estimate of many
    #: particles estimates the same objective precisely (an IWAE bound's is not).
    averages_particles: ClassVar[bool]
    #: Whether the terms a site can change split by the site's plates, each element
    #: changing only its own (an ELBO's do; ``E[f]`` has one f per particle).
    splits_by_plates: ClassVar[bool]

    num_particles: int

    @classmethod
    def configured(cls, num_particles: int, vectorize: bool, max_plate_nesting: Optional[int]) -> "Objective":
        """An instance of ``num_particles`` particles, vectorized or looped."""

    def programs(self, model: Callable, guide: Optional[Callable]) -> List[Callable]:
        """The programs whose parameters it differentiates (``[fn]``; ``[model, guide]``)."""

    def chosen_program(self, model: Callable, guide: Optional[Callable]) -> Callable:
        """The program whose sites the estimators choose (``fn``; the guide)."""

    def estimates(self, model: Callable, guide: Optional[Callable], args: tuple, kwargs: dict,
                  num_samples: int = 1) -> Estimates:
        """``num_samples`` independent surrogates of ``num_particles`` particles each."""

    def exact(self, model: Callable, guide: Optional[Callable], args: tuple, kwargs: dict) -> torch.Tensor:
        """The objective itself, differentiably, with every latent site summed over its
        support; an :class:`~pyro_grad.errors.EstimatorError` where that is not its value."""

    @classmethod
    def derived_estimators(cls) -> List[Type[Estimator]]:
        """The registered estimator classes whose gradient is derived for it, in registry
        order (:func:`derived_for` of its ``name``)."""


def objective_type(objective: Any, guide: Optional[Callable]) -> Type[Objective]:
    """The objective class a user named, checked against ``guide``: None means
    ``pg.expectation`` without a guide and ``pg.ELBO`` with one; ``pg.expectation``
    names its class as ``pg.expectation.objective``."""
    if objective is None:
        return Expectation if guide is None else ELBO
    found = getattr(objective, "objective", objective)
    if not (isinstance(found, type) and isinstance(getattr(found, "name", None), str)
            and callable(getattr(found, "configured", None))):
        raise EstimatorError(
            f"objective must be pg.expectation or an ELBO class such as pg.ELBO or pg.IWAE, got {objective!r}"
        )
    if found.takes_guide and guide is None:
        raise EstimatorError(f"objective={found.__name__} needs a guide: pass guide=")
    if not found.takes_guide and guide is not None:
        raise EstimatorError(
            f"objective=pg.{found.name} differentiates E[fn] and takes no guide; for model and guide use "
            "objective=pg.ELBO"
        )
    return found
