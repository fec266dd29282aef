"""What every gradient estimator is: a small immutable choice of gradient path for one site.

An estimator has two jobs, one before and one after the draw:

* ``prepare(msg)`` runs in the handler's ``_pyro_sample``, *before* the value is drawn,
  and switches the site's sampling path (for example, a score-function site must not
  be drawn by ``rsample``). It raises :class:`~pyro_grad.errors.EstimatorError` when the
  estimator does not apply to the site's distribution.
* Difference estimators (``uses_alternatives``) instead name alternative values for the
  site (``alternatives``); the objective re-runs the program at each, coupled to the
  first run (:class:`~pyro_grad.alternative_run.AlternativeRun`), and
  ``alternative_terms`` turns the per-particle costs into per-particle terms.
* ``surrogate(name, score, cost, ...)`` turns per-particle values into the site's term
  of a surrogate objective: ``score`` holds ``log q(z_{g,k})`` for particle ``k`` of
  independent estimate ``g`` (shape ``(G, K, ...)``) and ``cost`` the costs downstream
  of the site, broadcastable to it. Per-sample values in, per-estimate terms ``(G,)``
  out: this is what makes variance diagnostics free.
"""

from dataclasses import dataclass, fields
from typing import Any, ClassVar, List, Tuple, Type

import torch

from pyro_grad.errors import EstimatorError
from pyro_grad.paths.detached import DetachedSample

#: Every concrete estimator class, in definition order, so errors can list what applies.
REGISTRY: List[Type["Estimator"]] = []


def describe(fn: Any) -> str:
    """A distribution's name with its wrappers, e.g. ``Independent(Normal)``; the
    wrappers estimators put around a site to switch its path are left out."""
    base = getattr(fn, "base_dist", None)
    if getattr(fn, "path_wrapper", False):
        return describe(base)
    name = type(fn).__name__
    return f"{name}({describe(base)})" if base is not None else name


@dataclass(frozen=True, repr=False)
class Estimator:
    """Base class: a frozen, hashable description of one site's gradient path."""

    #: True when the estimator's expectation is the exact gradient.
    unbiased: ClassVar[bool] = True
    #: Program evaluations per particle.
    cost: ClassVar[int] = 1
    #: Whether :meth:`surrogate` needs the site's score and downstream cost.
    uses_score: ClassVar[bool] = False
    #: Whether the estimator differentiates by re-running the program at other values.
    uses_alternatives: ClassVar[bool] = False

    def __repr__(self) -> str:
        # Only the fields that differ from their defaults: Score(baseline='loo').
        changed = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) is not f.default and getattr(self, f.name) != f.default
        ]
        return f"{type(self).__name__}({', '.join(changed)})"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__name__.startswith("_") and not cls.__dict__.get("_abstract", False):
            REGISTRY.append(cls)

    @classmethod
    def applies_to(cls, fn: Any) -> bool:
        """Whether this estimator can differentiate through a draw from ``fn``."""
        return True

    @classmethod
    def example(cls) -> "Estimator":
        """A default instance, used when listing what applies."""
        return cls()

    @classmethod
    def example_for(cls, fn: Any) -> "Estimator":
        """A default instance that applies to ``fn`` (``example()`` unless a setting
        depends on the distribution)."""
        return cls.example()

    def runs(self, fn: Any) -> int:
        """Program evaluations per particle this estimator needs at a site of ``fn``
        (``cost``, unless it depends on the distribution)."""
        return self.cost

    def prepare(self, msg: dict) -> None:
        """Set the site's sampling path before the draw; raise if this estimator does not apply."""
        if not self.applies_to(msg["fn"]):
            raise not_applicable(self, msg)

    def resolve(self, num_particles: int) -> "Estimator":
        """The concrete estimator once the number of particles is known."""
        return self

    def surrogate(
        self,
        name: str,
        score: torch.Tensor,
        cost: torch.Tensor,
        args: tuple,
        kwargs: dict,
        averages: Any,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-estimate (surrogate terms, auxiliary losses), each ``(G,)``. Called only for
        estimators with ``uses_score``, which implement it."""
        raise NotImplementedError(f"{type(self).__name__} has no score term")


class DifferenceEstimator(Estimator):
    """Base of estimators built on cost differences between coupled runs.

    ``value`` is the site's sampled value and ``fn`` its distribution, as traced
    (particles inside, at ``layout.dim``); ``cost`` ``(P,)`` is the first run's
    per-particle objective and ``alternative_costs`` one ``(P,)`` tensor per alternative
    value. ``layout`` (a :class:`~pyro_grad.particles.ParticleLayout`) aligns per-particle
    costs with the site's tensors and sums terms per particle.
    """

    _abstract = True
    uses_alternatives = True

    def prepare(self, msg: dict) -> None:
        super().prepare(msg)
        msg["fn"] = DetachedSample(msg["fn"])

    def alternatives(self, name: str, fn: Any, value: torch.Tensor, layout: Any) -> Tuple[List[torch.Tensor], Any]:
        """Alternative values (each shaped like ``value``), and any state for the terms."""
        raise NotImplementedError

    def alternative_terms(
        self,
        name: str,
        fn: Any,
        value: torch.Tensor,
        cost: torch.Tensor,
        alternative_costs: List[torch.Tensor],
        state: Any,
        layout: Any,
    ) -> torch.Tensor:
        """Per-particle surrogate terms ``(P,)``, zero in value."""
        raise NotImplementedError


def applicable(fn: Any) -> List[Estimator]:
    """Default instances of every registered estimator that applies to ``fn``."""
    return [cls.example_for(fn) for cls in REGISTRY if cls.applies_to(fn)]


def not_applicable(estimator: Estimator, msg: dict) -> EstimatorError:
    fn = msg["fn"]
    options = ", ".join(repr(e) for e in applicable(fn)) or "none"
    return EstimatorError(
        f"{estimator!r} does not apply to site '{msg['name']}' ({describe(fn)}); "
        f"estimators that apply: {options}"
    )
