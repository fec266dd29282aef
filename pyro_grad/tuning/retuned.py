"""``Retuned``: an objective whose sites nothing else chose are tuned before its first
call, and every ``every`` calls after.

Tuning wraps the objective; the objectives know nothing of it. Before a call it
measures (:func:`~pyro_grad.tuning.tune.tune`, on draws of its own: a forked random
stream) and hands the choice to the program it wraps, as the ``tuned`` choices of an
:class:`~pyro_grad.handler.EstimatorMessenger` around the program. A call's estimators
are so fixed before that call draws anything, and each call's gradient is an unbiased
estimator's whichever one was chosen.
"""

import logging
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import pyro.poutine as poutine
import torch

from pyro_grad.errors import EstimatorError
from pyro_grad.gradient_estimators import Estimator
from pyro_grad.handler import EstimatorMessenger, WrappedProgram
from pyro_grad.objectives.elbo import ELBO
from pyro_grad.objectives.expectation import expectation
from pyro_grad.tuning.tune import Settings, Tuning, tune_with

logger = logging.getLogger("pyro_grad.tuning")

#: What ``Retuned`` passes on to :func:`pyro_grad.tune`.
TUNE_OPTIONS = frozenset({"candidates", "num_samples", "metric", "allow_biased", "max_rounds", "seed"})


class Switch(NamedTuple):
    """At call ``step`` the measured choice at ``site`` went from ``previous`` (None:
    the objective's "auto") to ``chosen``."""

    step: int
    site: str
    previous: Optional[Estimator]
    chosen: Estimator


class Retuned:
    """``objective`` with its program's sites tuned by :func:`pyro_grad.tune` before the
    first call that differentiates, and again every ``every`` calls (None: only before
    the first).

    * A loss, ``pg.Retuned(pg.ELBO(num_particles=8), every=100)``: SVI's ``loss``. Its
      ``differentiable_loss(model, guide, *args, **kwargs)``, ``loss`` and
      ``loss_and_grads`` are the ELBO's, of the guide with the measured choices.
    * ``pg.Retuned(pg.expectation)(fn, *args, num_particles=..., **kwargs)``: as
      ``pg.expectation``, with ``fn``'s sites measured at those particles.

    Only sites nothing else chose are tuned (a site's ``infer``, a handler's config win,
    and stay). ``tune_options`` go to :func:`pyro_grad.tune` (``candidates``,
    ``num_samples``, ``metric``, ``allow_biased``, ``max_rounds``, ``seed``); the
    particles and vectorization are the objective's. Nothing is measured where gradients
    are off (``torch.no_grad()``, for a value alone). Every change is logged
    (``pyro_grad.tuning``, INFO) and kept: ``switches`` lists each :class:`Switch`,
    ``tunings`` the :class:`~pyro_grad.Tuning` by the call it came before. Wrap one
    program across calls: another program starts afresh.
    """

    def __init__(self, objective: Any, every: Optional[int] = None, **tune_options: Any) -> None:
        if isinstance(objective, type):
            raise EstimatorError(
                f"pg.Retuned wraps an objective instance, e.g. pg.Retuned({objective.__name__}(num_particles=8)), "
                f"not the class {objective.__name__}"
            )
        if not isinstance(objective, ELBO) and getattr(objective, "objective", None) is None:
            raise EstimatorError(
                f"pg.Retuned wraps pg.expectation or an ELBO such as pg.ELBO(...) or pg.IWAE(...), got {objective!r}"
            )
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise EstimatorError(f"every must be a positive integer or None, got {every!r}")
        unknown = sorted(set(tune_options) - TUNE_OPTIONS)
        if unknown:
            raise EstimatorError(f"pg.Retuned passes {sorted(TUNE_OPTIONS)} to pg.tune, not {unknown}")
        self.objective = objective
        self.every = every
        self.tune_options = tune_options
        #: Calls that differentiated, the tunings by the call they came before, and every
        #: switch they made.
        self.steps = 0
        self.tunings: Dict[int, Tuning] = {}
        self.switches: List[Switch] = []
        self._wrapped: Optional[WrappedProgram] = None

    @property
    def tuning(self) -> Optional[Tuning]:
        """The latest :class:`~pyro_grad.Tuning` (None before the first)."""
        return self.tunings[max(self.tunings)] if self.tunings else None

    def __repr__(self) -> str:
        every = "" if self.every is None else f", every={self.every}"
        return f"Retuned({self.objective!r}{every})"

    # ---- the loss (an ELBO) ----------------------------------------------------------

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> torch.Tensor:
        elbo = self._loss()
        guide = self._before_call(guide, model, args, kwargs, Settings(
            guide=guide, num_particles=elbo.num_particles, vectorize=elbo.vectorize_particles, objective=type(elbo),
            **self.tune_options))
        return elbo.differentiable_loss(model, guide, *args, **kwargs)

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The ELBO's ``loss`` (no gradients, nothing measured) with the current choices."""
        return self._loss().loss(model, self._program(guide), *args, **kwargs)

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        surrogate_loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if surrogate_loss.requires_grad:
            surrogate_loss.backward(retain_graph=self._loss().retain_graph)
        return float(surrogate_loss.detach())

    # ---- E[f] ------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """As the objective is called: ``(fn, *args, num_particles=1, vectorize=True,
        max_plate_nesting=None, **kwargs)`` for ``pg.expectation``; ``(model, guide,
        *args, **kwargs)`` for a loss (SVI calls its ``loss`` so, as
        :meth:`differentiable_loss` or, under ``torch.no_grad()``, :meth:`loss`)."""
        if isinstance(self.objective, ELBO):
            if not torch.is_grad_enabled():
                return self.loss(*args, **kwargs)
            return self.differentiable_loss(*args, **kwargs)
        return self._expectation(*args, **kwargs)

    def _expectation(self, fn: Callable, *args: Any, num_particles: int = 1, vectorize: bool = True,
                     max_plate_nesting: Optional[int] = None, **kwargs: Any) -> torch.Tensor:
        program = self._before_call(fn, fn, args, kwargs, Settings(
            num_particles=num_particles, vectorize=vectorize, objective=self.objective, **self.tune_options))
        return expectation(program, *args, num_particles=num_particles, vectorize=vectorize,
                           max_plate_nesting=max_plate_nesting, **kwargs)

    # ---- when to tune ----------------------------------------------------------------

    def _loss(self) -> ELBO:
        if not isinstance(self.objective, ELBO):
            raise EstimatorError(
                "this pg.Retuned wraps pg.expectation: call it as pg.expectation, (fn, *args, num_particles=...)"
            )
        return self.objective

    def _program(self, program: Callable) -> WrappedProgram:
        """``program`` under the handler that carries the measured choices: one handler
        per program, so that the baselines it chose keep their state across calls."""
        if self._wrapped is None or self._wrapped.fn is not program:
            self._wrapped = WrappedProgram(EstimatorMessenger(default=None), program)
            self.steps, self.tunings, self.switches = 0, {}, []
        return self._wrapped

    def _before_call(self, program: Callable, fn: Callable, args: tuple, kwargs: dict,
                     settings: Settings) -> WrappedProgram:
        """The wrapped ``program``, tuned first when due: before the first call that
        differentiates, and every ``every`` after it. ``fn`` is what :func:`tune_with`
        measures (the model, for a guide in ``settings``)."""
        wrapped = self._program(program)
        if not torch.is_grad_enabled():
            return wrapped
        step, self.steps = self.steps, self.steps + 1
        if self.tunings and (self.every is None or step % self.every):
            return wrapped
        # Measuring runs the program many times: its params must not reach the caller's
        # param capture (SVI's), which collects what the step optimizes.
        with poutine.block(hide_types=["param"]):
            tuning = tune_with(fn, args, kwargs, settings)
        chosen = {site: e for site, e in tuning.config.items() if site not in tuning.fixed}
        previous = wrapped.messenger.tuned
        switches = [Switch(step, site, previous.get(site), e) for site, e in chosen.items() if previous.get(site) != e]
        for switch in switches:
            logger.info("step %d: site %r now uses %r (was %r)", step, switch.site, switch.chosen,
                        switch.previous if switch.previous is not None else "auto")
        wrapped.messenger.tuned = chosen
        self.tunings[step] = tuning
        self.switches += switches
        if switches and isinstance(self.objective, ELBO):
            self.objective.watch_jumps = True  # a new choice's draws are watched for jumps anew
        return wrapped
