"""``SiteTangent``: perturb one parameter of one sample site's distribution, for forward-mode AD.

The derivative of an objective along this perturbation is the gradient with respect to
the site's *own* distribution parameter (a Normal site's ``loc``, a Bernoulli site's
``probs``), carried only by that site's estimator: the per-site estimator variance.
"""

from typing import Any, List

import torch
from pyro.poutine.messenger import Messenger

from pyro_grad.distributions import given_parameters, leaf_distribution, with_parameter

#: Integer-valued arguments that are not differentiable parameters.
NOT_DIFFERENTIABLE = ("total_count",)


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
