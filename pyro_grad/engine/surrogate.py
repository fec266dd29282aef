"""Assembling a surrogate objective from per-particle pieces, dispatched on each site's
estimator kind.

Both objectives reduce a run to *blocks*: a block covers ``k`` particles (all K when
vectorized, one when looped) and maps each score-path site (a
:class:`~pyro_grad.gradient_estimators.ScoreEstimator`'s) to a :class:`ScorePart`, tensors with
the particle axis first. Here the blocks are joined into ``(G, K, ...)`` tensors, so
that baselines can look across particles (leave-one-out), and each site's estimator
turns them into its surrogate term (:class:`~pyro_grad.gradient_estimators.ScoreSite` in,
terms out). The difference estimators' sites are re-run and their terms taken here too
(:func:`difference_terms`); pathwise sites need nothing after the draw.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import pyro.distributions as dist
import torch

from pyro_grad.engine.provenance import plain
from pyro_grad.baselines import RunningAverages
from pyro_grad.errors import EstimatorError, float_index_error, is_index_dtype_error
from pyro_grad.distributions import describe
from pyro_grad.engine.control_flow import READ
from pyro_grad.engine.one_run import paths_of, pruned_terms
from pyro_grad.engine.particles import ParticleLayout, concat_particles
from pyro_grad.distributions import leaf_distribution, logits_of, probs_of
from pyro_grad.gradient_estimators import (
    CoupledRuns,
    DifferenceEstimator,
    Estimator,
    ScoreEstimator,
    ScoreSite,
    Site,
    SiteDraw,
    ValueGradient,
    ValueGradientEstimator,
)


class ScorePart(NamedTuple):
    """One block's share of a score-path site: its ``estimator``, ``score`` and
    downstream ``f`` (particles first), the choosing handler's baseline state
    (``averages``), and for a :class:`~pyro_grad.gradient_estimators.ValueGradientEstimator`
    the site's :class:`ValueGradient` (``draw``), else None."""

    estimator: ScoreEstimator
    score: torch.Tensor
    f: torch.Tensor
    averages: Optional[RunningAverages]
    draw: Optional[ValueGradient]


#: site → its :class:`ScorePart`, for one block of particles.
Block = Dict[str, ScorePart]


def score_part(estimator: Estimator, site: dict, score: torch.Tensor, f: torch.Tensor, f_at_value: torch.Tensor,
               layout: ParticleLayout, averages: Optional[RunningAverages]) -> ScorePart:
    """A score-path site's :class:`ScorePart`: ``score`` and ``f`` as the block holds them
    (particles first), and for a value-gradient estimator ∇_value of ``f_at_value``
    (f as traced, which reaches the value)."""
    draw = value_gradient(site, f_at_value, layout) if isinstance(estimator, ValueGradientEstimator) else None
    return ScorePart(estimator, score, f, averages, draw)


#: The value-gradient families (ValueGradient.family) of the distributions that have one.
FAMILIES = {dist.OneHotCategorical: "one_hot", dist.Categorical: "categorical", dist.Bernoulli: "bernoulli"}


def value_gradient(site: dict, f: torch.Tensor, layout: ParticleLayout) -> ValueGradient:
    """A score-path site's value, probabilities and ∇_value of its downstream ``f`` (as
    traced, particles inside), each ``(P, batch..., event...)``. Zero where f does
    not reach the value differentiably."""
    value = plain(site["value"])
    event_dim = len(site["fn"].event_shape)
    gradient = None
    if torch.is_grad_enabled() and f.requires_grad and value.requires_grad:
        gradient = torch.autograd.grad(f.sum(), value, retain_graph=True, allow_unused=True)[0]
    gradient = torch.zeros(value.shape) if gradient is None else gradient.detach()
    leaf = leaf_distribution(site["fn"])
    family = next((name for cls, name in FAMILIES.items() if isinstance(leaf, cls)), "bernoulli")
    probs, logits = probs_of(leaf), logits_of(leaf)
    # A Categorical's probabilities have a category axis right of its value's dims.
    categories = probs.shape[-1:] if family == "categorical" else ()
    probs, logits = probs.expand(value.shape + categories), logits.expand(value.shape + categories)
    return ValueGradient(
        layout.first(value.detach(), event_dim), layout.first(probs, event_dim + len(categories)),
        layout.first(logits, event_dim + len(categories)), layout.first(gradient, event_dim), family,
    )


def check_num_particles(num_particles: int) -> int:
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise EstimatorError(f"num_particles must be a positive integer, got {num_particles!r}")
    return num_particles


def group(t: torch.Tensor, num_samples: int) -> torch.Tensor:
    """``(G·K, ...)`` → ``(G, K, ...)``: consecutive particles form one estimate."""
    return t.reshape((num_samples, t.shape[0] // num_samples) + t.shape[1:])


@dataclass
class Estimates:
    """``G`` independent samples of an objective's estimate, each a value-preserving surrogate.

    ``values[g]``'s value is sample ``g`` and its gradient is one draw of the estimator.
    ``score_terms[site][g]`` is zero in value; its gradient is the part of that draw
    carried by the site's score term. ``estimators`` is every latent site's estimator,
    resolved (e.g. ``Score("auto")`` to ``Score("loo")``).
    """

    values: torch.Tensor
    score_terms: Dict[str, torch.Tensor] = field(default_factory=dict)
    estimators: Dict[str, Estimator] = field(default_factory=dict)
    #: Program evaluations per particle: 1, plus each site's extra runs.
    evaluations: int = 1
    #: Each latent site's program evaluations per particle, ``estimator.evaluations(site)``.
    site_evaluations: Dict[str, int] = field(default_factory=dict)
    #: Why each latent site has its estimator (who chose it; for "auto", why).
    reasons: Dict[str, str] = field(default_factory=dict)
    #: The traces the estimate came from (an ELBO's model and guide traces).
    traces: List[Any] = field(default_factory=list)


def site_estimators(trace) -> Dict[str, Estimator]:
    """The estimator chosen for each latent sample site of a trace."""
    return {
        name: site["infer"]["estimator"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and "estimator" in site["infer"]
    }


def site_evaluations(trace) -> Dict[str, int]:
    """Each latent site's program evaluations per particle, as its estimator counts them."""
    return {
        name: site["infer"]["estimator"].evaluations(Site.of(site))
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and "estimator" in site["infer"]
    }


def evaluations(trace) -> int:
    """Program evaluations per particle: the first run, plus every site's extra runs, plus
    the one alternative run that every one-run site shares."""
    shared = any(isinstance(e, DifferenceEstimator) and e.one_run for e in site_estimators(trace).values())
    return 1 + sum(runs - 1 for runs in site_evaluations(trace).values()) + shared


def score_terms(
    blocks: List[Block], num_samples: int, args: tuple, kwargs: dict
) -> Tuple[Dict[str, torch.Tensor], torch.Tensor, Dict[str, Estimator]]:
    """Every score-path site's per-group surrogate term, the per-group sum of auxiliary
    (baseline) losses, each of shape ``(G,)``, and the estimator each site resolved to.

    The blocks hold ``G·K`` particles in all; each run of ``K`` consecutive particles is
    one independent estimate (``G = 1`` for a plain objective; diagnostics draw many).
    """
    names = list(dict.fromkeys(name for block in blocks for name in block))
    terms, aux, resolved = {}, torch.zeros(num_samples), {}
    for name in names:
        first = next(block[name] for block in blocks if name in block)
        scores, f_blocks, draws = [], [], []
        for block in blocks:
            if name in block:
                scores.append(block[name].score)
                f_blocks.append(block[name].f)
                draws.append(block[name].draw)
            else:  # a site absent from some particles contributes nothing for them
                k = next(iter(block.values())).score.shape[0] if block else 1
                scores.append(torch.zeros(k))
                f_blocks.append(torch.zeros(k))
                draws.append(ValueGradient(*(torch.zeros(k),) * 4))
        score = group(concat_particles(scores), num_samples)
        f = group(concat_particles(f_blocks), num_samples)
        estimator = first.estimator.resolve(score.shape[1])
        draw = None
        if first.draw is not None:
            tensors = zip(*(d[:4] for d in draws))
            draw = ValueGradient(*(group(concat_particles(parts), num_samples) for parts in tensors), first.draw.family)
        site = ScoreSite(name, score, f, first.averages, args, kwargs, draw)
        terms[name], loss = estimator.surrogate(site)
        aux = aux + loss
        resolved[name] = estimator
    return terms, aux, resolved


#: site → per-particle ``(k,)`` tensor, for one block of particles.
Terms = Dict[str, torch.Tensor]


def difference_sites(trace, sites, one_run: bool) -> Iterator[Tuple[str, dict, DifferenceEstimator]]:
    """``(name, site, estimator)`` of each latent site of ``trace`` with a difference
    estimator of the given engine (``one_run``), among ``sites`` when given."""
    for name, site in trace.nodes.items():
        estimator = site["infer"].get("estimator") if site["type"] == "sample" else None
        if (isinstance(estimator, DifferenceEstimator) and estimator.one_run == one_run and not site["is_observed"]
                and (sites is None or name in sites)):
            yield name, site, estimator


def difference_terms(
    trace,
    layout: ParticleLayout,
    f_at: Callable[[str], torch.Tensor],
    run_alternative: Callable[[str, torch.Tensor, bool, bool], torch.Tensor],
    local: Callable[[str], bool] = lambda name: False,
    sites=None,
    density: Callable = lambda fn: fn,
    scored: bool = False,
) -> Tuple[Terms, Terms]:
    """Per-particle ``(k,)`` terms of every difference-estimator site of one trace, and
    the auxiliary losses of those that add one.

    ``f_at(site)`` is the first run's f at the site (detached), shaped to
    broadcast against its batch; ``run_alternative(site, value, keep_gradients,
    relaxed)`` re-runs the objective coupled to ``trace`` with the site at ``value`` and
    returns its f at the site alike, differentiable only when the estimator
    ``keeps_alternative_gradients``, and with no support checks when it ``relaxes``. ``local(site)`` says whether each plate element's
    terms of f stay in its element. ``sites`` restricts to sites f depends on;
    ``density(fn)`` is the distribution whose parameters are differentiated (the
    expectation strips masks from it); ``scored`` whether the objective scores values
    by their density (an ELBO).
    """
    terms, losses = {}, {}
    for name, site, estimator in difference_sites(trace, sites, one_run=False):
        if estimator.relaxes and site["infer"].get(READ):
            raise EstimatorError(
                f"{estimator!r} at site '{name}' ({describe(site['fn'])}): the program reads the site's "
                "value into Python control flow, so f is not continuous in a relaxed value and the "
                "control variate would be biased; use DisARM(), IndeCateR() or Score('loo')"
            )
        draw = SiteDraw(name, density(site["fn"]), plain(site["value"]).detach(), layout, local(name), scored)
        alternatives, state = estimator.alternatives(draw)
        keep, relaxed = estimator.keeps_alternative_gradients, estimator.relaxes
        try:
            alternative_f = [run_alternative(name, alternative, keep, relaxed) for alternative in alternatives]
        except (IndexError, RuntimeError) as error:
            # A relaxed value of a Categorical is a fractional index: torch's message names
            # neither the site nor the estimator.
            if relaxed and is_index_dtype_error(error):
                raise float_index_error(
                    [f"{estimator!r} re-runs the program at relaxed values of site '{name}' "
                     f"({describe(site['fn'])}), fractional indices"], error) from error
            raise
        runs = CoupledRuns(draw, f_at(name), alternative_f, state)
        terms[name] = estimator.alternative_terms(runs)
        loss = estimator.alternative_loss(runs)
        if loss is not None:
            losses[name] = loss
    return terms, losses


def one_run_terms(
    trace,
    layout: ParticleLayout,
    f: torch.Tensor,
    run_changes: Callable[[Dict[str, Tuple[torch.Tensor, torch.Tensor]]], torch.Tensor],
    sites=None,
    density: Callable = lambda fn: fn,
    inputs: Sequence[torch.Tensor] = (),
    batch: Optional[torch.Size] = None,
    lazy: Optional[Callable] = None,
) -> Terms:
    """Per-particle ``(k,)`` terms of every one-run site of one trace (a difference
    estimator with ``one_run``), from their pruned perturbations and one alternative run
    (:func:`pyro_grad.engine.one_run.pruned_terms`: ``f`` is the first run's ``(k,)``,
    ``run_changes`` runs the program with per-particle changes; ``inputs``, the tensors
    the jumps' sensitivities are taken in). ``sites`` and ``density`` as in
    :func:`difference_terms`. With ``batch`` every one-run site shares it and ``f`` is
    each plate element's own (:class:`pyro_grad.engine.one_run.Rows`). ``lazy(jumps,
    rows, paths)`` prunes lazily where it can (:func:`pyro_grad.engine.one_run.pruned_terms`);
    the sites' ``paths`` settings must agree (:func:`pyro_grad.engine.one_run.paths_of`)."""
    perturbations, estimators = {}, {}
    for name, site, estimator in difference_sites(trace, sites, one_run=True):
        fn = density(site["fn"])
        draw = SiteDraw(name, fn, plain(site["value"]).detach(), layout, False, False)
        perturbations[name] = (estimator.perturbations(draw), draw.value, len(fn.event_shape))
        estimators[name] = estimator
    if not perturbations:
        return {}
    return pruned_terms(perturbations, layout, f.detach(), run_changes, inputs, batch, lazy, paths_of(estimators))


def joined_terms(blocks: List[Terms], num_samples: int) -> Dict[str, torch.Tensor]:
    """Per-block ``(k,)`` terms joined into per-sample means ``(G,)``."""
    names = list(dict.fromkeys(name for block in blocks for name in block))
    joined = {}
    for name in names:
        parts = [block.get(name, torch.zeros(1)) for block in blocks]
        joined[name] = group(concat_particles(parts), num_samples).mean(1)
    return joined


def assemble(
    values: List[torch.Tensor],
    blocks: List[Block],
    differences: List[Tuple[Terms, Terms]],
    num_samples: int,
    trace,
    args: tuple,
    kwargs: dict,
    loss_sign: float,
) -> Estimates:
    """The objective's ``G`` surrogates from its per-block pieces.

    ``values`` are per-block ``(k,)`` objective values carrying the pathwise gradient;
    ``blocks`` the score-path sites' per-block values; ``differences`` the difference
    estimators' per-block (terms, losses) from :func:`difference_terms`. Every auxiliary
    loss enters zero in value, with ``loss_sign`` (+1 when the objective is minimized,
    −1 when it is maximized) so that following the objective's gradient minimizes it.
    ``trace`` (one of the block's) names each site's estimator and runs.
    """
    terms, aux, resolved = score_terms(blocks, num_samples, args, kwargs)
    terms.update(joined_terms([d for d, _ in differences], num_samples))
    for loss in joined_terms([losses for _, losses in differences], num_samples).values():
        aux = aux + loss
    surrogate = group(concat_particles(values), num_samples).mean(1) + loss_sign * (aux - aux.detach())
    for term in terms.values():
        surrogate = surrogate + term
    return Estimates(surrogate, terms, {**site_estimators(trace), **resolved}, evaluations(trace), site_evaluations(trace))
