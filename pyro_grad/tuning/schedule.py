"""When the objectives tune: before the first draws of a program whose sites are left to
``default="tune"``, and every ``retune_every`` steps in :class:`pyro_grad.ELBO`.

A step's estimators are chosen before that step draws anything, from measurements on
draws of their own (a forked random stream), so each step's gradient is an unbiased
estimator's whichever one was chosen.
"""

import logging
from typing import Any, Callable, List, NamedTuple, Optional

import pyro.poutine as poutine
import torch
# Pyro keeps its handler stack here (its own poutine modules read it): the only way to
# find the handlers a call runs inside.
from pyro.poutine.runtime import _PYRO_STACK

from pyro_grad.handler import EstimatorMessenger, WrappedProgram
from pyro_grad.gradient_estimators import Estimator

logger = logging.getLogger("pyro_grad.tuning")


class Switch(NamedTuple):
    """At training ``step`` the measured choice at ``site`` went from ``previous`` (None:
    the objective's "auto") to ``chosen``."""

    step: int
    site: str
    previous: Optional[Estimator]
    chosen: Estimator


def tuning_messengers(program: Callable) -> List[EstimatorMessenger]:
    """The ``default="tune"`` handlers that choose ``program``'s sites: those the call runs
    inside (``with pg.estimators(default="tune"):``) and those wrapping the program."""
    found = [m for m in _PYRO_STACK if isinstance(m, EstimatorMessenger) and m.default == "tune"]
    while isinstance(program, WrappedProgram):
        if program.messenger.default == "tune":
            found.append(program.messenger)
        program = program.fn
    return found


def retune(messengers: List[EstimatorMessenger], measure: Callable[[], "object"], step: int) -> List[Switch]:
    """Tune (``measure()`` returns a :class:`~pyro_grad.tuning.Tuning`) and hand the choice
    to every handler in ``messengers``; returns the sites whose choice changed, logged."""
    if not messengers:
        return []
    # Measuring runs the program many times: its params must not reach the caller's
    # param capture (SVI's), which collects what the step optimizes.
    with poutine.block(hide_types=["param"]):
        tuning = measure()
    chosen = {site: e for site, e in tuning.config.items() if site not in tuning.fixed}
    previous = messengers[0].tuned
    switches = [Switch(step, site, previous.get(site), e) for site, e in chosen.items() if previous.get(site) != e]
    for switch in switches:
        logger.info("step %d: site %r now uses %r (was %r)", step, switch.site, switch.chosen,
                    switch.previous if switch.previous is not None else "auto")
    for messenger in messengers:
        messenger.tuned = dict(chosen)
        messenger.tuning = tuning
    return switches


def tune_program(messengers: List[EstimatorMessenger], step: int, fn: Callable, args: tuple, kwargs: dict,
                 **settings: Any) -> List[Switch]:
    """:func:`retune` by :func:`~pyro_grad.tuning.tune.tune` of ``fn(*args, **kwargs)``
    with ``settings`` (its keywords, kept apart from the program's). Nothing is measured
    where gradients are off (``torch.no_grad()``, for a value alone): the handlers stay
    untuned until a call that differentiates."""
    if not messengers or not torch.is_grad_enabled():
        return []
    # Imported here: the objectives call this module, and tune diagnoses through them.
    from pyro_grad.tuning.tune import Settings, tune_with

    return retune(messengers, lambda: tune_with(fn, args, kwargs, Settings(**settings)), step)
