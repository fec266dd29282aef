"""``compare``: train estimator configurations side by side by SVI, and keep every fit.

A comparison's parts, one module each: one SVI fit (:mod:`.svi_fit`), what the fits
share (:mod:`.fits`), the refusals before anything runs (:mod:`.validation`), equal
budgets (:mod:`.budgets`), the ledger of digests, records and claims (:mod:`.ledger`)
over the store (:mod:`.store`), and executors (:mod:`.executor`).
"""

import sys
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import pyro
from pyro.poutine import Trace
from pyro.util import get_rng_state, set_rng_state

from pyro_grad.engine.recording import compile_options
from pyro_grad.errors import EstimatorError
from pyro_grad.gradient_estimators import Estimator
from pyro_grad.harness.comparison.budgets import equal_evaluations
from pyro_grad.harness.comparison.executor import HEARTBEAT_SECONDS, POLL_SECONDS, check_executor, fit_on_executor
from pyro_grad.harness.comparison.fits import Fits
from pyro_grad.harness.comparison.identity import FitIdentity
from pyro_grad.harness.comparison.ledger import Ledger
from pyro_grad.harness.comparison.module_states import ModuleStates
from pyro_grad.harness.comparison.progress import FitLog
from pyro_grad.harness.comparison.results import Comparison
from pyro_grad.harness.comparison.store import FitStore
from pyro_grad.harness.comparison.svi_fit import CHECKPOINT_DRAWS, POSTERIOR_DRAWS, fresh_optimizer
from pyro_grad.harness.comparison.validation import check_settings
from pyro_grad.objectives.elbo import ELBO


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
    compile: Any = False,
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

    With ``out``, each fit is stored in ``out/fits.sqlite`` as it ends, keyed by a digest
    of everything that determines it (model and guide source, data, estimators, steps,
    particles, optimizer, seed, versions): a later call reuses a stored fit only when
    its digest matches, and recomputes it otherwise. Processes sharing ``out`` never
    compute the same fit twice.

    A fit whose ELBO turns non-finite (or whose step raises, as when a parameter turns
    NaN) stops, is recorded with the reason and step, and the others go on; a config
    whose every fit fails raises :class:`~pyro_grad.EstimatorError` once all fits are
    stored. ``optim`` is a Pyro optimizer or a factory of one (default: Adam, lr 0.01).
    Every fit starts from a cleared param store; ``reset`` restores any state kept
    outside it (an ``nn.Module``'s weights trained in place), so that every fit starts
    alike. The caller's param store and random state are as they were when it returns.

    ``budget="steps"`` trains every config for ``num_steps``; ``budget="evaluations"``
    gives every config the program evaluations that ``num_steps`` steps of the cheapest
    config take (particles × evaluations per particle, which the difference estimators
    multiply), so a costlier config trains for proportionally fewer steps (at least 1)
    and is diagnosed at the same fractions of its fit.

    ``executor`` (a ``concurrent.futures.Executor``: a ``ProcessPoolExecutor``, a Dask
    cluster's ``distributed.Client(...).get_executor()``, Ray's) computes each (config,
    seed) as one task, carried by cloudpickle; the results are bit for bit those of the
    serial fits, and this process alone writes the store, as each result arrives. A fit
    whose worker dies is retried once, then recorded failed with the reason (and
    computed again by the next call). See :mod:`pyro_grad.harness.comparison.executor`.

    ``compile`` is each fit's loss's ``compile=`` (:mod:`pyro_grad.engine.recording`):
    ``"auto"`` records each fit's step and runs it as recorded, the same draws and
    answers in about half an SVI step's time where the program can be recorded;
    ``True`` compiles it (TorchInductor: seconds per fit before it pays, and random
    numbers of its own). The default, False, runs every step uncompiled: a recording
    costs about 0.2–0.5 s per fit and pays for itself after 100–500 steps, so fits of a
    few hundred steps, as the main job's, were no faster with it (the main job: 2 min
    59 s with ``"auto"`` against 2 min 49 s without).
    """
    check_executor(executor)
    compile_options(compile)
    # The fits clear the param store and seed the random streams: the caller's are
    # kept aside and restored, whatever happens.
    rng = get_rng_state()
    try:
        with pyro.get_param_store().scope():
            return _compare(model, guide, args, kwargs, configs, num_steps, num_particles, seeds, optim,
                            diagnose_every, out, reset, objective, checkpoint_samples, budget, executor, compile)
    finally:
        set_rng_state(rng)


def _compare(model, guide, args, kwargs, configs, num_steps, num_particles, seeds, optim, diagnose_every, out,
             reset, objective, checkpoint_samples, budget, executor, compile) -> Comparison:
    model_trace = check_settings(model, args, kwargs, configs, num_steps, num_particles, seeds, diagnose_every,
                                 checkpoint_samples, budget, objective)
    optim = optim if optim is not None else (lambda: pyro.optim.Adam({"lr": 0.01}))
    # Every fit (the warm-up too) starts from the state identified here: reset's, and
    # the configs' baseline networks as given (restored before each fit, and at the end).
    if reset is not None:
        reset()
    modules = ModuleStates(configs)
    identity = FitIdentity(
        model=model, guide=guide if guide is not None else "AutoGuide", args=args, kwargs=kwargs,
        num_steps=num_steps, num_particles=num_particles, diagnose_every=diagnose_every,
        optim=fresh_optimizer(optim), reset=reset, objective=objective,
        draws=(POSTERIOR_DRAWS, checkpoint_samples), compile=compile,
    )
    if budget == "evaluations":
        schedules = equal_evaluations(model, guide, args, kwargs, configs, num_steps, num_particles, diagnose_every,
                                      objective)
    else:
        schedules = {label: (num_steps, diagnose_every) for label in configs}
    fits = Fits(model, guide, args, kwargs, configs, schedules, num_particles, optim, reset, objective,
                checkpoint_samples, modules, compile)
    ledger = Ledger(FitStore(out), {
        (label, seed): identity.digest(configs[label], seed, None if budget == "steps" else schedules[label])
        for label in configs for seed in seeds})
    try:
        if executor is None:
            _fit_here(fits, ledger)
        else:
            fit_on_executor(executor, fits, ledger)
    finally:
        modules.restore()
    ordered = ledger.ordered()
    settings = {"num_steps": num_steps, "num_particles": num_particles, "seeds": tuple(seeds), "budget": budget,
                "diagnose_every": diagnose_every, "checkpoint_samples": checkpoint_samples,
                "batch": data_per_step(model_trace)}
    comparison = Comparison(ordered, {label: repr(config) for label, config in configs.items()},
                            origin=ledger.origin, objective="ELBO" if objective.averages_particles else "bound",
                            unbiased={label: claims_unbiased(config) for label, config in configs.items()},
                            settings=settings)
    for label in configs:
        label_fits = [(seed, ordered[(label, seed)]) for seed in seeds]
        if all(r["status"] != "finished" for _, r in label_fits):
            seed, first = label_fits[0]
            raise ConfigFailed(
                f"config {label!r} failed in every fit ({len(label_fits)} of {len(label_fits)}); "
                f"seed {seed}: {first['reason']}",
                comparison,
            )
    return comparison


def data_per_step(trace: Trace) -> str:
    """What one step of the model (its ``trace``) sees of its data: each subsampled
    plate's minibatch ("plate 'data': 10 of 40"), else the whole data."""
    minibatches = {}
    for site in trace.nodes.values():
        for frame in site.get("cond_indep_stack", ()):
            if frame.vectorized and frame.size is not None and frame.full_size not in (None, frame.size):
                minibatches[frame.name] = f"plate '{frame.name}': {frame.size} of {frame.full_size}"
    return "; ".join(minibatches.values()) or "the whole data"


def _fit_here(fits: Fits, ledger: Ledger) -> None:
    """Compute the pending fits in this process, one after another, with a progress bar
    over their steps; fits another process holds are waited for."""
    pending = ledger.pending()
    if not pending:
        return
    for label in dict.fromkeys(label for label, _ in pending):
        fits.warm_up(label, pending[0][1])
    from tqdm.auto import tqdm

    progress = tqdm(total=sum(fits.schedules[label][0] for label, _ in pending),
                    disable=not sys.stderr.isatty(), desc="compare")
    log = FitLog(len(pending))
    try:
        waiting = _fit_claimed(pending, ledger, fits.fit, progress, log)
        while waiting:  # fits other processes hold: wait for them, or take over a dead one's
            time.sleep(POLL_SECONDS)
            waiting = _fit_claimed(waiting, ledger, fits.fit, progress, log)
    finally:
        progress.close()


def _fit_claimed(keys, ledger: Ledger, compute, progress, log: FitLog) -> list:
    """Compute each fit in ``keys`` this process can claim, storing each as it ends;
    fits another process stored meanwhile are taken from the store. Returns the keys a
    live process holds."""
    held = []
    for key in keys:
        if key in ledger.records:
            continue
        claim = ledger.claim(key)
        if claim == "held":
            held.append(key)
        if claim != "claimed":
            continue
        beat = [time.monotonic()]

        def on_step() -> None:
            progress.update(1)
            if time.monotonic() - beat[0] > HEARTBEAT_SECONDS:
                ledger.heartbeat([key])
                beat[0] = time.monotonic()

        try:
            record = compute(*key, on_step)
            ledger.put(key, record)
        except BaseException:
            ledger.release([key])
            raise
        log.stored(key, record)
    return held


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
    """Every fit of a config failed. ``comparison`` still holds every fit (all stored),
    for a caller that reports the failure rather than stopping at it."""

    def __init__(self, message: str, comparison: Comparison):
        super().__init__(message)
        self.comparison = comparison
