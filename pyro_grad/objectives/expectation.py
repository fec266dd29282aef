"""``expectation``: a surrogate whose gradient is the chosen estimators' estimate of ∇E[f]."""

import inspect
import weakref
from typing import Any, Callable, List, Optional

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import config_enumerate
from pyro.infer.util import is_validation_enabled
from pyro.poutine.util import prune_subsample_sites

from pyro_grad.engine.provenance import plain, provenance_of
from pyro_grad import baselines
from pyro_grad.distributions import describe, parameter_provenance, unmasked
from pyro_grad.engine.alternative_run import AlternativeRun
from pyro_grad.engine.lazy_pruning import Unsupported, lazily_pruned
from pyro_grad.engine.one_run import differentiable_inputs
from pyro_grad.engine.assumptions import recording
from pyro_grad.engine.recording import Recorder, Unrecordable, compile_options
from pyro_grad.engine.particles import (
    PARTICLES,
    ParticleLayout,
    guess_max_plate_nesting,
    match_dims,
    particle_traces,
    read_sites,
)
from pyro_grad.engine.surrogate import (
    Block,
    Estimates,
    assemble,
    check_num_particles,
    difference_terms,
    one_run_terms,
    score_part,
)
from pyro_grad.errors import EstimatorError
from pyro_grad.gradient_estimators import ScoreEstimator
from pyro_grad.gradient_estimators.registry import derived_for
from pyro_grad.handler import estimators
from pyro_grad.objectives.jump_policy import JumpGuard, choice_reasons, found_jumps, is_pathwise, latent_nodes
from pyro_grad.objectives.objective_check import ObjectiveCheck


def check_f(value: Any, num_particles: int, vectorized: bool) -> torch.Tensor:
    """The program's return value as a ``(k,)`` tensor of per-particle values of f, or a clear error."""
    if not torch.is_tensor(value):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = torch.tensor(float(value))
        else:
            raise EstimatorError(
                f"the program must return f, the value to average, as a tensor (one scalar per particle), "
                f"got {type(value).__name__}"
            )
    if value.numel() != num_particles:
        hint = (
            "; it must reduce only its own dims (e.g. .sum(-1)), never the particle dim"
            if vectorized and value.numel() == 1
            else ""
        )
        raise EstimatorError(
            f"the program returned f of shape {tuple(value.shape)}; expected one "
            f"scalar per particle ({num_particles} {'particles' if vectorized else 'particle'})"
            + hint
        )
    if not value.is_floating_point():  # integer values (counts, category indices)
        value = value.to(torch.get_default_dtype())
    # A check of the values, so Pyro's validation switch governs it (a recorded step,
    # which cannot read values into Python, runs with validation off).
    finite = torch.isfinite(plain(value)).reshape(-1)
    if is_validation_enabled() and not finite.all():
        bad = finite.logical_not().nonzero().reshape(-1).tolist()[:5]
        raise EstimatorError(f"the program returned non-finite values of f (particles {bad} ...)")
    return value.reshape(num_particles)


def expectation(
    fn: Callable,
    *args: Any,
    num_particles: int = 1,
    vectorize: bool = True,
    max_plate_nesting: Optional[int] = None,
    compile: Any = False,
    **kwargs: Any,
) -> torch.Tensor:
    """A 0-dim surrogate for ``E[fn(*args, **kwargs)]``.

    Its value is the Monte Carlo estimate ``(1/K) Σ_k f(z_k)``; its gradient with respect
    to every tensor that requires grad (arguments, ``pyro.param``s, module parameters)
    is the chosen estimators' estimate of ``∇E[f]``: the pathwise gradient through
    ``f`` plus, for every score-path site ``s``, ``(1/K) Σ_k ∇log q(z_{s,k}) (f_k − b_{s,k})``
    when ``f`` depends on ``s`` (value-preserving, in the spirit of DiCE).

    ``fn`` returns f, the value to average, one scalar per particle. Sites use the estimators set by
    :func:`pyro_grad.estimators` around ``fn`` (or around the call), else ``"auto"``;
    ``pg.Retuned(pg.expectation)`` tunes them (:func:`pyro_grad.tune`) before its first call.
    With ``vectorize=True`` all particles run in one pass inside an outermost particle
    plate (``fn`` must broadcast, declaring its batch dims with ``pyro.plate``);
    ``vectorize=False`` runs them one by one, and is needed when the program reads a
    draw into Python control flow. A mask (``.mask(...)`` or ``poutine.mask``) changes
    what an ELBO scores, never what is drawn: here a masked draw's score is its
    unmasked log-density. A learned baseline is fitted by an added squared-error term
    that is zero in value, so gradient *descent* on the surrogate fits it.

    ``max_plate_nesting``, as Pyro's ELBOs take it, is the deepest plate nesting of
    ``fn``; given, the vectorized call saves the extra run that otherwise guesses it.

    ``compile=True`` (or ``{"backend": "trace"}``, :mod:`pyro_grad.engine.recording`)
    runs the first call as always, records the second, and runs the calls after as one
    flat tensor function. The recording is kept with ``fn`` (a weak reference, as
    ``torch.compile`` keeps its compiled code with the function), one per particle setting.
    """
    num_particles = check_num_particles(num_particles)
    if max_plate_nesting is not None and (
        isinstance(max_plate_nesting, bool) or not isinstance(max_plate_nesting, int) or max_plate_nesting < 0
    ):
        raise EstimatorError(f"max_plate_nesting must be a non-negative integer, got {max_plate_nesting!r}")
    objective = Expectation(num_particles, vectorize, max_plate_nesting)
    options = compile_options(compile)

    def run() -> tuple:
        estimates = objective.estimates(fn, None, args, kwargs)
        value = estimates.values[0]
        if torch.is_grad_enabled() and not value.requires_grad:
            raise EstimatorError(nothing_requires_grad(args, kwargs, estimates.reasons))
        return value, estimates.traces

    if options is None:
        return run()[0]
    recorder = RECORDERS.of(fn, (num_particles, vectorize, max_plate_nesting, options))
    return recorder.step(run, (fn,), args, kwargs, ordinary=recorder.seen is not None)


class Recorders:
    """The recordings of ``pg.expectation(fn, ..., compile=...)``, kept with ``fn`` (a bound
    method with its object: ``obj.f`` is a new object at every read) and dropped with it."""

    def __init__(self) -> None:
        self._by_program: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    def of(self, fn: Callable, setting: tuple) -> Recorder:
        owner, key = (fn.__self__, (fn.__func__, setting)) if inspect.ismethod(fn) else (fn, setting)
        try:
            recorders = self._by_program.setdefault(owner, {})
        except TypeError:  # not weakly referable: nothing outlives the call
            recorders = {}
        if key not in recorders:
            recorders[key] = Recorder("pg.expectation", setting[-1])
        return recorders[key]


#: A cache, as torch.compile's: a recording changes no answer (its guards see to that).
RECORDERS = Recorders()


class Expectation:
    """``E[fn]`` as an :class:`~pyro_grad.objectives.objective.Objective`, of
    ``num_particles`` particles (vectorized or looped): what diagnostics, references and
    tuning use; users call :func:`expectation`, which names this class as
    ``pg.expectation.objective``."""

    name = "expectation"
    takes_guide = False
    averages_particles = True
    splits_by_plates = False

    def __init__(self, num_particles: int = 1, vectorize: bool = True, max_plate_nesting: Optional[int] = None):
        self.num_particles = check_num_particles(num_particles)
        self.vectorize = vectorize
        self.max_plate_nesting = max_plate_nesting

    @classmethod
    def configured(cls, num_particles: int, vectorize: bool, max_plate_nesting: Optional[int]) -> "Expectation":
        return cls(num_particles, vectorize, max_plate_nesting)

    def programs(self, model: Callable, guide: Optional[Callable]) -> List[Callable]:
        return [model]

    @classmethod
    def derived_estimators(cls) -> List[type]:
        """The registered estimator classes derived for this objective."""
        return derived_for(cls.name)

    def chosen_program(self, model: Callable, guide: Optional[Callable]) -> Callable:
        return model

    def estimates(self, model: Callable, guide: Optional[Callable], args: tuple, kwargs: dict,
                  num_samples: int = 1) -> Estimates:
        return expectation_estimates(model, tuple(args), dict(kwargs), self.num_particles, num_samples,
                                     self.vectorize, self.max_plate_nesting)

    def exact(self, model: Callable, guide: Optional[Callable], args: tuple, kwargs: dict) -> torch.Tensor:
        """``E[f] = Σ_z p(z) f(z)`` by summing every latent site over its support (parallel
        enumeration). Sites in plates are refused: their joint support grows exponentially."""
        nesting = guess_max_plate_nesting(model, args, kwargs)
        enumerated = poutine.enum(config_enumerate(model, "parallel"), first_available_dim=-nesting - 1)
        trace = poutine.trace(enumerated).get_trace(*args, **kwargs)
        log_joint = torch.zeros(())
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            if not site["fn"].has_enumerate_support:
                raise EstimatorError(
                    f"reference='enumerate' cannot sum site '{name}' ({type(site['fn']).__name__}): "
                    "its support is not finite; use reference='reparam' or an exact dict"
                )
            if any(f.vectorized for f in site["cond_indep_stack"]):
                raise EstimatorError(
                    f"reference='enumerate' cannot sum site '{name}' inside a plate: its joint "
                    "support grows exponentially; pass an exact reference instead"
                )
            log_joint = log_joint + site["fn"].log_prob(site["value"])
        f = trace.nodes["_RETURN"]["value"]
        if not torch.is_tensor(f):
            check_f(f, 1, False)
        return (log_joint.exp() * f).sum()


#: The objective class behind the function (``objective=pg.expectation`` names it).
expectation.objective = Expectation


def nothing_requires_grad(args: tuple, kwargs: dict, reasons: Optional[dict] = None) -> str:
    """Why the estimate has no gradient: no input requires grad, or f reaches the
    inputs only through jumps the user asked to ignore."""
    ignored = {site: why for site, why in (reasons or {}).items() if "jumps='ignore'" in why}
    if ignored:
        site, why = next(iter(ignored.items()))
        return (
            f"the estimate of E[f] has no gradient, and site '{site}' reaches f through a jump its "
            f"estimator was told to ignore ({why}): the pathwise derivative of a jump is zero. Drop "
            "jumps='ignore' there, and pg chooses an unbiased estimator"
        )
    inputs = [f"argument {i}: {_kind(a)}" for i, a in enumerate(args)]
    inputs += [f"{k}=: {_kind(v)}" for k, v in kwargs.items()]
    return (
        "the estimate of E[f] depends on no tensor that requires grad, so it has no gradient "
        f"({'; '.join(inputs) or 'no inputs'}). Pass the parameters as tensors with "
        "requires_grad=True or use pyro.param, and check that f depends on them; "
        "for the value alone, call under torch.no_grad()"
    )


def _kind(value: Any) -> str:
    if torch.is_tensor(value):
        return "a tensor with requires_grad=True" if value.requires_grad else "a tensor without requires_grad"
    return f"a {type(value).__name__}"


def draws_particles(trace) -> bool:
    """Whether any latent site of a vectorized trace was drawn inside the particle plate."""
    return any(
        site["type"] == "sample"
        and not site["is_observed"]
        and any(frame.name == PARTICLES for frame in site["cond_indep_stack"])
        for site in trace.nodes.values()
    )


def shared_f(f: torch.Tensor, trace, num_particles: int, dim: Optional[int], rerun: Callable) -> torch.Tensor:
    """A vectorized f with no particle axis, from a trace with no latent draw inside
    the particle plate (every site conditioned on, say), is the same for every particle:
    it is expanded to all of them. Unless it is not the same from run to run: then the
    program draws randomness pg cannot see, which vectorized particles would share."""
    if dim is None or num_particles == 1 or f.numel() != 1 or draws_particles(trace):
        return f
    with torch.no_grad():
        again = torch.as_tensor(rerun()).detach()
    if not torch.equal(plain(f).detach().reshape(()).to(again.dtype), again.reshape(())):
        raise EstimatorError(
            "the program's value (f) changes from run to run, yet it draws no sample site that "
            "pg can see (sites hidden by poutine.block, or torch's own samplers such as "
            "torch.poisson); vectorized particles would all share those draws and their "
            "gradient path is not chosen by any estimator. Make them pyro.sample sites "
            "outside poutine.block, or use vectorize=False"
        )
    return f.expand(num_particles)


def site_score(name: str, site: dict, vectorized: bool) -> torch.Tensor:
    """``log q(z)`` of a score-path site's draw, unmasked, or one clear error."""
    fn = unmasked(site["fn"])
    try:
        return fn.log_prob(site["value"], *site["args"], **site["kwargs"])
    except (ValueError, RuntimeError, NotImplementedError) as error:
        hint = (
            "; it may not broadcast over vectorized particles (Empirical does not), so "
            "use vectorize=False"
            if vectorized
            else ""
        )
        raise EstimatorError(
            f"site '{name}' ({describe(fn)}): its log-density failed on the drawn value "
            f"({error}){hint}"
        ) from error


def expectation_estimates(
    fn: Callable,
    args: tuple,
    kwargs: dict,
    num_particles: int,
    num_samples: int,
    vectorize: bool,
    max_plate_nesting: Optional[int] = None,
) -> Estimates:
    """``num_samples`` independent surrogates of :func:`expectation`, shape ``(G,)``: the
    per-sample terms diagnostics draw gradients from.

    All ``G·K`` particles run together (one pass when vectorized); each run of ``K``
    consecutive particles forms one sample, with its own baselines.
    """
    total = num_particles * num_samples
    guard = JumpGuard("expectation")
    program = ObjectiveCheck("expectation")(guard(estimators(fn)))
    traces, dim = particle_traces(program, args, kwargs, total, vectorize, max_plate_nesting, pathwise=is_pathwise)
    k = total if dim is not None else 1
    layout = ParticleLayout(dim, k)
    nesting = None if dim is None else -dim - 1
    # Each run (each particle's, when looped) is redone on its own draws while a
    # pathwise site in it must switch for a jump.
    traces = [
        guard.settle(
            trace,
            lambda t: (latent_nodes([t]), found_jumps([t], differentiated([t]))),
            lambda _: particle_traces(program, args, kwargs, k, dim is not None, nesting, pathwise=is_pathwise)[0][0],
            lambda t: t,
        )
        for trace in traces
    ]

    def run_alternative(trace, site, value, keep_gradients, relaxed):
        # A relaxed value lies outside the discrete support, so it is not checked there.
        with AlternativeRun(trace, {site: value}, relaxed=relaxed), torch.set_grad_enabled(
            keep_gradients and torch.is_grad_enabled()
        ), pyro.validation_enabled(is_validation_enabled() and not relaxed):
            alternative, _ = particle_traces(program, args, kwargs, k, dim is not None, nesting, watched=False)
        f = plain(check_f(alternative[0].nodes["_RETURN"]["value"], k, dim is not None))
        return layout.align(f if keep_gradients else f.detach())

    def run_changes(trace, changes):
        # The one-run engine's alternative run: each site's value at the particles that
        # kept its perturbation (pyro_grad.engine.one_run).
        values = {name: value for name, (value, _) in changes.items()}
        picked = {name: mask for name, (_, mask) in changes.items()}
        with AlternativeRun(trace, values, picked=picked), torch.no_grad():
            alternative, _ = particle_traces(program, args, kwargs, k, dim is not None, nesting, watched=False)
        return plain(check_f(alternative[0].nodes["_RETURN"]["value"], k, dim is not None)).detach()

    #: Why the alternative path could not be carried beside a run, if it could not.
    at_once: List[str] = []

    #: The alternative paths per particle of each lazy run.
    lazily: List[int] = []

    def run_lazily(trace, table, rows, paths):
        # StochasticAD.jl's lazy pruning (pyro_grad.engine.lazy_pruning), else at once.
        try:
            kept = lazily_pruned(program, args, kwargs, trace, table, rows, dim, k, paths)
        except Unsupported as why:
            if recording():  # what the stopped run did would stay in the recording
                raise Unrecordable(f"its one-run sites' lazy run stopped ({why}), so their jumps are chosen at "
                                   "once, uncompiled") from why
            at_once.append(str(why))
            return None
        lazily.append(paths)
        return kept

    def rerun():
        with poutine.block():
            return poutine.trace(program).get_trace(*args, **kwargs).nodes["_RETURN"]["value"]

    values, blocks, difference_blocks = [], [], []
    for trace in traces:
        f = shared_f(trace.nodes["_RETURN"]["value"], trace, k, dim, rerun)
        f = check_f(f, k, dim is not None)
        # A site read into Python control flow may change anything after it, so the
        # whole of f counts as downstream of it (and of what it depends on).
        upstream = provenance_of(f) | frozenset(read_sites(trace))
        f = plain(f)
        full, trace = trace, prune_subsample_sites(trace)  # a re-run replays the full one's minibatch
        block: Block = {}
        for name, site in trace.nodes.items():
            estimator = site["infer"].get("estimator") if site["type"] == "sample" else None
            if not isinstance(estimator, ScoreEstimator) or name not in upstream:
                continue
            # Only score-path sites need a log-density (a soft relaxed value has none).
            score = layout.first(plain(site_score(name, site, dim is not None)))
            block[name] = score_part(estimator, site, score, match_dims(f, score.dim()), f, layout,
                                     baselines.state_of(site))
        values.append(f)
        blocks.append(block)
        terms, losses = difference_terms(
            trace, layout, lambda _, c=layout.align(f.detach()): c,
            lambda s, v, keep, relaxed, t=full: run_alternative(t, s, v, keep, relaxed), sites=upstream,
            density=unmasked,
        )
        terms.update(one_run_terms(trace, layout, f, lambda changes, t=full: run_changes(t, changes), sites=upstream,
                                   density=unmasked, inputs=differentiable_inputs(args, kwargs, full),
                                   lazy=lambda table, rows, paths, t=full: run_lazily(t, table, rows, paths)))
        difference_blocks.append((terms, losses))
    estimates = assemble(values, blocks, difference_blocks, num_samples, traces[0], args, kwargs, loss_sign=1.0)
    estimates.reasons = choice_reasons(traces[0], guard)
    for name, estimator in estimates.estimators.items():
        if not getattr(estimator, "one_run", False) or name not in estimates.reasons:
            continue
        if at_once:
            estimates.reasons[name] += (f"; its jump was pruned at once, not lazily, as the alternative path "
                                        f"could not be carried beside the run: {at_once[0]}")
        elif lazily:
            carried = "1 alternative path" if lazily[0] == 1 else f"{lazily[0]} alternative paths"
            estimates.reasons[name] += f"; pruned lazily on {carried} per particle"
    estimates.traces = traces
    return estimates


def differentiated(traces) -> list:
    """The provenance of everything the expectation differentiates: f, and the
    parameters of every site drawn off the pathwise path (its score or its coupled runs)."""
    found = []
    for trace in traces:
        found.append(provenance_of(trace.nodes["_RETURN"]["value"]))
        for site in trace.nodes.values():
            if site["type"] == "sample" and not site["is_observed"] and not is_pathwise(site):
                found.append(parameter_provenance(site["fn"]))
    return found
