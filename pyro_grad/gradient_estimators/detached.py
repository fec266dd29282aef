"""``DetachedSample``: a site's draw with no derivative through it."""

from typing import Any

import torch
import torch.autograd.forward_ad as fwAD
from pyro.distributions import MaskedDistribution, TorchDistribution
from pyro.distributions.score_parts import ScoreParts
from pyro.ops.provenance import ProvenanceTensor
from torch.distributions import constraints

from pyro_grad.distributions import leaf_distribution, parameter_provenance, private_copy, without_provenance


class DetachedSample(TorchDistribution):
    """``base_dist`` drawn with no derivative through the value, in reverse or forward mode.

    The sampling path of every estimator that is not pathwise (the score function and
    the difference estimators): their gradients come from log-probabilities or
    differences of f, never from the value.

    With ``differentiable_value`` the draw is a leaf that requires grad: nothing flows
    back through it to the parameters, yet f can be differentiated in it (DoubleCV's
    and RODEO's value gradients); an integer draw (a Categorical's index) becomes a
    float holding the same integers.

    A wrapper rather than ``base_dist.has_rsample_(False)``: that mutates the user's
    distribution in place and raises on ``Independent`` and masked distributions.
    """

    arg_constraints = {}
    #: A path switch, not part of the user's distribution (see ``describe``).
    path_wrapper = True
    has_rsample = False

    def __init__(self, base_dist: Any, differentiable_value: bool = False) -> None:
        self.base_dist = base_dist
        self.differentiable_value = differentiable_value
        super().__init__(base_dist.batch_shape, base_dist.event_shape, validate_args=False)

    def expand(self, batch_shape, _instance=None) -> "DetachedSample":
        return DetachedSample(self.base_dist.expand(batch_shape), self.differentiable_value)

    @property
    def draws_float_index(self) -> bool:
        """Whether the draw is an integer index handed to the program as a float."""
        return self.differentiable_value and isinstance(leaf_distribution(self.base_dist), torch.distributions.Categorical)

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
        # AD; the draw carries no derivative in either mode. Provenance-tracking
        # parameters garble the shapes some samplers compute (Geometric, Multinomial:
        # pyro-ppl/pyro#3436), so the draw runs on plain tensors and the value then
        # takes the provenance of the parameters it was drawn from.
        # Sampling fills lazily derived parameters (a Multinomial's logits), cached
        # without a forward-mode tangent here: a private copy keeps them off the site's
        # distribution, whose log-density must carry the tangent.
        # Its tensors are plain too: a tensor subclass reaching torch's dispatcher with
        # its __torch_function__ disabled stops a recording (compile=).
        sampler = private_copy(without_provenance(self.base_dist))
        with torch.no_grad(), fwAD._set_fwd_grad_enabled(False), torch._C.DisableTorchFunctionSubclass():
            value = torch.Tensor.detach(sampler.sample(sample_shape))
        if self.differentiable_value:  # a leaf, so f can be differentiated in the value
            if not value.is_floating_point():  # a Categorical's index, as a float
                value = value.to(torch.get_default_dtype())
            value.requires_grad_(torch.is_grad_enabled())
        provenance = parameter_provenance(self.base_dist)
        return ProvenanceTensor(value, provenance) if provenance else value

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return self.base_dist.log_prob(value)

    def score_parts(self, value: torch.Tensor) -> ScoreParts:
        # As Pyro's MaskedDistribution.score_parts: a tensor mask removes elements from
        # what is scored (log_prob), never from the score function of the draw.
        log_prob = self.log_prob(value)
        score = log_prob
        if isinstance(self.base_dist, MaskedDistribution) and not isinstance(self.base_dist._mask, bool):
            score = self.base_dist.base_dist.log_prob(value)
        return ScoreParts(log_prob=log_prob, score_function=score, entropy_term=0)

    @property
    def mean(self) -> torch.Tensor:
        return self.base_dist.mean

    @property
    def variance(self) -> torch.Tensor:
        return self.base_dist.variance
