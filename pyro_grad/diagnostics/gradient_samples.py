"""Many independent draws of a gradient estimator: the raw material of every diagnostic.

An *estimate* is one evaluation of an objective's surrogate with ``K`` particles; its
gradient is one draw of the estimator. We need ``G`` such draws, for every *target*:
each parameter (tensor arguments, ``pyro.param``s) and each sample site's own
distribution parameters (along a common shift of their elements, see
:class:`~pyro_grad.diagnostics.site_tangent.SiteTangent`).

* ``"vectorized"`` (fast path): all ``G·K`` particles run in one pass and forward-mode AD
  carries a tangent for one target element at a time, giving that element's derivative
  in all ``G`` estimates at once. Every pass replays the same random numbers (a forked,
  re-seeded RNG), so the draws of different elements are jointly consistent. Cost: one
  vectorized pass per target element.
* ``"loop"`` (fallback): ``G`` separate estimates, each with one reverse-mode backward
  that reaches every target at once. Used when the program cannot be vectorized, when
  an operation has no forward-mode derivative, or when there are too many elements.

Besides the draws, each score-path site's share of every draw is kept (the gradient of
its score term), so diagnostics can attribute variance to sites.
"""

import contextlib
import inspect
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pyro
import pyro.poutine as poutine
import torch
import torch.autograd.forward_ad as fwAD
from pyro.poutine.messenger import Messenger, unwrap
from pyro.poutine.subsample_messenger import _Subsample
from torch.distributions import transform_to

from pyro_grad.baselines import FrozenAverages
from pyro_grad.errors import EstimatorError
from pyro_grad.engine.surrogate import Estimates
from pyro_grad.distributions import describe
from pyro_grad.diagnostics.site_tangent import SiteTangent, differentiable_parameters

#: Above this many target elements, one forward pass per element takes longer than the loop.
MAX_FORWARD_ELEMENTS = 64

EstimateFn = Callable[[tuple, int], Estimates]


@dataclass(frozen=True)
class Target:
    """Something to differentiate with respect to.

    ``kind`` is ``"argument"`` (positional argument ``index``), ``"param"`` (an
    unconstrained ``pyro.param``) or ``"site"`` (parameter ``param`` of sample site
    ``site``, along a common shift; shape ``()``).
    """

    name: str
    kind: str
    shape: torch.Size
    index: int = -1
    site: str = ""
    param: str = ""
    distribution: str = ""


@dataclass
class Draws:
    """``samples[target] (G, *shape)``; ``score_parts[(target, site)]`` the part of each
    draw carried by that score-path site; the estimators used; the mode that ran (vectorized or loop)."""

    samples: Dict[str, torch.Tensor]
    score_parts: Dict[Tuple[str, str], torch.Tensor] = field(default_factory=dict)
    estimators: Dict[str, object] = field(default_factory=dict)
    mode: str = "vectorized"
    #: Program evaluations per particle for one draw.
    evaluations: int = 1
    #: Program evaluations per particle each site's estimator needs (``evaluations(site)``).
    site_evaluations: Dict[str, int] = field(default_factory=dict)
    #: Why each site has its estimator (``Estimates.reasons``).
    reasons: Dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GradientTask:
    """What to draw gradients of: ``estimates(args, G)``, ``G`` independent surrogates of
    an objective, at ``args``, with respect to ``targets`` (``params``: the unconstrained
    ``pyro.param`` tensors by name, as :func:`find_targets` returns them)."""

    estimates: EstimateFn
    args: tuple
    targets: List[Target]
    params: Dict[str, torch.Tensor]


def argument_names(fn: Callable, num_args: int) -> List[str]:
    """Names of ``fn``'s positional parameters (``arg0``… where they cannot be read)."""
    target = unwrap(fn)  # through poutine handlers to the user's function
    try:
        params = [
            p.name
            for p in inspect.signature(target).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    return [params[i] if i < len(params) else f"arg{i}" for i in range(num_args)]


def find_targets(
    programs: List[Callable], args: tuple, kwargs: dict, sites: bool = True
) -> Tuple[List[Target], Dict[str, torch.Tensor]]:
    """Targets of a gradient, and the unconstrained ``pyro.param`` tensors by name.

    Floating tensor arguments that require grad; every ``pyro.param`` the programs
    touch; with ``sites``, every differentiable parameter of the latent sample sites of
    the *last* program (the guide when there is one; else the program itself).
    """
    names = argument_names(programs[-1], len(args))
    targets = [
        Target(names[i], "argument", a.shape, index=i)
        for i, a in enumerate(args)
        if torch.is_tensor(a) and a.is_floating_point() and a.requires_grad
    ]
    params, site_targets = {}, []
    with poutine.block():
        for i, program in enumerate(programs):
            trace = poutine.trace(program).get_trace(*args, **kwargs)
            for name, site in trace.nodes.items():
                if site["type"] == "param":
                    params[name] = site["value"].unconstrained()
                elif (
                    sites
                    and i == len(programs) - 1
                    and site["type"] == "sample"
                    and not site["is_observed"]
                    and not isinstance(site["fn"], _Subsample)
                ):
                    for p in differentiable_parameters(site["fn"]):
                        site_targets.append(
                            Target(
                                f"{name}.{p}",
                                "site",
                                torch.Size(),
                                site=name,
                                param=p,
                                distribution=describe(site["fn"]),
                            )
                        )
    targets += [Target(n, "param", t.shape) for n, t in params.items()]
    return targets + site_targets, params


class SubstitutedParams(Messenger):
    """``pyro.param`` returns the given *unconstrained* values, constrained as the param
    store constrains them; the store itself is left untouched (so a forward-mode dual
    substituted here never reaches it)."""

    def __init__(self, values: Dict[str, torch.Tensor]):
        super().__init__()
        self.values = values
        self.constraints = pyro.get_param_store().get_state()["constraints"]

    def _pyro_param(self, msg: dict) -> None:
        name = msg["name"]
        if name in self.values:
            msg["value"] = transform_to(self.constraints[name])(self.values[name])


def primal_of(target: Target, args: tuple, params: Dict[str, torch.Tensor]) -> torch.Tensor:
    """The current value of an argument or ``pyro.param`` target, detached."""
    return (args[target.index] if target.kind == "argument" else params[target.name]).detach()


@contextlib.contextmanager
def replaced(target: Target, args: tuple, value: torch.Tensor) -> Iterator[tuple]:
    """Run with an argument or ``pyro.param`` target set to ``value``; yields the arguments."""
    new_args = list(args)
    if target.kind == "argument":
        new_args[target.index] = value
        yield tuple(new_args)
    else:
        with SubstitutedParams({target.name: value}):
            yield tuple(new_args)


def reverse_leaves(
    args: tuple, targets: List[Target], params: Dict[str, torch.Tensor]
) -> Tuple[tuple, Dict[str, torch.Tensor], List[SiteTangent]]:
    """Reverse-mode leaves for every target: the arguments to call with, ``{name: leaf}``,
    and the :class:`SiteTangent` messengers that carry the site targets' shifts."""
    new_args, leaves, sites = list(args), {}, []
    for t in targets:
        if t.kind == "argument":
            leaves[t.name] = new_args[t.index] = args[t.index].detach().requires_grad_()
        elif t.kind == "param":
            leaves[t.name] = params[t.name]
        else:
            leaves[t.name] = torch.zeros((), requires_grad=True)
            sites.append(SiteTangent(t.site, t.param, leaves[t.name]))
    return tuple(new_args), leaves, sites


def _tangent_or_zeros(t: torch.Tensor, num_samples: int) -> torch.Tensor:
    derivative = fwAD.unpack_dual(t).tangent
    return torch.zeros(num_samples) if derivative is None else derivative.detach().clone()


def forward_draws(task: GradientTask, num_samples: int, seed: int) -> Draws:
    """One forward-mode vectorized pass per target element."""
    estimates, args, params = task.estimates, task.args, task.params
    samples, parts, chosen, cost, runs, reasons = {}, {}, {}, 1, {}, {}
    for target in task.targets:
        columns, part_columns = [], {}
        numel = max(1, int(torch.Size(target.shape).numel()))
        for j in range(numel):
            tangent = torch.zeros(numel)
            tangent[j] = 1.0
            with torch.random.fork_rng(), fwAD.dual_level(), FrozenAverages():
                torch.manual_seed(seed)
                if target.kind == "site":
                    shift = fwAD.make_dual(torch.zeros(()), torch.ones(()))
                    with SiteTangent(target.site, target.param, shift):
                        out = estimates(args, num_samples)
                else:
                    primal = primal_of(target, args, params)
                    with replaced(target, args, fwAD.make_dual(primal, tangent.view(primal.shape))) as a:
                        out = estimates(a, num_samples)
                columns.append(_tangent_or_zeros(out.values, num_samples))
                for s, term in out.score_terms.items():
                    part_columns.setdefault(s, []).append(_tangent_or_zeros(term, num_samples))
                chosen, cost, runs, reasons = out.estimators, out.evaluations, out.site_evaluations, out.reasons
        samples[target.name] = torch.stack(columns, -1).reshape((num_samples,) + target.shape)
        for s, cols in part_columns.items():
            parts[(target.name, s)] = torch.stack(cols, -1).reshape((num_samples,) + target.shape)
    return Draws(samples, parts, chosen, "vectorized", cost, runs, reasons)


def loop_draws(task: GradientTask, num_samples: int, seed: int, progress: Optional[Callable[[], None]] = None) -> Draws:
    """``G`` estimates one at a time, each with one reverse-mode backward to every target."""
    rows = {t.name: [] for t in task.targets}
    part_rows, cost, runs = {}, 1, {}
    choices: Dict[str, Counter] = {}
    reasons: Dict[str, str] = {}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for index in range(num_samples):
            new_args, leaves, sites = reverse_leaves(task.args, task.targets, task.params)
            with FrozenAverages(), contextlib.ExitStack() as stack:
                for site in sites:
                    stack.enter_context(site)
                out = task.estimates(new_args, 1)
            cost, runs = out.evaluations, out.site_evaluations
            for site, estimator in out.estimators.items():
                choices.setdefault(site, Counter())[estimator] += 1
                reasons.setdefault((site, estimator), out.reasons.get(site, ""))
            outputs = {None: out.values[0], **{s: term[0] for s, term in out.score_terms.items()}}
            for key, value in outputs.items():
                grads = (
                    torch.autograd.grad(value, list(leaves.values()), allow_unused=True, retain_graph=True)
                    if value.requires_grad
                    else [None] * len(leaves)
                )
                for name, g in zip(leaves, grads):
                    g = torch.zeros_like(leaves[name]) if g is None else g.detach()
                    if key is None:
                        rows[name].append(g)
                    else:
                        part_rows.setdefault((name, key), {})[index] = g
            if progress is not None:
                progress()
    samples = {name: torch.stack(r) for name, r in rows.items()}
    # A draw without the site's score term (a site drawn only in some runs, or switched
    # for a jump only in some) carries no part of it: zero there.
    parts = {key: torch.stack([r.get(i, torch.zeros_like(samples[key[0]][0])) for i in range(num_samples)])
             for key, r in part_rows.items()}
    chosen, why = choices_of(choices, reasons, num_samples)
    return Draws(samples, parts, chosen, "loop", cost, runs, why)


def choices_of(choices: Dict[str, Counter], reasons: Dict[tuple, str], num_samples: int):
    """Each site's estimator in most draws, and why; where draws differed (a jump seen in
    some runs only), the reason says how many took which."""
    chosen, why = {}, {}
    for site, counts in choices.items():
        (estimator, count), *others = counts.most_common()
        chosen[site] = estimator
        why[site] = reasons[(site, estimator)]
        if others:
            rest = ", ".join(f"{e!r} in {n}" for e, n in others)
            why[site] += f" (in {count} of {num_samples} draws; {rest})"
    return chosen, why


def gradient_draws(
    estimates: EstimateFn,
    programs: List[Callable],
    args: tuple,
    kwargs: dict,
    num_samples: int,
    seed: int = 0,
    mode: str = "auto",
    sites: bool = True,
    targets: Optional[Tuple[List[Target], Dict[str, torch.Tensor]]] = None,
) -> Draws:
    """Draw ``num_samples`` gradients of ``estimates`` with respect to every target.

    ``estimates(args, G)`` returns ``G`` independent :class:`Estimates`. ``mode`` is
    ``"auto"`` (vectorized when there are at most :data:`MAX_FORWARD_ELEMENTS` target
    elements and the vectorized pass succeeds, else the loop), ``"vectorized"`` or
    ``"loop"``. ``targets`` is :func:`find_targets`' result, when already known.
    """
    if mode not in ("auto", "vectorized", "loop"):
        raise EstimatorError(f"mode must be 'auto', 'vectorized' or 'loop', got {mode!r}")
    targets, params = targets or find_targets(programs, args, kwargs, sites=sites)
    if not any(t.kind != "site" for t in targets):
        raise EstimatorError(
            "nothing to differentiate: pass tensor arguments with requires_grad=True "
            "or use pyro.param in the program"
        )
    elements = sum(max(1, torch.Size(t.shape).numel()) for t in targets)
    if mode == "vectorized" or (mode == "auto" and elements <= MAX_FORWARD_ELEMENTS):
        try:
            return forward_draws(GradientTask(estimates, args, targets, params), num_samples, seed)
        except (RuntimeError, NotImplementedError, ValueError):
            if mode == "vectorized":
                raise
    return loop_draws(GradientTask(estimates, args, targets, params), num_samples, seed)
