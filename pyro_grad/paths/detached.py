"""``DetachedSample``: a site's draw with no derivative through it."""

from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from pyro.distributions import TorchDistribution
from torch.distributions import constraints


class DetachedSample(TorchDistribution):
    """``base_dist`` drawn with no derivative through the value, in reverse or forward mode.

    The sampling path of every estimator that is not pathwise (the score function and
    the difference estimators): their gradients come from log-probabilities or cost
    differences, never from the value.

    A wrapper rather than ``base_dist.has_rsample_(False)``: that mutates the user's
    distribution in place and raises on ``Independent`` and masked distributions.
    """

    arg_constraints = {}
    has_rsample = False

    def __init__(self, base_dist: Any) -> None:
        self.base_dist = base_dist
        super().__init__(base_dist.batch_shape, base_dist.event_shape, validate_args=False)

    def expand(self, batch_shape, _instance=None) -> "DetachedSample":
        return DetachedSample(self.base_dist.expand(batch_shape))

    @constraints.dependent_property
    def support(self):
        return self.base_dist.support

    @property
    def has_enumerate_support(self) -> bool:
        return self.base_dist.has_enumerate_support

    def enumerate_support(self, expand: bool = True) -> torch.Tensor:
        return self.base_dist.enumerate_support(expand=expand)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        # torch samples under no_grad, which stops reverse-mode but not forward-mode
        # AD; the draw carries no derivative in either mode.
        with torch.no_grad(), fwAD._set_fwd_grad_enabled(False):
            return self.base_dist.sample(sample_shape).detach()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base_dist.log_prob(value)

    @property
    def mean(self) -> torch.Tensor:
        return self.base_dist.mean

    @property
    def variance(self) -> torch.Tensor:
        return self.base_dist.variance
