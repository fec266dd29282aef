"""``compare``: train estimator configurations side by side by SVI, and keep every run."""

import contextlib
import copy
import dataclasses
import math
import numbers
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import pyro
import pyro.poutine as poutine
from pyro.poutine.util import prune_subsample_sites
import torch

from pyro_grad.harness.comparison.autoguide import AutoGuide, subsampled_frames
from pyro_grad.harness.comparison.executor import (HEARTBEAT_SECONDS, POLL_SECONDS, check_executor, claim_or_reuse,
                                            run_on_executor)
from pyro_grad.harness.comparison.progress import RunLog
from pyro_grad.harness.comparison.identity import RunIdentity
from pyro_grad.harness.comparison.results import Comparison
from pyro_grad.harness.comparison.store import RunStore, is_lost
from pyro_grad.diagnostics import diagnose
from pyro_grad.errors import EstimatorError, first_line
from pyro_grad.handler import with_config
from pyro_grad.objectives.elbo import ELBO
from pyro_grad.engine.surrogate import evaluations
from pyro_grad.gradient_estimators import Estimator

#: Posterior draws kept per run.
POSTERIOR_DRAWS = 200
#: Posterior values kept per site and run (draws × elements), so a stored run stays small.
MAX_POSTERIOR_VALUES = 1_000_000
#: Gradient draws per checkpoint diagnosis.
CHECKPOINT_DRAWS = 100
#: SVI steps of each configuration run untimed before the first timed run, so that no
#: run pays the process's one-time start-up time.
WARMUP_STEPS = 2


def _fresh_optimizer(optim: Any) -> Any:
    """A new optimizer for one run: a copy of a Pyro optimizer (so no run inherits
    another's state), or a factory's product."""
    if isinstance(optim, pyro.optim.PyroOptim):
        return copy.deepcopy(optim)
    if callable(optim):
        return optim()
    raise EstimatorError(f"optim must be a Pyro optimizer or a factory of one, got {type(optim).__name__}")


def _evaluations_per_particle(guide: Callable, args: tuple, kwargs: dict) -> int:
    """Program evaluations per particle and step: 1, plus the extra runs of the
    difference estimators the config chose (``runs(site)`` of each guide site)."""
    # In a scratch param store: the run's own params are created by its first step.
    with torch.no_grad(), poutine.block(), pyro.get_param_store().scope():
        return evaluations(poutine.trace(guide).get_trace(*args, **kwargs))


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
                        f"stored run (at most {MAX_POSTERIOR_VALUES:,} values per site)"
                    )
                else:
                    draws.setdefault(name, []).append(site["value"].detach().float().tolist())
    return draws, [f"site '{name}' {reason}" for name, reason in left_out.items()]


def run_one(model, guide, args, kwargs, config, seed, num_steps, num_particles, optim, diagnose_every,
            on_step=None, reset=None, posterior=True, objective=ELBO, checkpoint_samples=CHECKPOINT_DRAWS):
    """One SVI run: the ELBO trace, gradient variance at checkpoints, wall and CPU time
    (checkpoints excluded), evaluations, posterior draws; a non-finite ELBO stops the
    run and is recorded with its step. ``on_step()`` is called after every step."""
    pyro.clear_param_store()
    if reset is not None:
        reset()
    pyro.set_rng_seed(seed)
    base = guide if guide is not None else AutoGuide(model)
    wrapped = with_config(base, config)
    per_particle = _evaluations_per_particle(wrapped, args, kwargs)
    pyro.set_rng_seed(seed)  # as if the count had not drawn anything
    loss = objective(num_particles=num_particles, vectorize_particles=True)
    svi = pyro.infer.SVI(model, wrapped, _fresh_optimizer(optim), loss=loss)
    record = {"status": "finished", "reason": "", "step": num_steps, "elbo": [], "checkpoints": []}
    start, start_cpu, diagnosing, diagnosing_cpu = time.perf_counter(), time.process_time(), 0.0, 0.0
    for step in range(num_steps):
        try:
            value = svi.step(*args, **kwargs)
        except EstimatorError:
            raise  # a mistake in the configuration, not in this run
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


class ModuleStates:
    """The weights of every ``nn.Module`` in the configs (a Score baseline network),
    saved once so that each run can start from them."""

    def __init__(self, configs: Mapping[str, Any]):
        self.saved = [(m, copy.deepcopy(m.state_dict())) for m in _modules(list(configs.values()))]

    def restore(self) -> None:
        for module, state in self.saved:
            module.load_state_dict(state)


def _modules(obj: Any) -> List[torch.nn.Module]:
    if isinstance(obj, torch.nn.Module):
        return [obj]
    if isinstance(obj, Mapping):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [m for item in obj for m in _modules(item)]
    if isinstance(obj, Estimator):
        return _modules(list(vars(obj).values()))
    return []


@dataclasses.dataclass
class Runs:
    """Everything the runs of one :func:`compare` call share, and how to compute one of
    them. Pickled whole (by cloudpickle) for an executor's workers, so that a worker
    computes a run exactly as the calling process would: every run starts from a cleared
    param store, the configs' networks as given, ``reset``, and its own seed."""

    model: Callable
    guide: Optional[Callable]
    args: tuple
    kwargs: dict
    configs: Mapping[str, Any]
    #: Per config label: (SVI steps, diagnose_every).
    schedules: Dict[str, Tuple[int, Optional[int]]]
    num_particles: int
    optim: Any
    reset: Optional[Callable[[], None]]
    objective: Any
    checkpoint_samples: int
    modules: ModuleStates

    def start_alike(self) -> None:
        self.modules.restore()
        if self.reset is not None:
            self.reset()

    def run(self, label: str, seed: int, on_step: Optional[Callable[[], None]] = None) -> Dict[str, Any]:
        steps, every = self.schedules[label]
        return run_one(self.model, self.guide, self.args, self.kwargs, self.configs[label], seed, steps,
                       self.num_particles, self.optim, every, on_step, self.start_alike,
                       objective=self.objective, checkpoint_samples=self.checkpoint_samples)

    def warm_up(self, label: str, seed: int) -> None:
        """A few untimed steps: a process's first steps pay one-time start-up time that no
        run should."""
        run_one(self.model, self.guide, self.args, self.kwargs, self.configs[label], seed,
                min(WARMUP_STEPS, self.schedules[label][0]), self.num_particles, self.optim, None,
                reset=self.start_alike, posterior=False, objective=self.objective)


def _check_settings(model, args, kwargs, configs, num_steps, num_particles, seeds, diagnose_every) -> None:
    """Refuse settings that cannot give a comparison, before anything runs."""
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


def compare(
    model: Callable,
    guide: Optional[Callable] = None,
    *args: Any,
    configs: Mapping[str, Any],
    num_steps: int = 500,
    num_particles: int = 4,
    seeds: Sequence[int] = (0, 1, 2),
    optim: Any = None,
    diagnose_every: Optional[int] = None,
    out: Optional[str] = None,
    reset: Optional[Callable[[], None]] = None,
    objective: Any = ELBO,
    checkpoint_samples: int = CHECKPOINT_DRAWS,
    budget: str = "steps",
    executor: Any = None,
    **kwargs: Any,
) -> Comparison:
    """Train ``model`` with ``guide`` (an :class:`AutoGuide` when None) by SVI under each
    estimators config and seed, with ``objective`` (an ELBO class, :class:`~pyro_grad.ELBO`
    by default, built with ``num_particles``, vectorized) as the loss; the checkpoint
    diagnoses differentiate the same objective.

    ``configs`` maps a label to an estimators config (site → estimator, a callable, one
    estimator for every site, or None for ``"auto"``). Every ``diagnose_every`` steps the
    gradient's total variance and median SNR are measured with :func:`diagnose`, from
    ``checkpoint_samples`` gradient draws.

    With ``out``, each run is stored in ``out/runs.sqlite`` as it ends, keyed by a digest
    of everything that determines it (model and guide source, data, estimators, steps,
    particles, optimizer, seed, versions): a later call reuses a stored run only when
    its digest matches, and recomputes it otherwise. Processes sharing ``out`` never
    compute the same run twice.

    A run whose ELBO turns non-finite (or whose step raises, as when a parameter turns
    NaN) stops, is recorded with the reason and step, and the others go on; a config
    whose every run fails raises :class:`~pyro_grad.EstimatorError` once all runs are
    stored. ``optim`` is a Pyro optimizer or a factory of one (default: Adam, lr 0.01).
    Every run starts from a cleared param store; ``reset`` restores any state kept
    outside it (an ``nn.Module``'s weights trained in place), so that every run starts
    alike.

    ``budget="steps"`` trains every config for ``num_steps``; ``budget="evaluations"``
    gives every config the program evaluations that ``num_steps`` steps of the cheapest
    config take (particles × evaluations per particle, which the difference estimators
    multiply), so a costlier config trains for proportionally fewer steps (at least 1)
    and is diagnosed at the same fractions of its run.

    ``executor`` (a ``concurrent.futures.Executor``: a ``ProcessPoolExecutor``, a Dask
    cluster's ``distributed.Client(...).get_executor()``, Ray's) runs each (config, seed)
    as one task, carried by cloudpickle; the results are bit for bit those of the serial
    runs, and this process alone writes the store, as each result arrives. A run whose
    worker dies is retried once, then recorded failed with the reason (and computed again
    by the next call). See :mod:`pyro_grad.harness.comparison.executor`.
    """
    _check_settings(model, args, kwargs, configs, num_steps, num_particles, seeds, diagnose_every)
    if isinstance(checkpoint_samples, bool) or not isinstance(checkpoint_samples, int) or checkpoint_samples < 2:
        raise EstimatorError(f"checkpoint_samples must be an integer >= 2, got {checkpoint_samples!r}")
    if budget not in ("steps", "evaluations"):
        raise EstimatorError(f"budget must be 'steps' or 'evaluations', got {budget!r}")
    check_executor(executor)
    if not (isinstance(objective, type) and issubclass(objective, ELBO)):
        raise EstimatorError(
            f"compare trains by SVI, which needs an ELBO: objective must be an ELBO class such as "
            f"pg.ELBO, got {objective!r}"
        )
    optim = optim if optim is not None else (lambda: pyro.optim.Adam({"lr": 0.01}))
    # Every run (the warm-up too) starts from the state identified here: reset's, and
    # the configs' baseline networks as given (restored before each run, and at the end).
    if reset is not None:
        reset()
    modules = ModuleStates(configs)
    identity = RunIdentity(
        model=model, guide=guide if guide is not None else "AutoGuide", args=args, kwargs=kwargs,
        num_steps=num_steps, num_particles=num_particles, diagnose_every=diagnose_every,
        optim=_fresh_optimizer(optim), reset=reset, objective=objective,
        draws=(POSTERIOR_DRAWS, checkpoint_samples),
    )
    if budget == "evaluations":
        schedules = equal_evaluations(model, guide, args, kwargs, configs, num_steps, num_particles, diagnose_every)
    else:
        schedules = {label: (num_steps, diagnose_every) for label in configs}
    runs = Runs(model, guide, args, kwargs, configs, schedules, num_particles, optim, reset, objective,
                checkpoint_samples, modules)
    store = RunStore(out)
    digests = {(label, seed): identity.digest(configs[label], seed, None if budget == "steps" else schedules[label])
               for label in configs for seed in seeds}
    records: Dict[Tuple[str, int], Dict[str, Any]] = {}
    origin: Dict[Tuple[str, int], str] = {}
    pending = []
    for (label, seed), digest in digests.items():
        stored = store.get(digest)
        if stored is not None and not is_lost(stored):
            records[(label, seed)] = stored
            origin[(label, seed)] = "reused"
        else:  # a run lost with its worker is computed again
            pending.append((label, seed))
            other = stored is not None or store.holds_other_settings(label, seed, digest)
            origin[(label, seed)] = "recomputed" if other else "new"
    try:
        if executor is None:
            _run_here(runs, pending, digests, store, records, origin)
        else:
            run_on_executor(executor, runs, pending, digests, store, records, origin)
    finally:
        modules.restore()
    ordered = {key: records[key] for key in digests}
    comparison = Comparison(ordered, {label: repr(config) for label, config in configs.items()}, origin=origin,
                            objective="ELBO" if objective.averages_particles else "bound",
                            unbiased={label: claims_unbiased(config) for label, config in configs.items()})
    for label in configs:
        label_runs = [(seed, ordered[(label, seed)]) for seed in seeds]
        if all(r["status"] != "finished" for _, r in label_runs):
            seed, first = label_runs[0]
            raise ConfigFailed(
                f"config {label!r} failed in every run ({len(label_runs)} of {len(label_runs)}); "
                f"seed {seed}: {first['reason']}",
                comparison,
            )
    return comparison


def _run_here(runs: "Runs", pending: list, digests, store, records, origin) -> None:
    """Compute the pending runs in this process, one after another, with a progress bar
    over their steps."""
    if not pending:
        return
    for label in dict.fromkeys(label for label, _ in pending):
        runs.warm_up(label, pending[0][1])
    from tqdm.auto import tqdm

    progress = tqdm(total=sum(runs.schedules[label][0] for label, _ in pending),
                    disable=not sys.stderr.isatty(), desc="compare")
    log = RunLog(len(pending))
    try:
        waiting = _run_claimed(pending, digests, store, records, origin, runs.run, progress, log)
        while waiting:  # runs other processes hold: wait for them, or take over a dead one's
            time.sleep(POLL_SECONDS)
            waiting = _run_claimed(waiting, digests, store, records, origin, runs.run, progress, log)
    finally:
        progress.close()


def equal_evaluations(model, guide, args, kwargs, configs, num_steps, num_particles,
                      diagnose_every) -> Dict[str, Tuple[int, Optional[int]]]:
    """Per config, (steps, diagnose_every) that spend the evaluations of ``num_steps``
    steps of the cheapest config."""
    base = guide if guide is not None else AutoGuide(model)
    with poutine.block(), torch.random.fork_rng():
        costs = {label: num_particles * _evaluations_per_particle(with_config(base, config), args, kwargs)
                 for label, config in configs.items()}
    budget = num_steps * min(costs.values())
    schedules = {}
    for label, cost in costs.items():
        steps = max(1, budget // cost)
        every = None if diagnose_every is None else max(1, round(diagnose_every * steps / num_steps))
        schedules[label] = (steps, every)
    return schedules


def claims_unbiased(config: Any) -> Optional[bool]:
    """Whether every estimator an estimators config sets claims ``unbiased=True``; None
    "auto" (Reparam or Score) is; a callable config may choose anything (None)."""
    if config is None:
        return True
    if isinstance(config, Estimator):
        return config.unbiased
    if isinstance(config, Mapping):
        return all(estimator.unbiased for estimator in config.values())
    return None


class ConfigFailed(EstimatorError):
    """Every run of a config failed. ``comparison`` still holds every run (all stored),
    for a caller that reports the failure rather than stopping at it."""

    def __init__(self, message: str, comparison: Comparison):
        super().__init__(message)
        self.comparison = comparison


def _run_claimed(keys, digests, store, records, origin, compute, progress, log: RunLog) -> list:
    """Compute each run in ``keys`` this process can claim, storing each as it ends;
    runs another process stored meanwhile are taken from the store. Returns the keys a
    live process holds."""
    held = []
    for key in keys:
        if key in records:
            continue
        digest = digests[key]
        claim = claim_or_reuse(key, digests, store, records, origin)
        if claim == "held":
            held.append(key)
        if claim != "claimed":
            continue
        beat = [time.monotonic()]

        def on_step() -> None:
            progress.update(1)
            if time.monotonic() - beat[0] > HEARTBEAT_SECONDS:
                store.heartbeat(digest)
                beat[0] = time.monotonic()

        try:
            record = compute(*key, on_step)
            store.put(digest, *key, record)
        except BaseException:
            with contextlib.suppress(EstimatorError):  # the store may be what failed; its error is the one raised
                store.release(digest)
            raise
        records[key] = record
        log.stored(key, record)
    return held
