"""``SiteTangent``: perturb one parameter of one sample site's distribution, for forward-mode AD.

The derivative of an objective along this perturbation is the gradient with respect to
the site's *own* distribution parameter (a Normal site's ``loc``, a Bernoulli site's
``probs``), carried only by that site's estimator: the per-site estimator variance.
"""

import copy
from typing import Any, Dict, List

import torch
from torch.distributions.utils import lazy_property
from pyro.poutine.messenger import Messenger

#: Integer-valued arguments that are not differentiable parameters.
NOT_DIFFERENTIABLE = ("total_count",)


def leaf_distribution(fn: Any) -> Any:
    """The innermost distribution under wrappers (Independent, masked, expanded, ...)."""
    while getattr(fn, "base_dist", None) is not None:
        fn = fn.base_dist
    return fn


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


def differentiable_parameters(fn: Any) -> List[str]:
    """Names of the floating-point parameters of the leaf distribution of ``fn`` that
    :func:`with_parameter` can set (a distribution that cannot be rebuilt from its
    parameters, such as a MultivariateNormal with several derived ones, has none)."""
    names = []
    for name, value in given_parameters(leaf_distribution(fn)).items():
        if not value.is_floating_point() or name in NOT_DIFFERENTIABLE:
            continue
        try:
            with_parameter(fn, name, value)
        except (TypeError, ValueError):
            continue
        names.append(name)
    return names


def with_parameter(fn: Any, name: str, value: torch.Tensor) -> Any:
    """A copy of ``fn`` whose leaf distribution has parameter ``name`` set to ``value``."""
    base = getattr(fn, "base_dist", None)
    if base is not None:
        wrapper = copy.copy(fn)
        wrapper.base_dist = with_parameter(base, name, value)
        return wrapper
    params = given_parameters(fn)
    params[name] = value
    return type(fn)(**params, validate_args=False)


class SiteTangent(Messenger):
    """Add ``shift`` to every element of parameter ``param`` of site ``site``'s distribution.

    ``shift`` is a zero scalar that carries the derivative: a forward-mode dual with
    tangent 1, or a reverse-mode leaf. The derivative of an objective with respect to
    it is the gradient along a common shift of the parameter's elements. Only the site's
    own draw is perturbed: replayed and observed sites with the same name (a model
    replaying a guide) are not.
    """

    def __init__(self, site: str, param: str, shift: torch.Tensor):
        super().__init__()
        self.site = site
        self.param = param
        self.shift = shift

    def _pyro_sample(self, msg: dict) -> None:
        if msg["name"] != self.site or msg["is_observed"] or msg["value"] is not None:
            return
        value = given_parameters(leaf_distribution(msg["fn"]))[self.param]
        msg["fn"] = with_parameter(msg["fn"], self.param, value + self.shift)
