"""What every gradient estimator is: a small immutable choice of gradient path for one
site, of one of three kinds.

Before the draw, every estimator says whether it can differentiate the site
(``applies_to(site)``, ``refusal(site)``: its distribution, plates and event shape, a
:class:`Site`; the handler refuses the site with one clear error otherwise), and
``prepare(msg)`` switches the site's sampling path (a score-function site must not be
drawn by ``rsample``). ``evaluations(site)`` is its cost: program evaluations per
particle at the site. ``objectives`` names the objectives whose gradient it is derived
for (``"expectation"``, ``"elbo"``, ``"iwae"``); each objective refuses the others at
the site (:class:`~pyro_grad.objectives.objective_check.ObjectiveCheck`).

After the draw, the engine dispatches on the estimator's kind:

* :class:`PathwiseEstimator`: the gradient flows through the drawn value (``rsample``);
  nothing is computed after the draw. (:class:`Relaxation` is the biased cousin: the
  value drawn is relaxed, and the gradient flows through the relaxation.)
* :class:`ScoreEstimator`: ``surrogate(site: ScoreSite) -> (terms, auxiliary losses)``
  turns per-particle values into the site's term of a surrogate objective: the site's
  ``score``, ``log q(z_{g,k})`` for particle ``k`` of independent sample ``g`` (shape
  ``(G, K, ...)``), and ``f``, the values of f downstream of the site, broadcastable to
  it. Per-sample values in, per-sample terms ``(G,)`` out: this is what makes variance
  diagnostics free. A :class:`ValueGradientEstimator` also reads ∇_value f (``site.draw``).
* :class:`DifferenceEstimator`: ``alternatives(draw: SiteDraw)`` names values to re-run
  the program at; the objective re-runs it at each, coupled to the first run
  (:class:`~pyro_grad.engine.alternative_run.AlternativeRun`), and
  ``alternative_terms(runs: CoupledRuns)`` turns the per-particle values of f into
  per-particle terms.
"""

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, FrozenSet, List, NamedTuple, Optional, Tuple

import torch

from pyro_grad.distributions import without_path_switch
from pyro_grad.errors import EstimatorError
from pyro_grad.engine.one_run import Perturbation
from pyro_grad.engine.particles import PARTICLE_PLATES
from pyro_grad.gradient_estimators.detached import DetachedSample


@dataclass(frozen=True)
class Site:
    """What an estimator may know of a sample site before its draw: its ``name`` (None
    for a bare distribution), its distribution ``fn``, its number of ``elements`` per
    particle (the batch, plates included, the particle plate left out), and how many of
    them its plates account for (``plated``; the rest are a batch within each element).
    ``summed_out``: the site is marked for TraceEnum's parallel enumeration
    (``infer={"enumerate": "parallel"}``), so batch dims beyond its plates are the
    values of other enumerated sites, summed out with it."""

    name: Optional[str]
    fn: Any
    elements: int
    plated: int = 1
    summed_out: bool = False

    @classmethod
    def of(cls, msg: dict, plates: tuple = ()) -> "Site":
        """The site of a sample message or trace node. The particle plate's dim is left
        out of its elements; a handler sees a site before the particle plate marks it,
        so it passes the enclosing ``plates`` (``pyro.poutine.runtime.get_plates()``)."""
        fn = without_path_switch(msg["fn"])
        shape = list(fn.batch_shape)
        for frame in (*msg.get("cond_indep_stack", ()), *plates):
            if frame.name in PARTICLE_PLATES and frame.dim is not None and -frame.dim <= len(shape):
                shape[frame.dim] = 1
        own = {f.name: f for f in msg.get("cond_indep_stack", ()) if f.vectorized and f.name not in PARTICLE_PLATES}
        plated = math.prod(shape[f.dim] for f in own.values() if -f.dim <= len(shape))
        summed_out = (msg.get("infer") or {}).get("enumerate") == "parallel"
        return cls(msg.get("name"), fn, math.prod(shape), plated, summed_out)

    @classmethod
    def of_distribution(cls, fn: Any) -> "Site":
        """A bare distribution as a site: its whole batch is one particle's."""
        return cls(None, fn, fn.batch_shape.numel())


class SiteDraw(NamedTuple):
    """A difference-estimator site as drawn: its ``name``, its distribution ``fn`` and
    sampled ``value`` as traced (particles inside, at ``layout.dim``), the ``layout`` (a
    :class:`~pyro_grad.engine.particles.ParticleLayout`), and whether its terms of f
    are ``local``: every term that depends on an element of the site lies in that element's
    plates (an ELBO's data plate, by conditional independence), so one re-run may move
    every element at once and each element still sees only its own difference; and
    whether the objective ``scored`` the value by its density."""

    name: str
    fn: Any
    value: torch.Tensor
    layout: Any
    local: bool = False
    #: Whether the objective scores the value by the site's density (an ELBO does).
    scored: bool = False


class CoupledRuns(NamedTuple):
    """A difference-estimator site after its alternative runs: the ``draw``, the first
    run's ``f`` and one ``f`` per alternative value in ``alternative_f``, and the
    ``state`` that ``alternatives`` returned. Costs are the objective's at the site:
    shaped to broadcast against the site's batch (per particle, and per plate element
    where the objective knows which terms each element can change)."""

    draw: SiteDraw
    f: torch.Tensor
    alternative_f: List[torch.Tensor]
    state: Any

    def at_value(self, f: torch.Tensor) -> torch.Tensor:
        """``f`` shaped to broadcast against the site's value (its event dims added)."""
        return f.reshape(f.shape + (1,) * len(self.draw.fn.event_shape))


class ValueGradient(NamedTuple):
    """A score-path site's draws for estimators that differentiate f in the value
    (``uses_value_gradient``), shaped ``(G, K, batch..., event...)`` in ``surrogate``:
    the drawn ``value``, the distribution's ``probs`` and ``logits`` (differentiable in
    its parameters) and ``gradient``, ∇_value of the site's downstream f (detached);
    and the ``family`` of the site's distribution: ``"bernoulli"``, ``"one_hot"`` (a
    OneHotCategorical) or ``"categorical"`` (whose value is an index, drawn as a float,
    and whose ``probs`` and ``logits`` have a category axis more than the value)."""

    value: torch.Tensor
    probs: torch.Tensor
    logits: torch.Tensor
    gradient: torch.Tensor
    family: str = "bernoulli"


class ScoreSite(NamedTuple):
    """A score-path site as its estimator's ``surrogate`` sees it: its ``name``, its
    ``score`` ``log q(z_{g,k})`` (``(G, K, batch...)``, differentiable in the
    distribution's parameters), ``f`` the values of f downstream of it (detached;
    broadcastable to ``score``), the decaying-average state of the handler that chose it
    (``averages``, a :class:`~pyro_grad.baselines.RunningAverages`; None: start afresh),
    the program's ``args`` and ``kwargs`` (a learned baseline's inputs; None: none), and for a
    :class:`ValueGradientEstimator` its ``draw`` (a :class:`ValueGradient`)."""

    name: str
    score: torch.Tensor
    f: torch.Tensor
    averages: Any = None
    args: tuple = ()
    kwargs: Optional[dict] = None
    draw: Optional[ValueGradient] = None

    @property
    def num_particles(self) -> int:
        return self.score.shape[1]


class Example(NamedTuple):
    """A default instance for listings and the benchmark suite: its label, the
    estimator, and the particles it needs (a leave-one-out baseline needs two)."""

    label: str
    estimator: "Estimator"
    particles: int


@dataclass(frozen=True, repr=False)
class Estimator:
    """Base class: a frozen, hashable description of one site's gradient path."""

    #: True when the estimator's expectation is the exact gradient.
    unbiased: ClassVar[bool] = True
    #: Particles the estimator needs (a leave-one-out baseline needs two).
    min_particles: ClassVar[int] = 1
    #: The objectives this estimator's gradient is derived for: ``"expectation"``
    #: (``pg.expectation``), ``"elbo"`` (``pg.ELBO``) and ``"iwae"`` (``pg.IWAE``).
    objectives: ClassVar[FrozenSet[str]] = frozenset({"expectation", "elbo"})

    def __repr__(self) -> str:
        # Only the fields that differ from their defaults: Score(baseline='loo').
        changed = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) is not f.default and getattr(self, f.name) != f.default
        ]
        return f"{type(self).__name__}({', '.join(changed)})"

    @property
    def exact_value(self) -> bool:
        """Whether a draw is an exact value of the site's distribution (a soft
        relaxation's is not, so an ELBO, which scores the value, refuses it)."""
        return True

    @classmethod
    def applies_to(cls, site: Site) -> bool:
        """Whether this estimator can differentiate through a draw at ``site``."""
        return True

    def objective_refusal(self, site: Site, objective: str) -> Optional[str]:
        """None when this instance can differentiate ``site`` in ``objective``
        (``"expectation"``, ``"elbo"`` or ``"iwae"``) as far as :meth:`refusal` lets it;
        else why not (a bound scores the draw by its density, which not every estimator
        can meet). Each objective asks before the draw is scored."""
        return None

    def refusal(self, site: Site) -> Optional[str]:
        """None when this instance, with its settings, applies to ``site``; else why not
        (empty when ``applies_to`` says no and there is nothing more to say)."""
        return None if self.applies_to(site) else ""

    @classmethod
    def example(cls) -> "Estimator":
        """A default instance."""
        return cls()

    @classmethod
    def example_for(cls, site: Site) -> "Estimator":
        """A default instance that applies to ``site`` (``example()`` unless a setting
        depends on the distribution)."""
        return cls.example()

    @classmethod
    def examples_for(cls, site: Site, exact_value: bool = False) -> List[Example]:
        """The instances the benchmark suite runs at ``site``; with ``exact_value``,
        only those whose draws are exact values (an ELBO's)."""
        example = cls.example_for(site)
        return [Example(cls.__name__, example, 1)] if example.exact_value or not exact_value else []

    def evaluations(self, site: Site) -> int:
        """Program evaluations per particle this estimator needs at ``site``."""
        return 1

    def prepare(self, msg: dict) -> None:
        """Set the site's sampling path before the draw (the handler checked ``refusal``)."""

    def resolve(self, num_particles: int) -> "Estimator":
        """The concrete estimator once the number of particles is known."""
        return self


#: What a pathwise estimator does at a site whose value reaches f through a jump.
JUMP_POLICIES = ("raise", "ignore")


@dataclass(frozen=True, repr=False)
class PathwiseEstimator(Estimator):
    """Base of the estimators whose gradient flows through the drawn value itself
    (``rsample``): Reparam, STL, DReG.

    Their derivative is f's derivative *inside* each piece where f is smooth in the
    value; where f jumps in it (a threshold, a ``round``, a branch), the boundary moves
    with the parameters and the mass that crosses it is missed. The objectives watch
    every pathwise draw for such jumps (:mod:`pyro_grad.engine.jumps`); at a site where
    one reaches f, ``jumps="raise"`` (the default) refuses the site with one error
    naming the operation and its line, and ``jumps="ignore"`` is the user's word that
    the jump cannot change E[f] (a comparison only logged, say).
    """

    jumps: str = "raise"

    #: Whether the site's ``log q`` is scored at its parameters detached, so that only
    #: the path through the value differentiates it (sticking the landing: STL, DReG).
    drops_score_of_q: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.jumps not in JUMP_POLICIES:
            raise EstimatorError(
                f"{type(self).__name__}(jumps={self.jumps!r}): jumps must be one of {list(JUMP_POLICIES)}"
            )


def drops_score_of_q(estimator: Optional[Estimator]) -> bool:
    """Whether a site's ``log q`` is scored at its parameters detached (STL's, DReG's)."""
    return isinstance(estimator, PathwiseEstimator) and estimator.drops_score_of_q


class Relaxation(Estimator):
    """Base of the estimators that draw a relaxed value and differentiate through it:
    Gumbel-softmax, straight-through, ReinMax. ``prepare`` is their whole work; every
    one is biased."""

    unbiased = False


class ScoreEstimator(Estimator):
    """Base of the score-function estimators: ``surrogate`` turns a site's per-particle
    scores and values of f into its surrogate term (:class:`ScoreSite` in, ``(G,)``
    terms out). Its draw is detached from the parameters (``prepare``): the gradient
    comes through the score alone."""

    def prepare(self, msg: dict) -> None:
        msg["fn"] = DetachedSample(msg["fn"])

    def surrogate(self, site: ScoreSite) -> Tuple[torch.Tensor, torch.Tensor]:
        """The site's per-sample surrogate terms ``(G,)``, zero in value, whose gradient
        is the estimate; and per-sample auxiliary losses ``(G,)`` to minimize (a learned
        baseline's or control variate's fit; zeros when there is none)."""
        raise NotImplementedError(f"{type(self).__name__} has no surrogate term outside pg.IWAE")

    def importance_signal(self, name: str, log_weights: torch.Tensor) -> torch.Tensor:
        """In :class:`~pyro_grad.IWAE`: each particle's learning signal from the
        log-weights ``(G, K, ...)`` (particles on axis 1), shaped like them."""
        raise EstimatorError(f"{self!r} at site '{name}' is not derived for the IWAE bound")


class ValueGradientEstimator(ScoreEstimator):
    """Base of the score-function estimators that also read ∇_value f: ``surrogate``'s
    ``site.draw`` is the site's :class:`ValueGradient` (the draw is then a leaf that
    requires grad, detached from the parameters)."""

    def prepare(self, msg: dict) -> None:
        msg["fn"] = DetachedSample(msg["fn"], differentiable_value=True)


class DifferenceEstimator(Estimator):
    """Base of estimators built on differences of f between coupled runs.

    ``alternatives(draw)`` names the values to re-run the program at (each shaped like
    ``draw.value``) and any state; the objective re-runs it at each and hands the
    results to ``alternative_terms`` as :class:`CoupledRuns`.

    With ``keeps_alternative_gradients`` the alternative runs are differentiable (their
    values of f carry gradients to parameters, as a learned control variate needs); else they
    run under ``no_grad``. With ``relaxes`` they are continuous relaxations of the value
    (RELAX's). ``alternative_loss`` may add a per-particle auxiliary loss
    (zero in value in the surrogate; a control variate's training loss, as RELAX's).
    """

    keeps_alternative_gradients: ClassVar[bool] = False
    #: Whether the site shares the program's one alternative run, its perturbation pruned
    #: with the other such sites' (:mod:`pyro_grad.engine.one_run`), instead of
    #: ``alternatives``' re-runs; it then offers its jumps by ``perturbations(draw)``.
    one_run: ClassVar[bool] = False
    #: Whether the alternative values are relaxations, outside the discrete support: the
    #: re-runs then skip support checks, and refuse what would make f jump in the value.
    relaxes: ClassVar[bool] = False

    def evaluations(self, site: Site) -> int:
        return 2

    def prepare(self, msg: dict) -> None:
        msg["fn"] = DetachedSample(msg["fn"])

    def alternatives(self, draw: SiteDraw) -> Tuple[List[torch.Tensor], Any]:
        """Alternative values (each shaped like ``draw.value``), and any state for the terms."""
        raise NotImplementedError

    def alternative_terms(self, runs: CoupledRuns) -> torch.Tensor:
        """Per-particle surrogate terms ``(P,)``, zero in value."""
        raise NotImplementedError

    def alternative_loss(self, runs: CoupledRuns) -> Optional[torch.Tensor]:
        """Per-particle auxiliary losses ``(P,)`` to minimize, or None (the default)."""
        return None


#: The engines of a difference estimator's runs: its own re-runs, per site, or one
#: alternative run for every one-run site of the program, perturbations pruned.
ENGINES = ("rerun", "one-run")


@dataclass(frozen=True, repr=False)
class EngineChoice(DifferenceEstimator):
    """A difference estimator that runs on either engine: ``engine="rerun"``, its own
    re-runs (``alternatives``), or ``engine="one-run"``, one alternative run shared by
    every one-run site of the program (:mod:`pyro_grad.engine.one_run`), for which
    ``perturbations(draw)`` offers each element's jumps (in ``pg.expectation`` and
    ``pg.ELBO``, the estimators' objectives). ``paths`` (one-run engine only) is how many
    independent alternative paths each particle carries beside its run, averaged: the
    default (None) is 16 where the jumps are pruned lazily (fewer where the sites' values
    are wide: :func:`pyro_grad.engine.one_run.lazy_paths`) and 1 where they are chosen at
    once."""

    engine: str = "rerun"
    paths: Optional[int] = None

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise EstimatorError(f"{type(self).__name__}(engine={self.engine!r}): engine must be one of {list(ENGINES)}")
        if self.paths is not None:
            if isinstance(self.paths, bool) or not isinstance(self.paths, int) or self.paths < 1:
                raise EstimatorError(f"{type(self).__name__}(paths={self.paths!r}): paths must be a positive int "
                                     "(or None, the engine's choice)")
            if not self.one_run:
                raise EstimatorError(f"{type(self).__name__}(paths={self.paths!r}): paths is a setting of the one-run "
                                     f"engine, the alternative paths carried beside one run; use "
                                     f"{type(self).__name__}(engine='one-run', paths={self.paths!r})")

    @property
    def one_run(self) -> bool:
        """Whether this site's jumps share the program's one alternative run."""
        return self.engine == "one-run"

    def evaluations(self, site: Site) -> int:
        if self.one_run:  # the program's one alternative run is counted once, by the objective
            return 1
        return super().evaluations(site)

    def perturbations(self, draw: SiteDraw) -> List[Perturbation]:
        """Each kind of jump the elements offer (one for a discrete site; one per
        alternative of each moving parameter for a weak derivative): every element's
        jumped value, the parameter its difference of f differentiates and its coefficient
        ``c`` (0 where it cannot move), so that the re-run engine's sum is
        ``Σ_jumps Σ_elements c · (f(jumped) − f) · ∂θ η``."""
        raise NotImplementedError
