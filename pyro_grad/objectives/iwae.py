"""``IWAE``: the importance-weighted bound, with each guide site's gradient chosen per site."""

import math
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Set, Tuple

import torch
import torch.autograd.forward_ad as fwAD
from pyro.distributions.util import scale_and_mask
from pyro.poutine.subsample_messenger import _Subsample

from pyro_grad.distributions import describe, given_parameters, leaf_distribution, without_provenance
from pyro_grad.engine.control_flow import READ
from pyro_grad.engine.importance import ImportanceRun
from pyro_grad.engine.importance_weights import log_mean_exp
from pyro_grad.engine.particles import PARTICLE_PLATES, ParticleLayout, concat_particles, match_dims, read_sites
from pyro_grad.engine.provenance import plain
from pyro_grad.engine.surrogate import Estimates, evaluations, group, site_estimators, site_evaluations
from pyro_grad.errors import EstimatorError
from pyro_grad.objectives.elbo import ELBO, elbo_terms
from pyro_grad.objectives.jump_policy import choice_reasons
from pyro_grad.gradient_estimators import DifferenceEstimator, Estimator, Score, ScoreEstimator, VIMCO
from pyro_grad.gradient_estimators.base import drops_score_of_q


class IWAE(ELBO):
    """The importance-weighted bound (Burda, Grosse & Salakhutdinov, ICLR 2016), whose
    gradient obeys the estimator chosen for each guide site.

    ``L_K = E[log (1/K) Σ_k w_k]`` with ``w_k = p(x, z_k) / q(z_k)``: a lower bound on
    ``log p(x)`` that tightens as K grows, and the ELBO at K = 1. Where every latent and
    observed site shares a plate (a VAE's data plate), the bound is per plate element,
    ``Σ_n log (1/K) Σ_k w_{k,n}``, as the textbook's per-datum bound; a subsampled plate
    scales each element's bound, not its log-weights. ``loss`` is ``−L_K``.

    Each guide site's gradient comes from its estimator (:func:`pyro_grad.estimators`
    around the guide, or ``infer={"estimator": ...}`` on the site):

    * ``Reparam()``: the plain pathwise IWAE gradient, ``Σ_k w̃_k ∇log w_k``;
    * ``DReG()``: doubly reparameterized, ``w̃_k²`` on the path through the value and no
      score of ``q`` (Tucker et al. 2019);
    * ``VIMCO()``: per-particle leave-one-out learning signals (Mnih & Rezende 2016);
    * ``Score()``: the plain score function, every particle's signal the bound itself.

    Unchosen sites take ``Reparam()`` where the distribution has ``rsample``, else
    ``VIMCO()`` (``Score()`` at K = 1). Any other estimator is refused at its site.
    Use as ``SVI(model, guide, optim, loss=pg.IWAE(num_particles=8))``, or as
    ``objective=pg.IWAE`` in ``pg.diagnose`` and ``pg.compare``.
    """

    name = "iwae"
    averages_particles = False
    #: The bound is not linear in a site's values, so none is summed out (TraceEnum's way).
    enumerates = False

    def __init__(
        self,
        num_particles: int = 1,
        vectorize_particles: bool = True,
        max_plate_nesting: float = float("inf"),
        **kwargs: Any,
    ) -> None:
        super().__init__(
            num_particles=num_particles,
            vectorize_particles=vectorize_particles,
            max_plate_nesting=max_plate_nesting,
            **kwargs,
        )

    def exact(self, model: Callable, guide: Optional[Callable], args: tuple, kwargs: dict) -> torch.Tensor:
        raise EstimatorError(
            f"reference='enumerate' sums the ELBO over the guide's support, not the bound of {type(self).__name__}, "
            "which is not a mean over particles; pass a dict or a callable of its exact gradients, or "
            "reference='reparam'"
        )

    def _particles(
        self,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        surrogate: bool,
        num_samples: int = 1,
    ) -> Tuple[torch.Tensor, Estimates]:
        """Bounds ``(G,)`` and their surrogates: the ``num_particles`` particles form
        ``G = num_samples`` independent bounds of ``num_particles / G`` particles each."""
        guide = self._checked_guide(model, guide)
        weighted, runs = [], []
        for run in self._runs(model, guide, args, kwargs, watch=surrogate and self.watch_jumps):
            dim = self._particle_dim()
            layout = ParticleLayout(dim, self.num_particles if dim is not None else 1)
            weighted.append(weigh(run, layout, surrogate and torch.is_grad_enabled(), self.num_particles))
            runs.append(run)
        check_same_minibatch(runs)
        scale = common_scale([w.scale for w in weighted])[1]
        guide_trace = runs[0].guide_trace
        log_weights = group(concat_particles([w.log_weights for w in weighted]), num_samples)  # (G, K, ...)
        bound = scale * per_sample(log_mean_exp(log_weights, 1))
        k, x = log_weights.shape[1], log_weights.detach()
        terms, resolved = {}, {}
        for name in dict.fromkeys(n for w in weighted for n in w.scores):
            chosen = next(w.scores[name][0] for w in weighted if name in w.scores)
            estimator = resolved[name] = for_the_bound(name, chosen, k)
            signal = estimator.importance_signal(name, x).detach()  # refuses what the bound cannot use
            if surrogate:
                # A looped particle that did not draw the site has no score there.
                # Looped terms keep their own rank: right-aligned against the log-weights.
                score = group(match_dims(concat_particles([w.scores[name][1] if name in w.scores else torch.zeros(1)
                                                           for w in weighted]), x.dim() - 1), num_samples)
                # Pyro leaves score functions unscaled: the bound is s·L, so its score term is too.
                terms[name] = per_sample(scale * signal * (score - score.detach()))
        if not surrogate:
            return bound.detach(), Estimates(bound.detach(), evaluations=evaluations(guide_trace))
        normalized = torch.softmax(x, 1)
        for name in dict.fromkeys(n for w in weighted for n in w.reweighted):
            path = group(match_dims(concat_particles([w.reweighted.get(name, torch.zeros(1)) for w in weighted]),
                                    x.dim() - 1), num_samples)
            # w̃² on the path through the value: the bound's w̃ plus (w̃² − w̃).
            terms[name] = per_sample((normalized**2 - normalized) * (path - path.detach()))
        values = bound
        for term in terms.values():
            values = values + term
        estimators = {**site_estimators(guide_trace), **resolved}
        return bound.detach(), Estimates(values, terms, estimators, evaluations(guide_trace), site_evaluations(guide_trace),
                                         choice_reasons(guide_trace, self.jump_guard),
                                         [t for run in runs for t in (run.model_trace, run.guide_trace)])


def per_sample(t: torch.Tensor) -> torch.Tensor:
    """``(G, ...)`` → ``(G,)``: the sum of each sample's elements."""
    return t.reshape(t.shape[0], -1).sum(1)


def for_the_bound(name: str, estimator: Estimator, num_particles: int) -> Estimator:
    """A score-path estimator as the bound uses it: ``Score("auto")`` is VIMCO at K ≥ 2
    (the bound's leave-one-out baseline) and the plain score function at K = 1."""
    if isinstance(estimator, Score) and estimator.baseline == "auto":
        return VIMCO() if num_particles >= 2 else Score()
    if num_particles < estimator.min_particles:
        raise EstimatorError(
            f"{estimator!r} at site '{name}' needs num_particles >= {estimator.min_particles}, got {num_particles}"
        )
    return estimator


class Weighted(NamedTuple):
    """One trace pair's importance weights, per particle and plate element.

    ``log_weights (P, ...)``: ``log p − log q`` summed to the plates every site shares,
    unscaled (divided by ``scale``, the one scale of every term, with a site that has
    it), differentiable as
    the estimators chose; ``scores[site] = (estimator, log q (P, ...))`` for score-path
    sites, unscaled (as Pyro's score functions are); ``reweighted[site] (P, ...)``: for DReG sites, ``∂log w/∂z · z`` summed
    to those plates, differentiable through the value ``z`` alone.
    """

    log_weights: torch.Tensor
    scale: Tuple[str, float]
    scores: Dict[str, Tuple[Estimator, torch.Tensor]]
    reweighted: Dict[str, torch.Tensor]


def weigh(run: ImportanceRun, layout: ParticleLayout, differentiate: bool, num_particles: int) -> Weighted:
    """The importance weights of one trace pair (see :class:`Weighted`) of an estimate
    with ``num_particles`` particles; with ``differentiate``, DReG's reweighted paths."""
    model_trace, guide_trace = run.model_trace, run.guide_trace
    sites = [s for t in (model_trace, guide_trace) for s in t.nodes.values() if s["type"] == "sample"]
    keep = shared_plate_dims(sites, bool(read_sites(guide_trace)))
    scale = common_scale([(f"{kind} site '{s['name']}'", s["scale"])
                          for kind, t in (("model", model_trace), ("guide", guide_trace))
                          for s in t.nodes.values() if s["type"] == "sample"])
    total = 0.0
    for _, _, _, term in elbo_terms(model_trace, guide_trace):
        total = total + in_elements(term, keep, layout)
    scores, reweighted = {}, {}
    for name, site in guide_trace.nodes.items():
        estimator = site["infer"].get("estimator") if site["type"] == "sample" else None
        if isinstance(estimator, ScoreEstimator) and not site["is_observed"]:
            scores[name] = (estimator, in_elements(plain(site["score_parts"].score_function), keep, layout))
    if differentiate:
        reweighted = reweighted_paths(guide_trace, model_trace, keep, layout, num_particles)
    return Weighted(total / scale[1], scale, scores, reweighted)


def shared_plate_dims(sites: List[dict], read: bool) -> Set[int]:
    """The dims of the vectorized plates every site is in (the particle plate aside):
    each element of them has its own bound. None when a site is read into Python,
    whose control flow may cross elements."""
    if read or not sites:
        return set()
    shared = None
    for site in sites:
        frames = {f for f in site["cond_indep_stack"] if f.vectorized and f.name not in PARTICLE_PLATES}
        shared = frames if shared is None else shared & frames
    return {f.dim for f in shared}


def in_elements(t: torch.Tensor, keep: Set[int], layout: ParticleLayout) -> torch.Tensor:
    """A term ``(..., batch)`` as ``(P, ...)``: summed over every batch dim but the
    ``keep`` plate dims (which stay, right-aligned)."""
    t = layout.first(plain(torch.as_tensor(t)))
    for d in range(1 - t.dim(), 0):
        if d not in keep and t.shape[d] != 1:
            t = t.sum(d, keepdim=True)
    return t


def common_scale(scales: List[Tuple[str, Any]]) -> Tuple[str, float]:
    """The one scale of every term, as ``(a site's name, scale)``: the bound of a
    subsampled plate is ``N/B`` times the minibatch's, outside the log, so its terms'
    scales must agree (``poutine.scale`` on some sites only, or a plate that not every
    site is in, would weight the log-weights unequally)."""
    values = []
    for name, s in scales:
        if torch.is_tensor(s) and s.numel() != 1:
            raise EstimatorError(
                f"pg.IWAE: {name} has a scale per element ({tuple(s.shape)}); the importance-weighted "
                "bound needs one scale for every term"
            )
        values.append((name, float(s)))
    first = values[0]
    for name, s in values:
        if not math.isclose(s, first[1], rel_tol=1e-6):
            raise EstimatorError(
                f"pg.IWAE: {first[0]} has scale {first[1]:g} and {name} {s:g} (from poutine.scale, "
                "or a subsampled plate that not every site is in); the importance-weighted bound needs one "
                "scale for every term, outside its log"
            )
    if not first[1] > 0:
        raise EstimatorError(f"pg.IWAE: the terms' scale must be positive, got {first[1]:g}")
    return first


def check_same_minibatch(runs: List[ImportanceRun]) -> None:
    """Looped particles must score the same data: a subsampled plate that draws a new
    minibatch per run would weigh each particle against other data points."""
    def indices(run: ImportanceRun) -> Dict[str, torch.Tensor]:
        return {n: s["value"] for n, s in run.guide_full.nodes.items()
                if s["type"] == "sample" and isinstance(s["fn"], _Subsample)}

    first = indices(runs[0])
    for run in runs[1:]:
        for name, value in indices(run).items():
            if name not in first or not torch.equal(value, first[name]):
                raise EstimatorError(
                    f"pg.IWAE with vectorize_particles=False drew plate '{name}' a different minibatch for "
                    "each particle, so their weights score different data; use vectorize_particles=True, "
                    "or pass the same subsample= to every run"
                )


def reweighted_paths(
    guide_trace, model_trace, keep: Set[int], layout: ParticleLayout, num_particles: int
) -> Dict[str, torch.Tensor]:
    """For every DReG site, ``(∂log w/∂z) · z`` summed to the kept plates, differentiable
    through ``z`` alone: reweighting its gradient from ``w̃`` to ``w̃²`` is DReG's.
    ``∂log w/∂z`` is taken with every site's ``log q`` at its full parameters, since a
    later site's law may depend on ``z``."""
    dreg = {n: s for n, s in guide_trace.nodes.items()
            if s["type"] == "sample" and drops_score_of_q(s["infer"].get("estimator"))
            and plain(s["value"]).requires_grad}
    if not dreg:
        return {}
    if fwAD._current_level >= 0:
        # Measured biased under forward-mode tangents (a nested plate, 30 se); the
        # diagnostics' reverse-mode loop computes it exactly.
        raise NotImplementedError("DReG's ∂log w/∂z is computed in reverse mode only")
    check_reweighting(guide_trace, dreg, num_particles)
    total = 0.0
    for in_guide, site, _, term in elbo_terms(model_trace, guide_trace):
        if in_guide and site["name"] in dreg:  # its log q at the full parameters
            fn = without_provenance(site["fn"])
            term = -scale_and_mask(fn.log_prob(plain(site["value"])), site["scale"], site["mask"])
        total = total + term.sum()
    values = [plain(s["value"]) for s in dreg.values()]
    gradients = torch.autograd.grad(total, values, retain_graph=True, allow_unused=True)
    paths = {}
    for (name, site), z, g in zip(dreg.items(), values, gradients):
        if g is None:
            continue
        event_dims = tuple(range(-len(site["fn"].event_shape), 0))
        gz = g.detach() * z
        paths[name] = in_elements(gz.sum(event_dims) if event_dims else gz, keep, layout)
    return paths


def check_reweighting(guide_trace, dreg: Dict[str, dict], num_particles: int) -> None:
    """DReG's identity holds the other draws fixed while its value moves: refused where
    the program reads the value into Python, or a later non-reparameterized guide site's
    law depends on it."""
    names = list(guide_trace.nodes)
    for name, site in dreg.items():
        estimator = site["infer"]["estimator"]
        if site["infer"].get(READ):
            raise EstimatorError(
                f"{estimator!r} at site '{name}' ({describe(site['fn'])}): the program reads its value into "
                "Python control flow, so the other draws do not stay fixed as it moves; use Reparam()"
            )
        z = plain(site["value"])
        for later in names[names.index(name) + 1:]:
            other = guide_trace.nodes[later]
            chosen = other["infer"].get("estimator") if other["type"] == "sample" else None
            if not isinstance(chosen, (ScoreEstimator, DifferenceEstimator)) or other["is_observed"]:
                continue
            parameters = [p for p in given_parameters(leaf_distribution(other["fn"])).values()
                          if torch.is_tensor(p) and p.requires_grad]
            if not parameters:
                continue
            moved = torch.autograd.grad(sum(plain(p).sum() for p in parameters), z, retain_graph=True,
                                        allow_unused=True)[0]
            if moved is not None:
                chosen = for_the_bound(later, chosen, num_particles) if isinstance(chosen, ScoreEstimator) else chosen
                raise EstimatorError(
                    f"{estimator!r} at site '{name}' ({describe(site['fn'])}): guide site '{later}' "
                    f"({describe(other['fn'])}, {chosen!r}) depends on its value and is not reparameterized, "
                    f"so its law moves with '{name}' where DReG holds it fixed; use Reparam() at '{name}'"
                )
