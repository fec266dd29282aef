"""Refusals before a comparison runs anything: settings that cannot give one."""

import numbers
from collections.abc import Mapping
from typing import Sequence

import pyro.poutine as poutine
from pyro.poutine import Trace
import torch

from pyro_grad.errors import EstimatorError
from pyro_grad.objectives.elbo import ELBO


def check_settings(model, args, kwargs, configs, num_steps, num_particles, seeds, diagnose_every, checkpoint_samples,
                   budget, objective) -> Trace:
    """Refuse settings that cannot give a comparison, before anything runs; returns the
    model's trace of the one run that checks it (what its data plates hold)."""
    if not isinstance(configs, Mapping) or not configs:
        raise EstimatorError("configs must be a non-empty dict of label -> estimators config")
    for name, value in (("num_steps", num_steps), ("num_particles", num_particles)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EstimatorError(f"{name} must be a positive integer, got {value!r}")
    if diagnose_every is not None and (isinstance(diagnose_every, bool) or not isinstance(diagnose_every, int)
                                       or diagnose_every < 1):
        raise EstimatorError(f"diagnose_every must be None or a positive integer, got {diagnose_every!r}")
    given = seeds
    seeds = list(seeds) if isinstance(seeds, Sequence) and not isinstance(seeds, str) else None
    if not seeds or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in seeds):
        raise EstimatorError(f"seeds must be a non-empty sequence of integers, got {given!r}")
    if len(set(seeds)) != len(seeds):
        raise EstimatorError(f"seeds must be distinct, got {seeds!r}")
    with poutine.block(), torch.no_grad():
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    if not any(site["type"] == "sample" and site["is_observed"] for site in trace.nodes.values()):
        raise EstimatorError(
            f"model {getattr(model, '__qualname__', model)!r} has no observed site, so there is no "
            "ELBO to train; for the gradient of an expectation E[f], use pg.diagnose (pyro-grad diagnose)"
        )
    if isinstance(checkpoint_samples, bool) or not isinstance(checkpoint_samples, int) or checkpoint_samples < 2:
        raise EstimatorError(f"checkpoint_samples must be an integer >= 2, got {checkpoint_samples!r}")
    if budget not in ("steps", "evaluations"):
        raise EstimatorError(f"budget must be 'steps' or 'evaluations', got {budget!r}")
    if not (isinstance(objective, type) and issubclass(objective, ELBO)):
        raise EstimatorError(
            f"compare trains by SVI, which needs an ELBO: objective must be an ELBO class such as "
            f"pg.ELBO, got {objective!r}"
        )
    return trace
