"""``expectation``: a surrogate whose gradient is the chosen estimators' estimate of ∇E[f]."""

from typing import Any, Callable, Optional

import torch
from pyro.ops.provenance import detach_provenance, get_provenance
from pyro.poutine.util import prune_subsample_sites

from pyro_grad.errors import EstimatorError
from pyro_grad.handler import estimators
from pyro_grad.alternative_run import AlternativeRun
from pyro_grad.objectives.surrogate import (
    Block,
    Estimates,
    check_num_particles,
    difference_terms,
    evaluations,
    group,
    joined_terms,
    score_terms,
    site_estimators,
)
from pyro_grad.particles import (
    ParticleLayout,
    concat_particles,
    match_dims,
    particle_traces,
)


def check_cost(value: Any, num_particles: int, vectorized: bool) -> torch.Tensor:
    """The program's return value as a ``(k,)`` tensor of per-particle costs, or a clear error."""
    if not torch.is_tensor(value):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = torch.tensor(float(value))
        else:
            raise EstimatorError(
                f"the program must return its cost as a tensor (one scalar per particle), "
                f"got {type(value).__name__}"
            )
    if value.numel() != num_particles:
        hint = (
            "; it must reduce only its own dims (e.g. .sum(-1)), never the particle dim"
            if vectorized and value.numel() == 1
            else ""
        )
        raise EstimatorError(
            f"the program returned a cost of shape {tuple(value.shape)}; expected one "
            f"scalar per particle ({num_particles} {'particles' if vectorized else 'particle'})"
            + hint
        )
    if not value.is_floating_point():  # integer costs (counts, category indices)
        value = value.to(torch.get_default_dtype())
    finite = torch.isfinite(detach_provenance(value)).reshape(-1)
    if not finite.all():
        bad = finite.logical_not().nonzero().reshape(-1).tolist()[:5]
        raise EstimatorError(f"the program returned non-finite costs (particles {bad} ...)")
    return value.reshape(num_particles)


def expectation(
    fn: Callable, *args: Any, num_particles: int = 1, vectorize: bool = True, **kwargs: Any
) -> torch.Tensor:
    """A 0-dim surrogate for ``E[fn(*args, **kwargs)]``.

    Its value is the Monte Carlo estimate ``(1/K) Σ_k f(z_k)``; its gradient with respect
    to every tensor that requires grad (arguments, ``pyro.param``s, module parameters)
    is the chosen estimators' estimate of ``∇E[f]``: the pathwise gradient through
    ``f`` plus, for every score-path site ``s``, ``(1/K) Σ_k ∇log q(z_{s,k}) (f_k − b_{s,k})``
    when ``f`` depends on ``s`` (value-preserving, in the spirit of DiCE).

    ``fn`` returns its cost, one scalar per particle. Sites use the estimators set by
    :func:`pyro_grad.estimators` around ``fn``, else ``"auto"``. With ``vectorize=True``
    all particles run in one pass inside an outermost particle plate (``fn`` must
    broadcast, declaring its batch dims with ``pyro.plate``); ``vectorize=False`` runs
    them one by one. A learned baseline is fitted by an added squared-error term that
    is zero in value, so gradient *descent* on the surrogate fits it.
    """
    num_particles = check_num_particles(num_particles)
    return expectation_estimates(fn, args, kwargs, num_particles, 1, vectorize).values[0]


def expectation_estimates(
    fn: Callable,
    args: tuple,
    kwargs: dict,
    num_particles: int,
    num_estimates: int,
    vectorize: bool,
    max_plate_nesting: Optional[int] = None,
) -> Estimates:
    """``num_estimates`` independent surrogates of :func:`expectation`, shape ``(G,)``.

    All ``G·K`` particles run together (one pass when vectorized); each run of ``K``
    consecutive particles forms one estimate, with its own baselines.
    """
    total = num_particles * num_estimates
    program = estimators(fn)
    traces, dim = particle_traces(program, args, kwargs, total, vectorize, max_plate_nesting)
    k = total if dim is not None else 1
    layout = ParticleLayout(dim, k)
    nesting = None if dim is None else -dim - 1

    def run_alternative(trace, site, value):
        with AlternativeRun(trace, site, value), torch.no_grad():
            alternative, _ = particle_traces(program, args, kwargs, k, dim is not None, nesting)
        cost = check_cost(alternative[0].nodes["_RETURN"]["value"], k, dim is not None)
        return detach_provenance(cost).detach()

    values, blocks, difference_blocks = [], [], []
    for trace in traces:
        cost = check_cost(trace.nodes["_RETURN"]["value"], k, dim is not None)
        upstream, cost = get_provenance(cost), detach_provenance(cost)
        trace = prune_subsample_sites(trace)
        block: Block = {}
        for name, site in trace.nodes.items():
            estimator = site["infer"].get("estimator") if site["type"] == "sample" else None
            if estimator is None or not estimator.uses_score or name not in upstream:
                continue
            # Only score-path sites need a log-density (a soft relaxed value has none).
            parts = site["fn"].score_parts(site["value"], *site["args"], **site["kwargs"])
            parts = parts.scale_and_mask(site["scale"], site["mask"])
            score = layout.first(detach_provenance(parts.score_function))
            block[name] = (estimator, score, match_dims(cost, score.dim()))
        values.append(cost)
        blocks.append(block)
        difference_blocks.append(
            difference_terms(
                trace, layout, cost.detach(), lambda s, v, t=trace: run_alternative(t, s, v), upstream
            )
        )
    terms, aux, resolved = score_terms(blocks, num_estimates, args, kwargs)
    terms.update(joined_terms(difference_blocks, num_estimates))
    surrogate = group(concat_particles(values), num_estimates).mean(1) + (aux - aux.detach())
    for term in terms.values():
        surrogate = surrogate + term
    return Estimates(surrogate, terms, {**site_estimators(traces[0]), **resolved}, evaluations(traces[0]))
