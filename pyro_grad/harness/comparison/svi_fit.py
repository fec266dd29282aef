"""One SVI fit of a comparison: a config trained from its seed, with its ELBO trace,
checkpoint diagnoses, times, program evaluations and posterior draws."""

import contextlib
import copy
import math
import time
from typing import Any, Callable, Dict, List, Tuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import prune_subsample_sites

from pyro_grad.diagnostics import diagnose
from pyro_grad.errors import EstimatorError, first_line
from pyro_grad.handler import with_config
from pyro_grad.harness.comparison.autoguide import AutoGuide, subsampled_frames
from pyro_grad.objectives.elbo import ELBO

#: Posterior draws kept per fit.
POSTERIOR_DRAWS = 200
#: Posterior values kept per site and fit (draws × elements), so a stored fit stays small.
MAX_POSTERIOR_VALUES = 1_000_000
#: Gradient draws per checkpoint diagnosis.
CHECKPOINT_DRAWS = 100
#: SVI steps of each configuration run untimed before the first timed fit, so that no
#: fit pays the process's one-time start-up time.
WARMUP_STEPS = 2


def fresh_optimizer(optim: Any) -> Any:
    """A new optimizer for one run: a copy of a Pyro optimizer (so no run inherits
    another's state), or a factory's product."""
    if isinstance(optim, pyro.optim.PyroOptim):
        return copy.deepcopy(optim)
    if callable(optim):
        return optim()
    raise EstimatorError(f"optim must be a Pyro optimizer or a factory of one, got {type(optim).__name__}")


def evaluations_per_particle(model: Callable, guide: Callable, args: tuple, kwargs: dict,
                             objective: Any = ELBO, num_particles: int = 1) -> int:
    """Program evaluations per particle and step, as ``objective`` (of ``num_particles``
    particles, as the fit's) counts them in one run of it: 1, plus the extra runs of the
    difference estimators the config chose (an ``Enumerate()`` that an ELBO sums out is
    one run of support-wide tensors, as in ``TraceEnum_ELBO``, not one run per value). ``guide`` should be a fresh wrapper: this
    run moves its baselines' running averages."""
    # In a scratch param store and random stream: the fit's own params are created by its
    # first step, and its draws start from its seed.
    with poutine.block(), pyro.get_param_store().scope(), torch.random.fork_rng():
        loss = objective(num_particles=num_particles, vectorize_particles=True)
        return loss.estimates(model, guide, args, kwargs).evaluations


def _posterior(guide: Callable, base: Callable, args: tuple, kwargs: dict) -> Tuple[Dict[str, list], List[str]]:
    """``POSTERIOR_DRAWS`` draws of each latent site, indexed by data point, and notes on
    any site left out. A site local to a subsampled plate is drawn for every data point
    when the guide is an :class:`AutoGuide`; another guide's draws of it would be
    indexed by minibatch slot, so they are left out."""
    draws: Dict[str, list] = {}
    left_out: Dict[str, str] = {}
    whole_data = base.whole_data() if isinstance(base, AutoGuide) else contextlib.nullcontext()
    with torch.no_grad(), poutine.block(), whole_data:
        for _ in range(POSTERIOR_DRAWS):
            trace = prune_subsample_sites(poutine.trace(guide).get_trace(*args, **kwargs))
            for name, site in trace.nodes.items():
                if site["type"] != "sample" or site["is_observed"] or name in left_out:
                    continue
                if subsampled_frames(site):
                    left_out[name] = (
                        "is local to a subsampled plate: its draws cover a minibatch, not every data "
                        "point, so they are left out (pg.AutoGuide draws every data point)"
                    )
                elif site["value"].numel() * POSTERIOR_DRAWS > MAX_POSTERIOR_VALUES:
                    left_out[name] = (
                        f"has {site['value'].numel():,} elements per draw: its draws are left out of the "
                        f"stored fit (at most {MAX_POSTERIOR_VALUES:,} values per site)"
                    )
                else:
                    draws.setdefault(name, []).append(site["value"].detach().float().tolist())
    return draws, [f"site '{name}' {reason}" for name, reason in left_out.items()]


def fit_one(model, guide, args, kwargs, config, seed, num_steps, num_particles, optim, diagnose_every,
            on_step=None, reset=None, posterior=True, objective=ELBO, checkpoint_samples=CHECKPOINT_DRAWS,
            compile: Any = False):
    """One SVI fit: the ELBO trace, gradient variance at checkpoints, wall and CPU time
    (checkpoints excluded), evaluations, posterior draws; a non-finite ELBO stops the
    fit and is recorded with its step. ``on_step()`` is called after every step; the
    loss takes ``compile=`` (:mod:`pyro_grad.engine.recording`)."""
    pyro.clear_param_store()
    if reset is not None:
        reset()
    pyro.set_rng_seed(seed)
    base = guide if guide is not None else AutoGuide(model)
    per_particle = evaluations_per_particle(model, with_config(base, config), args, kwargs, objective,
                                            num_particles)
    pyro.set_rng_seed(seed)  # as if the count had not drawn anything (a program may draw from numpy)
    wrapped = with_config(base, config)
    loss = objective(num_particles=num_particles, vectorize_particles=True, compile=compile)
    svi = pyro.infer.SVI(model, wrapped, fresh_optimizer(optim), loss=loss)
    record = {"status": "finished", "reason": "", "step": num_steps, "elbo": [], "checkpoints": []}
    start, start_cpu, diagnosing, diagnosing_cpu = time.perf_counter(), time.process_time(), 0.0, 0.0
    for step in range(num_steps):
        try:
            value = svi.step(*args, **kwargs)
        except EstimatorError:
            raise  # a mistake in the configuration, not in this fit
        except (ValueError, RuntimeError) as error:  # e.g. a parameter driven to NaN
            record.update(status="failed", reason=f"{type(error).__name__} at step {step}: "
                          f"{first_line(error)}", step=step)
            break
        if not math.isfinite(value):
            record.update(status="failed", reason=f"non-finite ELBO ({value}) at step {step}", step=step)
            break
        record["elbo"].append(-value)
        if diagnose_every and (step + 1) % diagnose_every == 0:
            t, t_cpu = time.perf_counter(), time.process_time()
            report = diagnose(model, *args, guide=wrapped, objective=objective, num_samples=checkpoint_samples,
                              num_particles=num_particles, sites=False, seed=seed + step, **kwargs)
            record["checkpoints"].append({
                "step": step + 1,
                "variance": report.total_variance(),
                "snr": float(report.params["SNR"].replace(math.inf, math.nan).median()),
            })
            diagnosing += time.perf_counter() - t
            diagnosing_cpu += time.process_time() - t_cpu
        if on_step is not None:
            on_step()
    record["seconds"] = time.perf_counter() - start - diagnosing
    record["cpu seconds"] = time.process_time() - start_cpu - diagnosing_cpu
    record["evaluations"] = len(record["elbo"]) * num_particles * per_particle
    record["posterior"], record["notes"] = ({}, [])
    if posterior and record["status"] == "finished":
        record["posterior"], record["notes"] = _posterior(wrapped, base, args, kwargs)
    return record
