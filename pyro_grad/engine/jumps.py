"""Jumps: the operations whose pathwise derivative misses a discontinuity.

The pathwise (reparameterization) gradient ``E[∇θ f(g_θ(ε))]`` is the derivative of f
*inside* each piece where f is smooth in the draw. Where f jumps (a threshold, a
``round``, a branch on a continuous draw) the boundary moves with θ, and the mass that
crosses it is missed: ``E[round(z)]`` for ``z ~ N(θ, 1)`` has derivative 1, its pathwise
estimate is 0.

So while a program runs, every value computed from a pathwise draw carries the draw's
site name as provenance (:mod:`pyro_grad.engine.control_flow`), and an operation on it
that jumps marks its result with a :class:`Jump`: the site, the operation and the
program's source line. The mark travels on with the result; an objective finds the
jumps that reach what it differentiates (f, the log-densities, a score-path site's
parameters) in their provenance. A jump whose result never reaches them (a support
check, a value only logged) is not one.

What jumps:

* comparisons (``>``, ``<``, ``==``, ... and ``torch.gt`` ...), ``sign``, ``heaviside``,
  ``floor``, ``ceil``, ``round``, ``trunc``, ``frac``, ``remainder``/``fmod``,
  ``floor_divide``, ``histc``, ``unique``;
* every result of integer or bool dtype: casts, ``argmax``/``argmin``, the indices of
  ``sort``/``argsort``/``topk``/``max(dim)``, ``searchsorted``, ``bucketize``,
  ``nonzero`` (and so indexing, ``gather`` and ``torch.where`` with them downstream);
* torch's own samplers fed a draw (``torch.poisson(rate)``, ``torch.bernoulli(p)``):
  their results have no derivative in their parameters;
* reads into Python (``.item()``, ``float()``, ``if``), recorded by the read watch.

Kinks are not jumps: ``abs``, ``relu``, ``clamp``, ``maximum``, the values of ``max``
and ``sort`` are continuous, and their pathwise derivative is right.
"""

import os
from dataclasses import dataclass
from typing import Any, FrozenSet, Iterable, List, Optional

import pyro
import torch
from torch.utils._pytree import tree_flatten

_T = torch.Tensor


@dataclass(frozen=True)
class Jump:
    """Pathwise site ``site``'s value reached ``operation`` at ``line`` (``file:line`` of
    the program's own code), where f jumps in the value."""

    site: str
    operation: str
    line: str

    def __str__(self) -> str:
        return f"{self.operation} at {self.line}"


#: Comparisons, by the name the program wrote them with.
COMPARISONS = {
    _T.__gt__: ">", _T.__lt__: "<", _T.__ge__: ">=", _T.__le__: "<=", _T.__eq__: "==", _T.__ne__: "!=",
    # Python's operators reach torch as the methods.
    _T.gt: ">", _T.lt: "<", _T.ge: ">=", _T.le: "<=", _T.eq: "==", _T.ne: "!=",
    _T.greater: ">", _T.less: "<", _T.greater_equal: ">=", _T.less_equal: "<=", _T.not_equal: "!=",
    torch.gt: "torch.gt", torch.lt: "torch.lt", torch.ge: "torch.ge", torch.le: "torch.le",
    torch.eq: "torch.eq", torch.ne: "torch.ne", torch.greater: "torch.greater", torch.less: "torch.less",
    torch.greater_equal: "torch.greater_equal", torch.less_equal: "torch.less_equal",
    torch.not_equal: "torch.not_equal",
    # in place
    _T.gt_: ".gt_()", _T.lt_: ".lt_()", _T.ge_: ".ge_()", _T.le_: ".le_()", _T.eq_: ".eq_()", _T.ne_: ".ne_()",
    _T.greater_: ".greater_()", _T.less_: ".less_()", _T.greater_equal_: ".greater_equal_()",
    _T.less_equal_: ".less_equal_()", _T.not_equal_: ".not_equal_()",
}

#: Operations with a floating-point result that jump in their input.
STEPS = {
    torch.floor, _T.floor, torch.ceil, _T.ceil, torch.round, _T.round, torch.trunc, _T.trunc, torch.fix,
    _T.fix, torch.frac, _T.frac, torch.sign, _T.sign, torch.sgn, _T.sgn, torch.heaviside, _T.heaviside,
    torch.remainder, _T.remainder, torch.fmod, _T.fmod, _T.__mod__, _T.__rmod__, torch.floor_divide,
    _T.floor_divide, _T.__floordiv__, _T.__rfloordiv__, torch.histc, _T.histc, torch.unique, _T.unique,
    torch.unique_consecutive, _T.unique_consecutive,
    torch.special.round, torch.copysign, _T.copysign, torch.frexp, _T.frexp,
    torch.nn.functional.threshold, torch.nn.functional.threshold_, torch.threshold, torch.threshold_,
    torch.nn.functional.hardshrink, torch.hardshrink, _T.hardshrink,
    # in place
    _T.floor_, _T.ceil_, _T.round_, _T.trunc_, _T.fix_, _T.frac_, _T.sign_, _T.sgn_, _T.heaviside_,
    _T.remainder_, _T.fmod_, _T.floor_divide_, _T.__ifloordiv__, _T.__imod__, _T.copysign_,
    # the values pass through Python
    _T.apply_, _T.map_, _T.map2_,
}

#: Operations that jump with one setting: ``torch.div(z, 1, rounding_mode="floor")``,
#: a hard Gumbel-softmax (an argmax inside), sampling a grid at its nearest points.
JUMPS_WITH = {
    torch.div: ("rounding_mode", lambda v: v is not None), _T.div: ("rounding_mode", lambda v: v is not None),
    _T.div_: ("rounding_mode", lambda v: v is not None), torch.divide: ("rounding_mode", lambda v: v is not None),
    torch.nn.functional.gumbel_softmax: ("hard", bool),
    torch.nn.functional.grid_sample: ("mode", lambda v: v == "nearest"),
}

#: Results constant almost surely in a continuous draw (a finiteness check): their
#: values carry no dependence on it, so neither jumps nor reads of them count.
ALMOST_SURELY_CONSTANT = {
    torch.isfinite, _T.isfinite, torch.isnan, _T.isnan, torch.isinf, _T.isinf, torch.isposinf, _T.isposinf,
    torch.isneginf, _T.isneginf, torch.isreal, _T.isreal,
}

#: Results each of which is its own argument, reshaped: each keeps its own provenance.
PER_ARGUMENT = {torch.broadcast_tensors, torch.atleast_1d, torch.atleast_2d, torch.atleast_3d}

#: torch's samplers: a result with no derivative in the parameters it was drawn from.
SAMPLERS = {
    torch.poisson, torch.bernoulli, _T.bernoulli, _T.bernoulli_, torch.multinomial, _T.multinomial,
    torch.binomial, torch.normal, _T.normal_,
}

#: Results whose values do not depend on their input's values, only on its shape.
SHAPE_ONLY = {
    torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like, torch.randint_like, torch.rand_like,
    torch.randn_like, _T.new_zeros, _T.new_ones, _T.new_empty, _T.new_full, _T.new_tensor,
}


def operation_name(func: Any) -> str:
    """How an error names the operation the program wrote: ``>``, ``torch.round``, ``.long()``."""
    if func in COMPARISONS:
        return COMPARISONS[func]
    name = getattr(func, "__name__", repr(func))
    module = getattr(func, "__module__", None) or ""
    if module in ("torch", "torch._C._VariableFunctions"):
        return f"torch.{name}"
    if module.startswith("torch.nn.functional"):
        return f"F.{name}"
    if name.startswith("__"):
        return name
    return f".{name}()"


#: Code whose frames a source line skips: torch, Pyro and pyro_grad (the line named is
#: the program's own, which called into them).
NOT_THE_PROGRAM = tuple(
    os.path.dirname(m.__file__) + os.sep for m in (torch, pyro)
) + (os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,)


def program_line(frame: Any) -> str:
    """``file:line`` of the innermost frame of the program's own code at or above ``frame``
    (the line that called into torch or Pyro)."""
    while frame is not None and frame.f_code.co_filename.startswith(NOT_THE_PROGRAM):
        frame = frame.f_back
    if frame is None:
        return "an unknown line"
    return f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_lineno}"


def is_discrete(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and not (t.is_floating_point() or t.is_complex())


def jump_marks(
    func: Any, result: Any, sites: Iterable[str], frame: Any, kwargs: Optional[dict] = None
) -> Optional[Any]:
    """For an operation ``func`` (called with ``kwargs``) on values of the pathwise ``sites``
    that gave ``result``: None when it does not jump; else a function ``part -> marks``
    giving each tensor of the result the :class:`Jump` marks it carries (an integer or
    bool part of a result, such as ``sort``'s indices, jumps; its values do not)."""
    if func in SHAPE_ONLY or func in PER_ARGUMENT:
        return None
    setting = JUMPS_WITH.get(func)
    whole = (func in COMPARISONS or func in STEPS or func in SAMPLERS
             or (setting is not None and setting[0] in (kwargs or {}) and setting[1](kwargs[setting[0]])))
    if not whole:
        parts = [result] if isinstance(result, torch.Tensor) else tree_leaves(result)
        if not any(is_discrete(p) for p in parts):
            return None
    marks = frozenset(Jump(site, operation_name(func), program_line(frame)) for site in sites)
    return lambda part: marks if whole or is_discrete(part) else frozenset()


def tree_leaves(value: Any) -> List[Any]:
    """The tensors (and other leaves) of a structured result: a named tuple, a list."""
    return tree_flatten(value)[0] if isinstance(value, (tuple, list, dict)) else []


def jumps_in(provenance: FrozenSet[Any]) -> List[Jump]:
    """The :class:`Jump` marks in a provenance, in a stable order."""
    return sorted((p for p in provenance if isinstance(p, Jump)), key=lambda j: (j.site, j.line, j.operation))


def read_jump(site: str, func: Any, frame: Any) -> Jump:
    """A read of pathwise site ``site``'s value into Python (``func``: ``Tensor.item``, ...)."""
    names = {"__bool__": "bool() (an if, and, or)", "__float__": "float()", "__int__": "int()",
             "__index__": "an index", "item": ".item()", "tolist": ".tolist()", "numpy": ".numpy()",
             "__array__": "a numpy conversion"}
    name = getattr(func, "__name__", "a read")
    return Jump(site, f"{names.get(name, name)}, a read into Python", program_line(frame))

