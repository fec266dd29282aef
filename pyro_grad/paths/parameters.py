"""A discrete distribution's probabilities or logits, recomputed from what it was built with.

Torch derives ``probs`` from ``logits`` (and back) lazily and caches the result; when
the first access happens while sampling, under ``no_grad``, the cached tensor carries no
derivative. Difference estimators differentiate these parameters, so they recompute them.
"""

from typing import Any

import torch
from torch.distributions.utils import logits_to_probs, probs_to_logits

from pyro_grad.site_tangent import given_parameters


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
