"""``compare``: train estimator configurations side by side by SVI, and keep every run."""

import math
import sys
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

import pyro
import pyro.poutine as poutine
from pyro.poutine.util import prune_subsample_sites
import torch
from tqdm.auto import tqdm

from pyro_grad.comparison.autoguide import AutoGuide
from pyro_grad.comparison.results import Comparison
from pyro_grad.comparison.store import RunStore
from pyro_grad.diagnostics import diagnose
from pyro_grad.errors import EstimatorError
from pyro_grad.handler import estimators as estimators_handler
from pyro_grad.objectives.elbo import ELBO
from pyro_grad.paths import Estimator

#: Posterior draws kept per run.
POSTERIOR_DRAWS = 200
#: Gradient draws per checkpoint diagnosis.
CHECKPOINT_DRAWS = 100


def _with_config(guide: Callable, config: Any) -> Callable:
    if config is None:
        return estimators_handler(guide)
    if isinstance(config, Estimator):
        return estimators_handler(guide, default=config)
    return estimators_handler(guide, config)


def _posterior(guide: Callable, args: tuple, kwargs: dict) -> Dict[str, list]:
    draws: Dict[str, list] = {}
    with torch.no_grad(), poutine.block():
        for _ in range(POSTERIOR_DRAWS):
            trace = prune_subsample_sites(poutine.trace(guide).get_trace(*args, **kwargs))
            for name, site in trace.nodes.items():
                if site["type"] == "sample" and not site["is_observed"]:
                    draws.setdefault(name, []).append(site["value"].detach().float().tolist())
    return draws


def run_one(model, guide, args, kwargs, config, seed, num_steps, num_particles, optim, diagnose_every, progress,
            reset=None):
    """One SVI run: the ELBO trace, gradient variance at checkpoints, time, evaluations,
    posterior draws; a non-finite ELBO stops the run and is recorded with its step."""
    pyro.clear_param_store()
    if reset is not None:
        reset()
    pyro.set_rng_seed(seed)
    base = guide if guide is not None else AutoGuide(model)
    wrapped = _with_config(base, config)
    loss = ELBO(num_particles=num_particles, vectorize_particles=True)
    svi = pyro.infer.SVI(model, wrapped, optim() if callable(optim) else optim, loss=loss)
    record = {"status": "finished", "reason": "", "step": num_steps, "elbo": [], "checkpoints": []}
    start, diagnosing = time.perf_counter(), 0.0
    for step in range(num_steps):
        try:
            value = svi.step(*args, **kwargs)
        except EstimatorError:
            raise  # a mistake in the configuration, not in this run
        except (ValueError, RuntimeError) as error:  # e.g. a parameter driven to NaN
            record.update(status="failed", reason=f"{type(error).__name__} at step {step}: "
                          f"{str(error).splitlines()[0]}", step=step)
            break
        if not math.isfinite(value):
            record.update(status="failed", reason=f"non-finite ELBO ({value}) at step {step}", step=step)
            break
        record["elbo"].append(-value)
        if diagnose_every and (step + 1) % diagnose_every == 0:
            t = time.perf_counter()
            report = diagnose(model, *args, guide=wrapped, num_samples=CHECKPOINT_DRAWS,
                              num_particles=num_particles, sites=False, seed=seed + step, **kwargs)
            totals = report.params.groupby("param")["total variance"].first()
            record["checkpoints"].append({
                "step": step + 1,
                "variance": float(totals.sum()),
                "snr": float(report.params["SNR"].replace(math.inf, math.nan).median()),
            })
            diagnosing += time.perf_counter() - t
        progress.update(1)
    record["seconds"] = time.perf_counter() - start - diagnosing
    record["evaluations"] = len(record["elbo"]) * num_particles
    record["posterior"] = _posterior(wrapped, args, kwargs) if record["status"] == "finished" else {}
    return record


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
    **kwargs: Any,
) -> Comparison:
    """Train ``model`` with ``guide`` (an :class:`AutoGuide` when None) by SVI under each
    estimators config and seed, with :class:`~pyro_grad.ELBO` (``num_particles``,
    vectorized).

    ``configs`` maps a label to an estimators config (site → estimator, a callable, one
    estimator for every site, or None for ``"auto"``). Every ``diagnose_every`` steps the
    gradient's total variance and median SNR are measured with :func:`diagnose`. With
    ``out``, each finished (config, seed) run is stored in ``out/runs.sqlite`` as it
    ends, and stored runs are skipped on the next call. A run whose ELBO turns
    non-finite (or whose step raises, as when a parameter turns NaN) stops, is recorded
    with the reason and step, and the others go on.
    ``optim`` is a Pyro optimizer or a factory of one (default: Adam, lr 0.01). Every run
    starts from a cleared param store; ``reset`` restores any state kept outside it (an
    ``nn.Module``'s weights trained in place), so that every run starts alike.
    """
    if not isinstance(configs, Mapping) or not configs:
        raise EstimatorError("configs must be a non-empty dict of label -> estimators config")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise EstimatorError(f"num_steps must be a positive integer, got {num_steps!r}")
    try:
        store = RunStore(out)
    except OSError as error:
        raise EstimatorError(f"cannot write runs to {out!r}: {error.strerror}") from None
    optim = optim if optim is not None else (lambda: pyro.optim.Adam({"lr": 0.01}))
    records = {}
    pending = [(label, seed) for label in configs for seed in seeds if store.get(label, seed) is None]
    progress = tqdm(total=len(pending) * num_steps, disable=not sys.stderr.isatty(), desc="compare")
    for label in configs:
        for seed in seeds:
            stored = store.get(label, seed)
            if stored is None:
                stored = run_one(model, guide, args, kwargs, configs[label], seed, num_steps,
                                 num_particles, optim, diagnose_every, progress, reset)
                store.put(label, seed, stored)
            records[(label, seed)] = stored
    progress.close()
    return Comparison(records, {label: repr(config) for label, config in configs.items()})
