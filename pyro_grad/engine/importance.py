"""``importance_run``: a guide run and the model replayed against it, as an ELBO scores them.

This is Pyro's ``get_importance_trace`` with three differences an estimator needs:

* the unpruned traces are kept beside the pruned ones, because an alternative run
  (:mod:`pyro_grad.engine.alternative_run`) must replay the first run's subsample
  indices — else a re-run of a subsampled plate scores other data points than the
  first run, and a per-datum difference compares different data;
* a re-run whose only use is its value of f (``scores=False``) computes log-densities
  alone: no score parts, and no re-validation of the structure the first run checked;
* a density is computed on plain tensors, and the provenance of its value and its
  distribution's parameters is put on the result: tracking provenance through the
  density, its support check, scaling and NaN checks took most of a VAE step.
"""

from typing import Callable, NamedTuple, Optional

import torch

import pyro.poutine as poutine
from pyro.distributions.score_parts import ScoreParts
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import is_validation_enabled
from pyro.poutine.guide import GuideMessenger
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_model_guide_match, check_site_shape, warn_if_inf, warn_if_nan

from pyro_grad.engine.provenance import plain, provenance_of
from pyro_grad.distributions import describe, detached_parameters, parameter_provenance, without_provenance
from pyro_grad.errors import EstimatorError
from pyro_grad.errors import float_index, float_index_error, is_index_dtype_error
from pyro_grad.engine.control_flow import watched
from pyro_grad.gradient_estimators.base import drops_score_of_q

#: A site's cached log-densities, recomputed when its value changes.
_DENSITY_KEYS = ("log_prob", "unscaled_log_prob", "log_prob_sum", "score_parts", "packed")


class ImportanceRun(NamedTuple):
    """One guide run and the model replayed on it: the traces an ELBO scores (subsample
    sites pruned, log-densities computed) and the unpruned traces an alternative run
    replays."""

    model_trace: Trace
    guide_trace: Trace
    model_full: Trace
    guide_full: Trace


def importance_run(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    max_plate_nesting: float,
    scores: bool = True,
    guide_full: Optional[Trace] = None,
) -> ImportanceRun:
    """Run ``guide``, replay ``model`` against it, and score both.

    ``scores=True`` computes the guide's score parts and, under Pyro's validation,
    checks the model against the guide and every site's shape (a first run).
    ``scores=False`` computes log-densities only (a re-run for its value of f). Given
    ``guide_full``, the guide is not run: the model replays that trace (see
    :func:`changed_last_site`).
    """
    if guide_full is None and isinstance(poutine.unwrap(guide), GuideMessenger):
        # A GuideMessenger runs the model itself and keeps no unpruned trace.
        model_trace, guide_trace = get_importance_trace("dense", max_plate_nesting, model, guide, args, kwargs)
        return ImportanceRun(model_trace, guide_trace, model_trace, guide_trace)
    if guide_full is None:
        guide_full = poutine.trace(guide, graph_type="dense").get_trace(*args, **kwargs)
    try:
        model_full = poutine.trace(poutine.replay(model, trace=guide_full), graph_type="dense").get_trace(*args, **kwargs)
    except (IndexError, RuntimeError) as error:
        floats = [float_index(site["infer"].get("estimator"), name, describe(site["fn"]))
                  for name, site in guide_full.nodes.items() if getattr(site.get("fn"), "draws_float_index", False)]
        if floats and is_index_dtype_error(error):
            raise float_index_error(floats, error) from error
        raise
    validate = scores and is_validation_enabled()
    if validate:
        check_model_guide_match(model_full, guide_full, max_plate_nesting)
    guide_trace, model_trace = prune_subsample_sites(guide_full), prune_subsample_sites(model_full)
    compute_densities(model_trace, scores=False)
    compute_densities(guide_trace, scores=scores, guide=True)
    if validate:
        for trace in (model_trace, guide_trace):
            for site in trace.nodes.values():
                if site["type"] == "sample":
                    check_site_shape(site, max_plate_nesting)
    return ImportanceRun(model_trace, guide_trace, model_full, guide_full)


def compute_densities(trace: Trace, scores: bool, guide: bool = False) -> None:
    """Pyro's ``Trace.compute_score_parts`` (``scores=True``) or ``compute_log_prob``,
    each site's density computed on plain tensors: its ``log_prob`` carries the
    provenance of the value, the distribution's parameters and the mask, nothing else
    does. Memoized as Pyro's. In a ``guide`` trace, a site whose estimator drops the
    score of ``q`` (STL, DReG) is scored at its parameters detached; never in the
    model's, whose replayed sites carry the guide's ``infer``."""
    key = "score_parts" if scores else "log_prob"
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or key in site:
            continue
        fn, value = site["fn"], site["value"]
        upstream = parameter_provenance(fn) | provenance_of(value)
        fn = without_provenance(fn)
        estimator = site["infer"].get("estimator")
        if guide and drops_score_of_q(estimator) and not site["is_observed"]:
            fn = detached_parameters_of_site(name, estimator, fn, plain(value))
        try:
            parts = (fn.score_parts if scores else fn.log_prob)(plain(value), *site["args"], **site["kwargs"])
        except ValueError as error:
            raise ValueError(
                f"Error while computing {key} at site '{name}':\n{error}\n{trace.format_shapes(last_site=name)}"
            ) from error
        if not scores:
            parts = ScoreParts(log_prob=parts, score_function=0, entropy_term=0)
        # Tensors the plain copy could not reach (a transform's) tracked their own.
        upstream |= provenance_of(parts.log_prob)
        parts = ScoreParts(*(plain(part) for part in parts))
        site["unscaled_log_prob"] = parts.log_prob
        scaled = parts.scale_and_mask(site["scale"], site["mask"])
        upstream |= provenance_of(scaled.log_prob)  # a mask computed from a draw
        log_prob = plain(scaled.log_prob)
        site["log_prob_sum"] = log_prob.sum()
        if is_validation_enabled():
            warn_if_nan(site["log_prob_sum"], f"log_prob_sum at site '{name}'")
            warn_if_inf(site["log_prob_sum"], f"log_prob_sum at site '{name}'", allow_neginf=True)
        site["log_prob"] = watched(log_prob, upstream, None)
        if scores:
            site["score_parts"] = ScoreParts(site["log_prob"], *(plain(p) for p in scaled[1:]))


def detached_parameters_of_site(name: str, estimator, fn, value):
    """``fn`` with its parameters detached, for an estimator that scores ``log q`` so
    (``drops_score_of_q``); one clear error when a parameter stays attached (a
    transform's module), since the dropped score would then be only part of it."""
    detached = detached_parameters(fn)
    with torch.enable_grad():
        still = detached.log_prob(value.detach()).requires_grad
    if still:
        raise EstimatorError(
            f"{estimator!r} at site '{name}' ({describe(fn)}): its log-density keeps parameters that "
            "pg cannot detach (a transform's module, say), so the score of q cannot be dropped; "
            "use Reparam() there"
        )
    return detached


def changed_last_site(trace: Trace, name: str, value) -> Optional[Trace]:
    """What a re-run of ``trace``'s program with site ``name`` at ``value`` traces, when
    ``name`` is its last sample site: every earlier site replays (same value, same
    distribution), the site keeps its distribution, and nothing follows it — so the
    program need not run again. None when another sample site follows.

    Replayed values lose their provenance (a re-run's only use is its value of f); cached
    log-densities are kept, except the changed site's.
    """
    samples = [n for n, site in trace.nodes.items() if site["type"] == "sample"]
    if not samples or samples[-1] != name:
        return None
    changed = trace.copy()
    for n in samples:
        site = dict(trace.nodes[n], value=plain(trace.nodes[n]["value"]))
        if n == name:
            site = {key: v for key, v in site.items() if key not in _DENSITY_KEYS}
            site["value"] = value
        changed.nodes[n] = site
    return changed
