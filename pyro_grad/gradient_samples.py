"""Many independent draws of a gradient estimator: the raw material of every diagnostic.

An *estimate* is one evaluation of an objective's surrogate with ``K`` particles; its
gradient is one draw of the estimator. We need ``G`` such draws, per parameter.

* ``"forward"`` (fast path): all ``G·K`` particles run in one vectorized pass and
  forward-mode AD carries a tangent for one parameter element at a time, giving that
  element's derivative in all ``G`` estimates at once. Every pass replays the same random
  numbers (a forked, re-seeded RNG), so the draws of different elements are jointly
  consistent. Cost: (number of parameter elements) vectorized passes.
* ``"loop"`` (fallback): ``G`` separate estimates, each with one reverse-mode backward.
  Used when the program cannot be vectorized or has too many parameter elements.
"""

import contextlib
import inspect
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pyro
import pyro.poutine as poutine
import torch
import torch.autograd.forward_ad as fwAD
from pyro.poutine.messenger import unwrap

from pyro_grad.errors import EstimatorError

#: Above this many parameter elements, one forward pass per element costs more than the loop.
MAX_FORWARD_ELEMENTS = 64
BASELINE_STATE = "_pyro_grad_baseline_avg_"

Estimates = Callable[[tuple, int], torch.Tensor]


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


def find_parameters(
    programs: List[Callable], args: tuple, kwargs: dict
) -> Tuple[Dict[str, int], Dict[str, torch.Tensor]]:
    """The tensors a gradient is taken with respect to.

    Returns ``({name: argument index}, {name: unconstrained pyro.param})``: floating
    tensor arguments that require grad, and every ``pyro.param`` the programs touch.
    """
    names = argument_names(programs[-1], len(args))
    arguments = {
        names[i]: i
        for i, a in enumerate(args)
        if torch.is_tensor(a) and a.is_floating_point() and a.requires_grad
    }
    params = {}
    with poutine.block():
        for program in programs:
            trace = poutine.trace(program, param_only=True).get_trace(*args, **kwargs)
            for name, site in trace.nodes.items():
                if site["type"] == "param":
                    params[name] = site["value"].unconstrained()
    return arguments, params


@contextlib.contextmanager
def preserved_baseline_state() -> Iterator[None]:
    """Diagnostics draw estimates without advancing any decaying-average baseline."""
    store = pyro.get_param_store()
    saved = {k: store._params[k] for k in list(store._params) if k.startswith(BASELINE_STATE)}
    try:
        yield
    finally:
        for k in [k for k in list(store._params) if k.startswith(BASELINE_STATE)]:
            del store[k]
        for k, v in saved.items():
            store[k] = v


@contextlib.contextmanager
def substituted_param(name: str, value: torch.Tensor) -> Iterator[None]:
    store = pyro.get_param_store()
    original = store._params[name]
    store._params[name] = value
    try:
        yield
    finally:
        store._params[name] = original


def forward_samples(
    estimates: Estimates,
    args: tuple,
    arguments: Dict[str, int],
    params: Dict[str, torch.Tensor],
    num_estimates: int,
    seed: int,
) -> Dict[str, torch.Tensor]:
    """``{name: (G, *shape)}`` derivatives, one forward-mode vectorized pass per element."""
    targets = {name: args[i] for name, i in arguments.items()}
    targets.update(params)
    samples = {}
    for name, tensor in targets.items():
        columns = []
        for j in range(tensor.numel()):
            tangent = torch.zeros(tensor.numel(), dtype=tensor.dtype)
            tangent[j] = 1.0
            with torch.random.fork_rng(), fwAD.dual_level(), preserved_baseline_state():
                torch.manual_seed(seed)
                dual = fwAD.make_dual(tensor.detach(), tangent.view(tensor.shape))
                if name in arguments:
                    new_args = list(args)
                    new_args[arguments[name]] = dual
                    values = estimates(tuple(new_args), num_estimates)
                else:
                    with substituted_param(name, dual):
                        values = estimates(args, num_estimates)
                derivative = fwAD.unpack_dual(values).tangent
            columns.append(
                torch.zeros(num_estimates) if derivative is None else derivative.detach().clone()
            )
        samples[name] = torch.stack(columns, -1).reshape((num_estimates,) + tensor.shape)
    return samples


def loop_samples(
    estimates: Estimates,
    args: tuple,
    arguments: Dict[str, int],
    params: Dict[str, torch.Tensor],
    num_estimates: int,
    seed: int,
    progress: Optional[Callable] = None,
) -> Dict[str, torch.Tensor]:
    """``{name: (G, *shape)}`` gradients, one estimate and one backward pass at a time."""
    leaves = {name: args[i].detach().requires_grad_() for name, i in arguments.items()}
    new_args = list(args)
    for name, i in arguments.items():
        new_args[i] = leaves[name]
    leaves.update(params)
    names = list(leaves)
    rows = {name: [] for name in names}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for _ in range(num_estimates):
            with preserved_baseline_state():  # every draw sees the same baseline state
                value = estimates(tuple(new_args), 1)[0]
            grads = (
                torch.autograd.grad(value, [leaves[n] for n in names], allow_unused=True)
                if value.requires_grad
                else [None] * len(names)
            )
            for name, g in zip(names, grads):
                rows[name].append(torch.zeros_like(leaves[name]) if g is None else g.detach())
            if progress is not None:
                progress()
    return {name: torch.stack(rows[name]) for name in names}


def gradient_samples(
    estimates: Estimates,
    programs: List[Callable],
    args: tuple,
    kwargs: dict,
    num_estimates: int,
    seed: int = 0,
    path: str = "auto",
) -> Tuple[Dict[str, torch.Tensor], str]:
    """Draw ``num_estimates`` gradients of ``estimates`` w.r.t. every parameter.

    ``estimates(args, G)`` returns ``G`` independent surrogates. ``path`` is ``"auto"``
    (forward when the parameters have at most :data:`MAX_FORWARD_ELEMENTS` elements and
    the forward pass succeeds), ``"forward"`` or ``"loop"``. Returns the samples and the
    path that ran.
    """
    arguments, params = find_parameters(programs, args, kwargs)
    if not arguments and not params:
        raise EstimatorError(
            "nothing to differentiate: pass tensor arguments with requires_grad=True "
            "or use pyro.param in the program"
        )
    elements = sum(args[i].numel() for i in arguments.values()) + sum(
        p.numel() for p in params.values()
    )
    if path not in ("auto", "forward", "loop"):
        raise EstimatorError(f"path must be 'auto', 'forward' or 'loop', got {path!r}")
    if path == "forward" or (path == "auto" and elements <= MAX_FORWARD_ELEMENTS):
        try:
            return forward_samples(estimates, args, arguments, params, num_estimates, seed), "forward"
        except (RuntimeError, NotImplementedError, ValueError):
            if path == "forward":
                raise
    return loop_samples(estimates, args, arguments, params, num_estimates, seed), "loop"
