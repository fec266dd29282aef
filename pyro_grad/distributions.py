"""Distribution utilities: what a site's distribution is under its wrappers, the
parameters it was built from, and copies with one parameter changed.

Torch derives ``probs`` from ``logits`` (and back) lazily and caches the result; when
the first access happens while sampling, under ``no_grad``, the cached tensor carries no
derivative. Difference estimators differentiate these parameters, so they recompute
them from what the distribution was built with (:func:`probs_of`, :func:`logits_of`).
"""

import copy
import inspect
from typing import Any, Callable, Dict, List

import torch
import torch.autograd.forward_ad as fwAD
from pyro.distributions import MaskedDistribution
from pyro.ops.provenance import ProvenanceTensor
from torch.distributions.utils import lazy_property, logits_to_probs, probs_to_logits

from pyro_grad.engine.assumptions import decided
from pyro_grad.engine.provenance import plain, provenance_of


def leaf_distribution(fn: Any) -> Any:
    """The innermost distribution under wrappers (Independent, masked, expanded, ...)."""
    while getattr(fn, "base_dist", None) is not None:
        fn = fn.base_dist
    return fn


def describe(fn: Any) -> str:
    """A distribution's name with its wrappers, e.g. ``Independent(Normal)``; the
    wrappers estimators put around a site to switch its path are left out."""
    base = getattr(fn, "base_dist", None)
    if getattr(fn, "path_wrapper", False):
        return describe(base)
    name = type(fn).__name__
    return f"{name}({describe(base)})" if base is not None else name


def without_path_switch(fn: Any) -> Any:
    """``fn`` without the wrapper an estimator's ``prepare`` put around it."""
    return fn.base_dist if getattr(fn, "path_wrapper", False) else fn


def unmasked(fn: Any) -> Any:
    """``fn`` without its ``MaskedDistribution`` wrappers: the density a draw came from."""
    if isinstance(fn, MaskedDistribution):
        return unmasked(fn.base_dist)
    base = getattr(fn, "base_dist", None)
    if base is None:
        return fn
    inner = unmasked(base)
    if inner is base:
        return fn
    wrapper = copy.copy(fn)
    wrapper.base_dist = inner
    return wrapper


def given_parameters(fn: Any) -> Dict[str, torch.Tensor]:
    """The parameters ``fn`` was built from, by the names of its ``arg_constraints``.

    Parameters derived lazily from another (a Bernoulli's ``logits`` when built from
    ``probs``) are left out; properties (a Beta's concentrations) are read.
    """
    params = {}
    for name in getattr(fn, "arg_constraints", {}):
        if isinstance(getattr(type(fn), name, None), lazy_property):
            value = fn.__dict__.get(name)
            if value is None or (hasattr(fn, "_param") and value is not fn._param):
                continue
        else:
            value = getattr(fn, name, None)
        if torch.is_tensor(value):
            params[name] = value
    return params


def with_parameter(fn: Any, name: str, value: torch.Tensor) -> Any:
    """A copy of ``fn`` whose leaf distribution has parameter ``name`` set to ``value``."""
    base = getattr(fn, "base_dist", None)
    if base is not None:
        wrapper = copy.copy(fn)
        wrapper.base_dist = with_parameter(base, name, value)
        return wrapper
    params = given_parameters(fn)
    params[name] = value
    if "event_dim" in inspect.signature(type(fn).__init__).parameters:
        params["event_dim"] = len(fn.event_shape)  # a Delta's event dims are no parameter
    return type(fn)(**params, validate_args=False)


def uniform_given_bernoulli(value: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``u ~ U(0, 1)`` conditioned on the Bernoulli draw ``value = 1[u < p]``: uniform on
    ``(0, p)`` where ``value`` is 1, on ``(p, 1)`` where it is 0. Drawing ``u`` after
    ``value`` this way has the joint law of drawing it first (inverse-CDF coupling)."""
    v = torch.rand(value.shape)
    return torch.where(value > 0.5, v * p, p + v * (1 - p))


def _binary(fn: Any) -> bool:
    return not hasattr(fn, "_num_events")  # Categorical has categories; the rest are binary


def probs_of(fn: Any) -> torch.Tensor:
    """``fn``'s probabilities, differentiable in the parameter it was built from."""
    given = given_parameters(fn)
    if "probs" in given:
        return given["probs"]
    return logits_to_probs(given["logits"], is_binary=_binary(fn))


def logits_of(fn: Any) -> torch.Tensor:
    """``fn``'s logits, differentiable in the parameter it was built from."""
    given = given_parameters(fn)
    if "logits" in given:
        return given["logits"]
    return probs_to_logits(given["probs"], is_binary=_binary(fn))


#: Parameters this close, relative to their size, are the same: a re-run recomputes them
#: from the same values and may round differently (a Categorical's normalized logits
#: differ by an ulp or two of the row's largest).
PARAMETER_TOLERANCE = 1e-6


def equal_parameters(x: torch.Tensor, y: torch.Tensor, own_event_dims: int = 0) -> torch.Tensor:
    """Element by element, whether two broadcast parameter tensors are equal up to
    :data:`PARAMETER_TOLERANCE` relative to their size (for a parameter with its own
    event dims, as a Categorical's logits, to the largest in its event: the scale of
    its normalization); parameters near 0 are compared at their own scale."""
    scale = torch.maximum(x.abs(), y.abs())
    if own_event_dims:
        scale = scale.amax(dim=tuple(range(-own_event_dims, 0)), keepdim=True)
    return (x == y) | ((x - y).abs() <= PARAMETER_TOLERANCE * scale)


def same_distribution(a: Any, b: Any) -> bool:
    """Whether two distributions are the same family with equal (broadcast) parameters
    (:func:`equal_parameters`)."""
    if type(leaf_distribution(a)) is not type(leaf_distribution(b)):
        return False
    pa, pb = given_parameters(leaf_distribution(a)), given_parameters(leaf_distribution(b))
    if pa.keys() != pb.keys():
        return False
    for name in pa:
        x, y = plain(pa[name]).detach(), plain(pb[name]).detach()
        try:
            x, y = torch.broadcast_tensors(x, y)
        except RuntimeError:
            return False
        own = getattr(leaf_distribution(a).arg_constraints.get(name), "event_dim", 0)
        if not decided(equal_parameters(x, y, own).all()):
            return False
    return True


def private_copy(fn: Any) -> Any:
    """A shallow copy of a distribution and of every distribution it holds, so that
    caches filled while using the copy stay on the copy."""
    fn = copy.copy(fn)
    for name, value in vars(fn).items():
        if isinstance(value, torch.distributions.Distribution):
            setattr(fn, name, private_copy(value))
    return fn


def replaced_tensors(fn: Any, kind: type, replace: Callable[[Any], torch.Tensor]) -> Any:
    """A shallow copy of ``fn`` (and of every distribution it holds) with each attribute
    of type ``kind`` replaced by ``replace(it)``."""
    fn = copy.copy(fn)
    for name, value in vars(fn).items():
        if isinstance(value, torch.distributions.Distribution):
            setattr(fn, name, replaced_tensors(value, kind, replace))
        elif isinstance(value, kind):
            setattr(fn, name, replace(value))
    return fn


def without_provenance(fn: Any) -> Any:
    """``fn``, or a shallow copy of it (and of every distribution it holds) whose tensors
    carry no provenance, so that scoring it tracks nothing; ``parameter_provenance(fn)``
    is what the copy dropped. Tensors held elsewhere (a transform's) keep theirs."""
    if not parameter_provenance(fn):
        return fn
    return replaced_tensors(fn, ProvenanceTensor, plain)


def held_values(fn: Any) -> List[Any]:
    """Every value a distribution holds, in it and in every distribution it holds (a
    wrapped ``base_dist``, a Multinomial's inner Categorical)."""
    found = []
    for value in vars(fn).values():
        if isinstance(value, torch.distributions.Distribution):
            found.extend(held_values(value))
        else:
            found.append(value)
    return found


def parameter_provenance(fn: Any) -> frozenset:
    """The provenance of every tensor a distribution holds (:func:`held_values`)."""
    return frozenset().union(*map(provenance_of, held_values(fn)))


def detached_parameters(fn: Any) -> Any:
    """A shallow copy of ``fn`` (and of every distribution and transform it holds) whose
    tensors are detached: its ``log_prob`` differentiates only through the value. Cached
    derived parameters (a ``scale_tril``) are detached alike."""
    fn = copy.copy(fn)
    for name, value in vars(fn).items():
        if isinstance(value, torch.distributions.Distribution):
            setattr(fn, name, detached_parameters(value))
        elif torch.is_tensor(value):
            setattr(fn, name, plain(value).detach())
        elif name == "transforms" and isinstance(value, list):
            setattr(fn, name, [detached_parameters(t) for t in value])
    return fn


def moves(parameter: Any) -> bool:
    """Whether a parameter tensor carries a derivative: it requires grad (reverse mode)
    or has a forward-mode tangent (the diagnostics' site and argument shifts)."""
    if not torch.is_tensor(parameter):
        return False
    parameter = plain(parameter)
    return parameter.requires_grad or fwAD.unpack_dual(parameter).tangent is not None


def support_moves(fn: Any) -> bool:
    """Whether the bounds of ``fn``'s support move with its parameters (a Uniform(0, θ)'s):
    a change of the support no density ratio can see."""
    try:
        support = leaf_distribution(fn).support
    except NotImplementedError:
        return False
    return any(moves(getattr(support, bound, None)) for bound in ("lower_bound", "upper_bound"))
